"""Redis leases: a key owned by one holder, renewed while held, freed by its owner or by time.

A holder that dies (SIGKILL, lost machine) stops renewing, so what it held
is free again after at most `ttl_s`; a live holder never loses it however
long it works. Used for the model-load slots and for per-item claims.
"""

from __future__ import annotations

import os
import threading
import time

from redis import Redis

from . import redisconn

# Delete or extend the key only if we still own it (never touch someone else's lease).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"


class Lease:
    def __init__(self, redis: Redis, key: str, owner: str, ttl_s: int):
        self.redis = redis
        self.key = key
        self.owner = owner
        self.ttl_s = ttl_s

    def try_take(self) -> bool:
        """Take the lease if it is free; start renewing it. False if someone else holds it."""
        if not self.redis.set(self.key, self.owner, nx=True, ex=self.ttl_s) \
                and self.redis.get(self.key) != self.owner.encode():  # ours: a retried SET whose reply was lost
            return False
        self.keep()
        return True

    def keep(self) -> None:
        """Renew the lease in the background from now on (also for a lease taken by a script, see tasks/claim.py)."""
        _renewer.add(self)

    def renew(self) -> None:
        try:
            self.redis.eval(_RENEW, 1, self.key, self.owner, self.ttl_s)
        except redisconn.TRANSIENT:
            pass  # retried on the next beat, well inside the lease

    def stop_renewing(self) -> None:
        """Let the lease run out unless released (a worker's hand-back script releases claims: handback.py)."""
        _renewer.remove(self)

    def release(self) -> None:
        self.stop_renewing()
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.owner)
        except redisconn.TRANSIENT:
            pass  # the lease runs out on its own

    def holder(self) -> bytes | None:
        return self.redis.get(self.key)

    def free(self, holder: bytes) -> bool:
        """Delete the lease if `holder` still owns it (a holder judged gone); True if it did."""
        return bool(self.redis.eval(_RELEASE, 1, self.key, holder))


class _Renewer:
    """One thread per process renews every kept lease, each a third of its TTL after the last renewal.

    A thread per lease cost an item claim milliseconds to start and to join
    on a busy machine. A renewal racing a release is harmless: both compare
    the owner, so a late renewal of a freed lease changes nothing.
    """

    def __init__(self) -> None:
        self._due: dict[int, tuple[Lease, float]] = {}  # id(lease) -> (lease, when to renew next)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._due[id(lease)] = (lease, time.monotonic() + lease.ttl_s / 3)
            if self._thread is None or self._pid != os.getpid():  # none yet, or a forked child's copy
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="editbatch-leases", daemon=True)
                self._thread.start()
        self._wake.set()  # its renewal may be due before the one the thread sleeps towards

    def remove(self, lease: Lease) -> None:
        with self._lock:
            self._due.pop(id(lease), None)

    def _run(self) -> None:
        while True:
            self._wake.clear()  # before looking: an `add` from now on wakes the wait below
            with self._lock:
                now = time.monotonic()
                due = [lease for lease, at in self._due.values() if at <= now]
                for lease in due:
                    self._due[id(lease)] = (lease, now + lease.ttl_s / 3)
                nxt = min((at for _, at in self._due.values()), default=now + 60.0)
            for lease in due:
                lease.renew()
            self._wake.wait(max(0.0, nxt - time.monotonic()))


_renewer = _Renewer()
