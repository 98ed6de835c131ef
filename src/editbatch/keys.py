"""Every Redis key editbatch uses, and how long each lives, in one place.

All keys start with the cluster's namespace, so several teams or test
sessions can share one Redis. Workers only ever write run keys that start
with ``<namespace>:run:`` (see `is_run_key`), whatever a task
payload says.
"""

from __future__ import annotations

import re

DAY_S = 24 * 3600
RESULT_TTL_S = DAY_S  # a result nobody read (producer gone) is forgotten after this
BARRIER_TTL_S = DAY_S
RUN_STATE_TTL_S = 30 * DAY_S  # longer than any run: a late task must still find "ended"
PRESENCE_TTL_S = 6  # a worker record lives this long without a heartbeat: how fast a dead worker is noticed
PRESENCE_BEAT_S = 2

RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def worker(namespace: str, queue: str) -> str:
    """The presence record of the worker serving `queue`."""
    return f"{namespace}:worker:{queue}"


def load_slot(namespace: str, slot: int) -> str:
    return f"{namespace}:load-slot:{slot}"


def run_prefix(namespace: str, run_id: str) -> str:
    """Keys of one run that workers may write (results, barrier); dropped when the run ends."""
    return f"{namespace}:run:{run_id}:"


def is_run_key(namespace: str, key: str) -> bool:
    """A key a worker may write for a task: one of some run's keys in its own namespace."""
    return key.startswith(f"{namespace}:run:")


def results(namespace: str, run_id: str) -> str:
    return run_prefix(namespace, run_id) + "results"


def barrier_prefix(namespace: str, run_id: str) -> str:
    return run_prefix(namespace, run_id) + "barrier"


TAKE_BACK_TTL_S = DAY_S  # a copy's start-or-take-back mark; the run's end ends its tasks after that anyway


def take_back(namespace: str, run_id: str, ticket: str) -> str:
    """One copy of a task: `started` (its holder began it) or `taken` (the producer moved it to an idle
    device), whichever was set first. See tasks/take_back.py and producer/take_back.py."""
    return run_prefix(namespace, run_id) + f"take-back:{ticket}"


def run_state(namespace: str, run_id: str) -> str:
    """`running`, `ended` or `cancelled`; kept after the run so that late tasks of it are skipped."""
    return f"{namespace}:run-state:{run_id}"


CLAIM_TTL_S = 30  # an item claim outlives a dead worker by at most this long
# The fencing state of an item (epoch, committed attempt) outlives any late holder of a claim: as long as run states.
ITEM_FENCE_TTL_S = RUN_STATE_TTL_S


def _item_digest(output_dir: str, item_id: str, folder: str | None) -> str:
    import hashlib

    # `folder`: the folder's incarnation (run.json): an --overwrite starts from fresh keys.
    scope = f"{output_dir}\0{item_id}" if folder is None else f"{output_dir}\0{folder}\0{item_id}"
    return hashlib.sha1(scope.encode()).hexdigest()[:24]


def item_claim(namespace: str, output_dir: str, item_id: str, folder: str | None = None) -> str:
    """Held while one worker computes one item of one output folder, whichever run sent it."""
    return f"{namespace}:claim:{_item_digest(output_dir, item_id, folder)}"


def item_fence(namespace: str, output_dir: str, item_id: str, folder: str | None = None) -> str:
    """The item's fencing state, a hash: `epoch` (the token of the latest claim) and `committed`
    (the token of the attempt whose files are the item's outputs). See tasks/commit.py."""
    return f"{namespace}:fence:{_item_digest(output_dir, item_id, folder)}"


# ---------------------------------------------------------------- jobs (see jobs/store.py)

JOB_LEASE_TTL_S = 10  # a coordinator that died lets go of its running jobs after this long


def job(namespace: str, job_id: str) -> str:
    """The job record: a hash of JSON values (state, counts, times, config, summary, error)."""
    return f"{namespace}:job:{job_id}"


def jobs_all(namespace: str) -> str:
    """Every job id, scored by submission time."""
    return f"{namespace}:jobs"


def jobs_queued(namespace: str) -> str:
    """Jobs waiting for a run slot, scored so that the lowest score runs first (priority, then FIFO)."""
    return f"{namespace}:jobs:queued"


def jobs_running(namespace: str) -> str:
    """Jobs taken off the queue and not finished: at most `jobs.max_running`."""
    return f"{namespace}:jobs:running"


def jobs_wake(namespace: str) -> str:
    """A one-element list pushed whenever the queue or the running set changes; coordinators block on it."""
    return f"{namespace}:jobs:wake"


def job_lease(namespace: str, job_id: str) -> str:
    """Held by the coordinator running the job (its owner id); gone within JOB_LEASE_TTL_S when it dies."""
    return f"{namespace}:job-lease:{job_id}"


def jobs_settings(namespace: str) -> str:
    """The coordinator's limits (max_queued, max_running), for clients that check admission."""
    return f"{namespace}:jobs:settings"


JUDGE_BUCKET_TTL_S = 600  # an idle judge rate-limit bucket is forgotten (it refills to full anyway)


def judge_bucket(namespace: str, name: str) -> str:
    """The token bucket all judge workers of one API share (requests and tokens per minute)."""
    return f"{namespace}:judge-bucket:{name}"


def judge_results(namespace: str, run_id: str) -> str:
    """Where judge workers report a run's (or a `score` command's) answers and the items they start."""
    return run_prefix(namespace, run_id) + "judge-results"


def judge_workers(namespace: str, queue: str) -> str:
    """The names of the judge workers that served `queue` (each has its presence record under `worker`)."""
    return f"{namespace}:judge-workers:{queue}"


JUDGE_ASKING_TTL_S = 10  # a question's asker holds it this long past its last renewal (a killed one frees it)


def judge_asking(namespace: str, cache_key: str) -> str:
    """Held by the judge worker thread asking one question (an item's full cache key), so copies wait for it."""
    return f"{namespace}:judge-asking:{cache_key}"
