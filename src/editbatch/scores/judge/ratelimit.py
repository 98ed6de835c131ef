"""One rate limit for every judge worker together: a token bucket in Redis, updated by one Lua script.

Celery's `rate_limit` holds per worker instance; an API's limit is per key,
so the bucket lives in Redis and every thread and process draws from it.
Two buckets in one hash: requests and tokens per minute, refilled
continuously from Redis's own clock (workers' clocks may differ). A draw that
does not fit takes nothing and returns how long to wait.
"""

from __future__ import annotations

import time

from redis import Redis

from ... import keys, redisconn

_DRAW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, need, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'r', 't', 'at')
local r = tonumber(b[1]) or burst
local tk = tonumber(b[2]) or tpm
local at = tonumber(b[3]) or now
local dt = math.max(0, now - at)
r = math.min(burst, r + dt * rpm / 60)
if tpm > 0 then
  tk = math.min(tpm, tk + dt * tpm / 60)
  need = math.min(need, tpm)
end
local wait = 0
if r < 1 then wait = (1 - r) * 60 / rpm end
if tpm > 0 and tk < need then wait = math.max(wait, (need - tk) * 60 / tpm) end
if wait == 0 then
  r = r - 1
  if tpm > 0 then tk = tk - need end
end
redis.call('HSET', KEYS[1], 'r', r, 't', tk, 'at', now)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return tostring(wait)
"""


class SharedRateLimit:
    """`acquire(tokens)` blocks until one request of `tokens` tokens fits the shared limit."""

    def __init__(self, redis: Redis, namespace: str, name: str, *, requests_per_minute: float,
                 tokens_per_minute: float = 0, burst: float | None = None):
        self.redis = redis
        self.key = keys.judge_bucket(namespace, name)
        self.rpm = float(requests_per_minute)
        self.tpm = float(tokens_per_minute)
        # A small burst by default (a tenth of a minute): a window of w seconds then holds at most
        # burst + w x rpm / 60 requests, close to the limit at any scale.
        self.burst = float(burst if burst is not None else max(1.0, self.rpm / 10))
        self._script = redis.register_script(_DRAW)

    def try_acquire(self, tokens: int = 0) -> float:
        """0 when granted, else the seconds to wait before asking again."""
        args = [self.rpm, self.tpm, tokens, self.burst, keys.JUDGE_BUCKET_TTL_S]
        return float(redisconn.retrying(lambda: self._script(keys=[self.key], args=args), 60.0))

    def acquire(self, tokens: int = 0, *, stop=None) -> None:
        while True:
            wait = self.try_acquire(tokens)
            if wait <= 0:
                return
            if stop is not None and stop():
                raise InterruptedError("stopped while waiting for the judge rate limit")
            time.sleep(min(wait, 1.0))
