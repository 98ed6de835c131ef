"""A worker watching itself: an edit running past its deadline, and a poisoned CUDA context.

Neither Celery's time limits (prefork only) nor Python can interrupt a CUDA
call inside the threads pool, so a stuck edit is ended the only sure way:
the worker process exits (code 124) after withdrawing its presence record;
the producer reroutes its items within seconds and the local cluster starts
a fresh worker.

After an illegal memory access (and some Xid errors) a CUDA context stays
broken: the process lives on and every later call fails. A worker whose
model raised CUDA-type errors on `sick_after` items in a row therefore
retires: it withdraws its presence, finishes the current task (so its
message is acknowledged) and shuts down warmly, which hands its reserved
messages back to the queue.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time

log = logging.getLogger("editbatch.worker")

EXIT_STUCK = 124
CHECK_EVERY_S = 1.0
# Messages of errors that leave a CUDA context unusable (not out-of-memory, which does not).
_POISONED = re.compile(r"CUDA error|illegal memory access|CUBLAS_STATUS_(?!ALLOC)|cudaError|device-side assert|"
                       r"unspecified launch failure|CUDNN_STATUS_(?!ALLOC)|AcceleratorError", re.I)


def looks_poisoned(error: str | None) -> bool:
    return bool(error) and bool(_POISONED.search(error))


class Guard:
    def __init__(self, name: str, presence, *, sick_after: int):
        self.name = name
        self.presence = presence  # the worker's presence record: withdrawn or marked retiring
        self.sick_after = sick_after
        self.consecutive = 0
        self.retiring = False
        self._consumers_cancelled = False
        self._lock = threading.Lock()
        self._deadlines: dict[str, float] = {}  # item id -> deadline (monotonic), from its model call to its files
        self._thread = threading.Thread(target=self._watch, name="editbatch-watchdog", daemon=True)
        self._thread.start()

    def task_started(self, item_id: str, timeout_s: float | None) -> None:
        """The item's model call begins: it and the attempt's files must be done within `timeout_s`."""
        if timeout_s:
            with self._lock:
                self._deadlines[item_id] = time.monotonic() + timeout_s

    def edit_finished(self, item_id: str) -> None:
        """The edit and its files are done (or the item failed): the deadline no longer applies (committing
        may wait on Redis or on the copy that replaced this one, which is not a stuck edit). The deadline of
        the item computing meanwhile stays."""
        with self._lock:
            self._deadlines.pop(item_id, None)

    def left_device(self, error: str | None) -> bool:
        """An item leaves the device (see tasks/steps.on_device), with the error its turn there raised, if
        any. CUDA-type failures in a row are counted here, before the next held task takes the device:
        after `sick_after` of them the worker retires (True: retiring now), and that task goes back to its
        queue instead of failing on a broken context too."""
        with self._lock:
            self.consecutive = self.consecutive + 1 if looks_poisoned(error) else 0
            sick = self.sick_after > 0 and self.consecutive >= self.sick_after and not self.retiring
            if sick:
                self.retiring = True
        if sick:
            log.error("%s: %d CUDA errors in a row (last: %s): this worker's GPU context looks broken; "
                      "it stops taking work and exits", self.name, self.consecutive, error)
            self.presence.publish(state="retiring")  # not "ready": the producer sends nothing more here
            # After the task returns and is acknowledged: a warm shutdown returns reserved messages.
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return sick

    def stop_consuming_now(self) -> bool:
        """True once, for the first task to end after the worker began to retire: it cancels the queues."""
        with self._lock:
            if self.retiring and not self._consumers_cancelled:
                self._consumers_cancelled = True
                return True
            return False

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_EVERY_S)
            with self._lock:
                late = [item for item, deadline in self._deadlines.items() if time.monotonic() > deadline]
            if late:
                log.error("%s: item %s ran past its timeout (schedule.task_timeout_s); ending this worker so "
                          "the item can go elsewhere", self.name, late[0])
                try:
                    self.presence.withdraw()
                finally:
                    logging.shutdown()
                    os._exit(EXIT_STUCK)
