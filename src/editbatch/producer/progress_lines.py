"""The progress bar's stand-in when the output is not a terminal: a plain line every few seconds.

tqdm redraws its bar with carriage returns, which a log file keeps as one
endless line of frames; a log wants `12/40 done (30%), 3.1 img/s, eta 9s`.
"""

from __future__ import annotations

import time
from typing import TextIO

INTERVAL_S = 5.0


class ProgressLines:
    def __init__(self, total: int, label: str, stream: TextIO, interval_s: float = INTERVAL_S):
        self.total = total
        self.label = label
        self.stream = stream
        self.interval_s = interval_s
        self.n = 0
        self._start = time.monotonic()
        self._last = self._start

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = f", eta {(self.total - self.n) / rate:.0f}s" if rate and self.n < self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.label}: {self.n}/{self.total} done{pct}, {rate:.2f} img/s{eta}", file=self.stream, flush=True)

    def write(self, text: str, file: TextIO | None = None) -> None:
        print(text, file=file or self.stream, flush=True)

    def close(self) -> None:
        self._line(time.monotonic())
