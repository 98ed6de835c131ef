"""The worker's Celery consumer, with task events sent in batches.

Celery buffers a worker's task events (received, started, succeeded) and
flushes them on the event loop's next turn: with a pool of threads, each
event wakes the loop and costs its own PUBLISH, a third of a worker's CPU
at edits of a few milliseconds. Here a flush waits until FLUSH_S after the
previous one, so the events of that span go as one `task-multi` message
(Celery also flushes on its own once 24 are buffered). Flower shows a task
at most FLUSH_S later; nothing of ours reads these events.
"""

from __future__ import annotations

import time

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.common import ignore_errors

FLUSH_S = 0.1


class Consumer(CeleryConsumer):
    _last_flush = 0.0
    _flush_timer = None  # the pending delayed flush, if any (touched on the loop's thread only)

    def _flush_events(self) -> None:
        # Called on the event loop's thread (Celery's call_soon after each buffered event, or our timer).
        wait = self._last_flush + FLUSH_S - time.monotonic()
        if wait > 0 and self.hub is not None:
            if self._flush_timer is None:
                self._flush_timer = self.hub.call_later(wait, self._flush_now)
            return
        self._flush_now()

    def _flush_now(self) -> None:
        self._flush_timer = None
        self._last_flush = time.monotonic()
        super()._flush_events()

    def stop(self) -> None:
        self._flush_pending()
        super().stop()

    def shutdown(self) -> None:
        self._flush_pending()
        super().shutdown()

    def _flush_pending(self) -> None:
        """What waits for the next flush goes before the worker stops (Redis away: dropped, as Celery does)."""
        if self.event_dispatcher is not None:
            ignore_errors(self, self.event_dispatcher.flush)
