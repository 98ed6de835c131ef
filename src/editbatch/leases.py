"""Redis leases: a key owned by one holder, renewed while held, freed by its owner or by time.

A holder that dies (SIGKILL, lost machine) stops renewing, so what it held
is free again after at most `ttl_s`; a live holder never loses it however
long it works. Used for the model-load slots and for per-item claims.
"""

from __future__ import annotations

import threading

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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_take(self) -> bool:
        """Take the lease if it is free; start renewing it. False if someone else holds it."""
        if not self.redis.set(self.key, self.owner, nx=True, ex=self.ttl_s) \
                and self.redis.get(self.key) != self.owner.encode():  # ours: a retried SET whose reply was lost
            return False
        self.keep()
        return True

    def keep(self) -> None:
        """Renew the lease in the background from now on (also for a lease taken by a script, see tasks/claim.py)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="editbatch-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.redis.eval(_RENEW, 1, self.key, self.owner, self.ttl_s)
            except redisconn.TRANSIENT:
                pass  # retried on the next beat, well inside the lease

    def stop_renewing(self) -> None:
        """Let the lease run out unless released (a worker's hand-back script releases claims: handback.py)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

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
