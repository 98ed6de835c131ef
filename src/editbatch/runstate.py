"""Whether a run is running, ended or cancelled: the one place that writes and reads it.

The state lives in Redis (`keys.run_state`) and outlives the run by
`RUN_STATE_TTL_S`, so a task of a run that is over, found late in a queue or
redelivered after a restart, is skipped by whichever worker takes it. The
producer, `editbatch cancel`, the job client and the coordinator all mark
runs through these functions; workers and the producer read them here too.
"""

from __future__ import annotations

from redis import Redis

from . import keys

RUNNING = "running"
ENDED = "ended"
CANCELLED = "cancelled"
OVER = (ENDED, CANCELLED)

# The same rule for a worker's script (tasks/claim.py asks it in the round trip that claims the item):
# run_over(key) -> the state if the run is over, else false.
RUN_OVER_LUA = """
local function run_over(key)
  local state = redis.call('get', key)
  if state == '%s' or state == '%s' then return state end
  return false
end
""" % OVER


def _key(namespace: str, run_id: str) -> str:
    return keys.run_state(namespace, run_id)


def mark_running(redis: Redis, namespace: str, run_id: str) -> bool:
    """Start a run; a run already cancelled (a job cancelled while it was starting) stays cancelled.

    Returns False when the run was cancelled before it could start.
    """
    redis.set(_key(namespace, run_id), RUNNING, ex=keys.RUN_STATE_TTL_S, nx=True)
    return read(redis, namespace, run_id) != CANCELLED


def mark_cancelled(redis: Redis, namespace: str, run_id: str, *, if_known: bool = False) -> None:
    """Stop a run: its producer stops dispatching, workers skip its tasks and stop its running edits.

    `if_known`: only a run that has a state already (an earlier run of a folder being resumed).
    """
    redis.set(_key(namespace, run_id), CANCELLED, ex=keys.RUN_STATE_TTL_S, xx=if_known)


def mark_over(redis: Redis, namespace: str, run_id: str, state: str) -> None:
    """The producer's last word: `ended` or `cancelled`; the run's own keys (inbox, barrier) are dropped."""
    if state not in OVER:
        raise ValueError(f"a run ends {' or '.join(OVER)}, not {state!r}")
    redis.set(_key(namespace, run_id), state, ex=keys.RUN_STATE_TTL_S)
    found = list(redis.scan_iter(match=keys.run_prefix(namespace, run_id) + "*", count=1000))
    if found:
        redis.delete(*found)


def state_key(namespace: str, run_id: str | None) -> str | None:
    """The key holding the run's state; None for no run or a malformed id (a run nobody can know)."""
    if not run_id or not keys.RUN_ID.match(run_id):
        return None
    return _key(namespace, run_id)


def read(redis: Redis, namespace: str, run_id: str) -> str | None:
    """`running`, `ended`, `cancelled`, or None for a run Redis does not know (yet, or any more)."""
    key = state_key(namespace, run_id)
    if key is None:
        return None
    value = redis.get(key)
    return value.decode() if value is not None else None


def is_over(redis: Redis, namespace: str, run_id: str | None) -> bool:
    return bool(run_id) and read(redis, namespace, run_id) in OVER


def is_cancelled(redis: Redis, namespace: str, run_id: str | None) -> bool:
    return bool(run_id) and read(redis, namespace, run_id) == CANCELLED
