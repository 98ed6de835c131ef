"""Redis clients for editbatch's own keys, and blocking waits of any length.

redis-py (8.x) gives every client a 5 s socket timeout unless told
otherwise, and does not stretch it for blocking commands: a BLPOP asked to
wait 30 s dies with "Timeout reading from socket" after 5. So clients are
built here with explicit timeouts, and every blocking call waits in slices
well under the socket timeout until its own deadline. A dropped connection
during a wait is retried until that deadline instead of failing the caller.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

SOCKET_TIMEOUT_S = 20.0  # one command's reply, never a blocking wait (those use slices)
CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_S = 10  # ping a connection idle this long before reusing it
BLOCK_SLICE_S = 2.0  # longest single BLPOP; well under SOCKET_TIMEOUT_S
# Shortest BLPOP: Redis turns a timeout in seconds into whole milliseconds, rounding down, and a timeout
# of 0 blocks forever. 0.001 s can round to 0 ms, so a wait that had a millisecond left blocked until
# something was pushed (a stopped worker then went unnoticed for as long as it was stopped).
MIN_SLICE_S = 0.01
RETRY_PAUSE_S = 0.5

TRANSIENT = (RedisConnectionError, RedisTimeoutError)


def connect(url: str) -> Redis:
    """A client with explicit timeouts and a few quick reconnects per command."""
    return Redis.from_url(
        url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_S,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError])


def quick(redis: Redis, timeout_s: float) -> Redis:
    """A client of the same Redis whose calls give up after `timeout_s`, without retries.

    After a network cut, a connection whose request was lost waits out TCP's
    retransmission backoff (10-20 s after the link is back) before it hears
    again; a call that gives up and reconnects gets through as soon as the
    link is back. For small periodic writes (the worker's heartbeat).
    """
    kwargs = dict(redis.connection_pool.connection_kwargs)
    kwargs.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=None, retry_on_error=[])
    return Redis(connection_pool=redis.connection_pool.__class__(**kwargs))


def blpop(redis: Redis, keys: list[str], timeout_s: float, *,
          stop: Callable[[], bool] | None = None) -> tuple[bytes, bytes] | None:
    """BLPOP for up to `timeout_s` seconds in total, whatever the socket timeout.

    Returns (key, value), or None at the deadline or when `stop()` turns
    true (checked between slices). Connection errors are retried until the
    deadline: a Redis restart during a long wait is survived.
    """
    return _sliced(lambda slice_s: redis.blpop(keys, timeout=slice_s), timeout_s, stop)


class WritesRefused(Exception):
    """Redis refuses writes (MISCONF: it cannot persist, its disk is full): no retry fixes that."""


def refuses_writes(exc: BaseException) -> bool:
    return isinstance(exc, (ResponseError, WritesRefused)) and str(exc).startswith("MISCONF")


def publish_errback(exc: BaseException, interval: float) -> None:
    """Kombu's publish retries treat every Redis error as a lost connection and retry it (minutes, with our
    policy); a refused write ends the publish at once, as WritesRefused (Kombu would rename a Redis error)."""
    if refuses_writes(exc):
        raise WritesRefused(str(exc))


def blpeek(redis: Redis, key: str, timeout_s: float, *, stop: Callable[[], bool] | None = None) -> bytes | None:
    """Wait like `blpop` for an element of list `key`, and leave it there (BLMOVE of the list onto itself):
    a token that says "open" then wakes every waiter, however many come."""
    return _sliced(lambda slice_s: redis.blmove(key, key, slice_s, "LEFT", "RIGHT"), timeout_s, stop)


def blpeek_then(redis: Redis, key: str, then: Callable[[Any], Any], timeout_s: float, *,
                stop: Callable[[], bool] | None = None) -> tuple[bytes, Any] | None:
    """`blpeek`, and the command `then(pipeline)` queues, in the same round trip: Redis runs a blocked
    client's next pipelined command only once the blocking one returns. (element, its reply), or None."""
    def call(slice_s: float):
        pipe = redis.pipeline(transaction=False)
        pipe.blmove(key, key, slice_s, "LEFT", "RIGHT")
        then(pipe)
        got, reply = pipe.execute()
        return None if got is None else (got, reply)

    return _sliced(call, timeout_s, stop)


def _sliced(call: Callable[[float], object], timeout_s: float, stop: Callable[[], bool] | None):
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        left = deadline - time.monotonic()
        if left < MIN_SLICE_S:
            return None  # the deadline, give or take a few milliseconds
        try:
            got = call(min(left, BLOCK_SLICE_S))
        except TRANSIENT:
            time.sleep(min(RETRY_PAUSE_S, max(0.0, deadline - time.monotonic())))
            continue
        if got is not None:
            return got
        if stop is not None and stop():
            return None


def retrying(call: Callable[[], object], timeout_s: float, *, stop: Callable[[], bool] | None = None) -> object:
    """Run `call`, retrying connection errors for up to `timeout_s` seconds (or until `stop()`),
    then raising the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except TRANSIENT:
            if time.monotonic() >= deadline or (stop is not None and stop()):
                raise
            time.sleep(RETRY_PAUSE_S)
