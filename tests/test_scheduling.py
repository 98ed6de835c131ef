"""The scheduling core alone: policies, replay and metrics (no Redis, no Celery)."""

from __future__ import annotations

import random

import pytest

from editbatch.dataset import output_name
from editbatch.scheduling import Timing, make_policy
from editbatch.scheduling import metrics
from editbatch.scheduling.policies import BalancedPolicy, NoSyncPolicy, SyncPolicy, WindowPolicy
from editbatch.scheduling.replay import replay
from editbatch.seeding import item_seed

QUEUES = ["gpu0", "gpu1", "gpu2"]


def drain(policy, finish_order=None):
    """Run a policy to the end, finishing released items in `finish_order` (default FIFO)."""
    released, pending = [], list(policy.start())
    released += pending
    rng = random.Random(finish_order)
    while pending:
        pick = rng.randrange(len(pending)) if finish_order is not None else 0
        a = pending.pop(pick)
        new = policy.done(a.ordinal)
        released += new
        pending += new
    assert policy.complete
    return released


def test_sync_releases_one_batch_per_device_after_the_previous_is_done():
    policy = SyncPolicy(7, QUEUES)
    first = policy.start()
    assert [(a.ordinal, a.queue, a.batch) for a in first] == [(0, "gpu0", 0), (1, "gpu1", 0), (2, "gpu2", 0)]
    assert policy.done(1) == [] and policy.done(0) == []
    second = policy.done(2)
    assert [(a.ordinal, a.queue, a.batch) for a in second] == [(3, "gpu0", 1), (4, "gpu1", 1), (5, "gpu2", 1)]
    for a in second[:-1]:
        assert policy.done(a.ordinal) == []
    assert [(a.ordinal, a.queue) for a in policy.done(5)] == [(6, "gpu0")]  # a short last batch


@pytest.mark.parametrize("per_queue", [1, 2, 100])
def test_nosync_sends_item_i_to_device_i_mod_g_in_order(per_queue):
    released = drain(NoSyncPolicy(20, QUEUES, per_queue), finish_order=7)
    assert sorted(a.ordinal for a in released) == list(range(20))
    for a in released:
        assert a.queue == QUEUES[a.ordinal % 3]
    for q in QUEUES:  # each queue receives its items in input order
        mine = [a.ordinal for a in released if a.queue == q]
        assert mine == sorted(mine)


def test_nosync_holds_at_most_per_queue_tasks():
    policy = NoSyncPolicy(100, QUEUES, per_queue=4)
    assert len(policy.start()) == 12


def test_balanced_uses_the_shared_queue_and_keeps_in_flight_bounded():
    policy = BalancedPolicy(50, "shared", in_flight=8)
    first = policy.start()
    assert [a.ordinal for a in first] == list(range(8)) and {a.queue for a in first} == {"shared"}
    assert [a.ordinal for a in policy.done(3)] == [8]


@pytest.mark.parametrize("k", [0, 1, 3])
def test_window_never_releases_beyond_k_plus_one_batches_from_oldest_unfinished(k):
    g, n = 3, 60
    policy = WindowPolicy(n, "shared", g, k)
    done: set[int] = set()
    out = list(policy.start())
    rng = random.Random(k)
    released = set(a.ordinal for a in out)
    while out:
        a = out.pop(rng.randrange(len(out)))
        done.add(a.ordinal)
        new = policy.done(a.ordinal)
        oldest = min(set(range(n)) - done, default=n)
        for b in new:
            assert b.ordinal - oldest < (k + 1) * g
            assert b.batch == b.ordinal // g
        released.update(b.ordinal for b in new)
        out += new
    assert released == set(range(n))


def test_make_policy_rejects_unknown_modes():
    with pytest.raises(ValueError):
        make_policy("fastest", 3, QUEUES, "shared")


def test_replay_of_sync_is_the_sum_of_each_batch_maximum():
    durations = [1.0, 2.0, 1.5, 0.5, 0.5, 3.0, 1.0]
    span = replay(SyncPolicy(7, QUEUES), QUEUES, lambda o, d: durations[o])
    assert span == pytest.approx(2.0 + 3.0 + 1.0)


def test_replay_of_nosync_is_the_busiest_device():
    durations = [1.0, 2.0, 1.5, 0.5, 0.5, 3.0]
    span = replay(NoSyncPolicy(6, QUEUES, 10), QUEUES, lambda o, d: durations[o])
    assert span == pytest.approx(max(1.0 + 0.5, 2.0 + 0.5, 1.5 + 3.0))


def test_replay_of_balanced_gives_the_next_item_to_the_first_free_device():
    # Device gpu1 is twice as slow; a shared queue gives it fewer items.
    speed = {"gpu0": 1.0, "gpu1": 2.0, "gpu2": 1.0}
    span = replay(BalancedPolicy(9, "shared", 100), QUEUES, lambda o, d: speed[d])
    nosync = replay(NoSyncPolicy(9, QUEUES, 100), QUEUES, lambda o, d: speed[d])
    assert span == pytest.approx(4.0)  # gpu0, gpu2: 4 items each; gpu1: 1 item (2 s) and idle
    assert nosync == pytest.approx(6.0)  # gpu1 must do its 3 items


def timeline(rows):
    return [Timing(o, d, s, e, batch=b) for o, d, s, e, b in rows]


def test_lower_bound_barrier_idle_and_skew_from_times():
    t = timeline([
        (0, "gpu0", 0.0, 1.0, 0), (1, "gpu1", 0.0, 2.0, 0),
        (2, "gpu0", 2.0, 3.0, 1), (3, "gpu1", 2.0, 2.5, 1),
    ])
    assert metrics.lower_bound(t, ["gpu0", "gpu1"]) == pytest.approx(max(4.5 / 2, 2.0))
    assert metrics.barrier_idle(t) == {"gpu0": pytest.approx(1.0), "gpu1": pytest.approx(0.5)}
    assert metrics.busy_by_device(t, ["gpu0", "gpu1"]) == {"gpu0": 2.0, "gpu1": 2.5}
    assert metrics.makespan(t) == pytest.approx(3.0)
    assert metrics.max_skew(t, 2) == pytest.approx(0.5)  # item 1 starts while 0 is the oldest unfinished


def test_max_skew_sees_a_fast_device_racing_ahead():
    # gpu0 finishes items 0, 2, 4, 6 while gpu1 is still on item 1.
    t = timeline([(1, "gpu1", 0.0, 10.0, None)] + [(o, "gpu0", i, i + 1.0, None) for i, o in enumerate([0, 2, 4, 6])])
    assert metrics.max_skew(t, 2) == pytest.approx((6 - 1) / 2)


def test_lower_bound_uses_device_rates_when_work_is_known():
    # Same work on two devices, one twice as slow: rates 1 and 0.5.
    t = [Timing(0, "a", 0, 1, work_s=1.0), Timing(1, "b", 0, 2, work_s=1.0)]
    assert metrics.lower_bound(t, ["a", "b"]) == pytest.approx(max(2.0 / 1.5, 2.0))


def test_item_seed_depends_only_on_run_seed_and_id():
    assert item_seed(42, "cat") == item_seed(42, "cat")
    assert item_seed(42, "cat") != item_seed(43, "cat")
    assert item_seed(42, "cat") != item_seed(42, "dog")
    assert 0 <= item_seed(42, "x") < 2**31


@pytest.mark.parametrize("item_id", ["../../etc/passwd", "/abs/path", "a/b", "..", "", "ça va", "x" * 300])
def test_output_names_never_leave_the_images_folder(item_id):
    name = output_name(item_id)
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert name.endswith(".png") and len(name) < 200


def test_output_names_stay_distinct_for_ids_that_clean_alike():
    assert len({output_name("a/b"), output_name("a_b"), output_name("a b"), output_name("a?b")}) == 4
    assert output_name("plain-id_1.2") == "plain-id_1.2.png"


def test_sync_lookahead_queues_the_next_batch_and_only_the_oldest_batch_is_due():
    policy = SyncPolicy(9, QUEUES, lookahead=1)
    first = policy.start()
    assert [(a.ordinal, a.batch) for a in first] == [(o, o // 3) for o in range(6)]
    assert policy.due({0, 1, 3, 4, 5}) == [0, 1]  # batch 1 waits behind batch 0's barrier
    policy.done(0), policy.done(1)
    assert [(a.ordinal, a.batch) for a in policy.done(2)] == [(6, 2), (7, 2), (8, 2)]
    assert policy.batch_size(2) == 3 and policy.batch_size(3) == 0


def test_other_policies_treat_every_outstanding_item_as_due():
    assert BalancedPolicy(5, "shared", 5).due({3, 1}) == [1, 3]


def test_barrier_release_is_the_time_between_batches():
    t = timeline([(0, "a", 0.0, 1.0, 0), (1, "b", 0.0, 1.5, 0), (2, "a", 1.52, 2.0, 1), (3, "b", 1.6, 2.0, 1)])
    assert metrics.barrier_release(t) == [pytest.approx(0.02)]
