"""The device slot on its own: one holder at a time, first come first served, and the next turn's
preparation (its claim) timed to overlap the end of the running hold, never its start."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import pytest

from editbatch.workers.device_slot import DeviceSlot


class Queue(deque):
    """The slot's queue, telling the test when a turn has entered it."""

    entered = threading.Event()

    def append(self, item) -> None:
        super().append(item)
        self.entered.set()


def new_slot(**kwargs) -> DeviceSlot:
    slot = DeviceSlot(**kwargs)
    slot._queue = Queue()
    return slot


def enter_in_order(slot: DeviceSlot, bodies: list[tuple[str, Callable[[], None]]]) -> list[threading.Thread]:
    """Start one thread per (name, body), in order, each entering the slot's queue before the next starts."""
    threads = []
    for name, body in bodies:
        slot._queue.entered = threading.Event()
        t = threading.Thread(target=body, name=f"thread-{name}")
        t.start()
        assert slot._queue.entered.wait(5)
        threads.append(t)
    return threads


def run_turns(slot: DeviceSlot, turns: list[tuple[str, float]], log: list, prepare: bool = True,
              fail: str | None = None, group: str | None = None) -> list[threading.Thread]:
    """One thread per (name, hold seconds), entering the slot's queue in order."""
    bodies = []
    for name, seconds in turns:
        def turn(name=name, seconds=seconds):
            def ready():
                log.append(("prepare", name, time.monotonic()))
                if name == fail:
                    raise LookupError(name)

            try:
                with slot.hold({"task": name}, prepare=ready if prepare else None, group=group):
                    log.append(("take", name, time.monotonic()))
                    time.sleep(seconds)
                    log.append(("leave", name, time.monotonic()))
            except LookupError:
                log.append(("gone", name, time.monotonic()))

        bodies.append((name, turn))
    return enter_in_order(slot, bodies)


def times(log, kind):
    return {name: at for k, name, at in log if k == kind}


def test_one_holder_at_a_time_in_arrival_order():
    slot, log = new_slot(), []
    for t in run_turns(slot, [(f"t{i}", 0.05) for i in range(5)], log, prepare=False):
        t.join(10)
    order = [(k, n) for k, n, _ in log]
    assert order == [(k, f"t{i}") for i in range(5) for k in ("take", "leave")]


def test_the_next_turn_prepares_shortly_before_the_holder_is_expected_to_leave():
    slot, log = new_slot(), []
    slot.PREPARE_S = 0.15  # wide, so a loaded machine's thread wake-ups cannot blur the order
    hold_s = 0.6
    for t in run_turns(slot, [(f"t{i}", hold_s) for i in range(4)], log):
        t.join(20)
    prepared, taken, left = times(log, "prepare"), times(log, "take"), times(log, "leave")
    # The first has no history: it prepares once the slot is free, which it is.
    assert prepared["t0"] <= taken["t0"]
    # t1 knows no hold's length yet (t0 is the first): it prepares when the slot frees.
    assert prepared["t1"] >= left["t0"]
    for prev, nxt in (("t1", "t2"), ("t2", "t3")):
        # Known holds of ~0.6 s: the next turn prepares while the holder still holds, not at its start
        # (a task waiting here is still one the producer may take back).
        assert taken[prev] + hold_s / 2 < prepared[nxt] < left[prev], log
        assert taken[nxt] >= left[prev]


def test_holds_of_another_group_say_nothing_of_this_ones_length():
    # Short edits of one run, then long ones of the next: the next run's second turn must not prepare at its
    # holder's start from the first run's lengths (a claim taken seconds early, before a cancel it then misses).
    slot, log = new_slot(), []
    for t in run_turns(slot, [(f"a{i}", 0.02) for i in range(3)], log, group="run-a"):
        t.join(10)
    for t in run_turns(slot, [("b0", 0.5), ("b1", 0.5), ("b2", 0.5)], log, group="run-b"):
        t.join(10)
    prepared, taken, left = times(log, "prepare"), times(log, "take"), times(log, "leave")
    assert prepared["b1"] >= left["b0"]  # no hold of run-b known yet: once the slot is free
    assert taken["b1"] + 0.25 < prepared["b2"] < left["b1"]  # one known: shortly before b1 is expected to end


def test_a_preparation_that_fails_leaves_the_queue_and_the_next_turn_goes_on():
    slot, log = new_slot(), []
    for t in run_turns(slot, [("t0", 0.2), ("bad", 0.2), ("t2", 0.05)], log, fail="bad"):
        t.join(10)
    kinds = [(k, n) for k, n, _ in log]
    assert ("gone", "bad") in kinds and ("take", "bad") not in kinds
    assert kinds.index(("take", "t2")) > kinds.index(("leave", "t0"))
    assert not slot._queue and not slot._held


@pytest.mark.parametrize("prepare", [True, False])
def test_the_slot_says_busy_and_idle_in_order(prepare):
    told = []
    slot = new_slot(on_busy=lambda what: told.append(what and what["task"]))
    for t in run_turns(slot, [("a", 0.05), ("b", 0.05)], [], prepare=prepare):
        t.join(10)
    assert told == ["a", "b", None]


def begin_turns(slot: DeviceSlot, names: list[str], log: list, hold_s: float = 0.2, leaving=lambda: False,
                begin_fails: set[str] = frozenset()) -> list[threading.Thread]:
    """Turns with a `begin` that records the thread it ran on and when, and a completion on the turn's own."""
    bodies = []
    for name in names:
        def turn(name=name):
            calls = {"n": 0}

            def begin():
                calls["n"] += 1
                log.append(("begin", name, threading.current_thread().name, time.monotonic()))
                if name in begin_fails and calls["n"] == 1:
                    raise ConnectionError("request did not go out")
                return lambda: log.append(("complete", name, threading.current_thread().name, time.monotonic()))

            try:
                with slot.hold({"task": name}, prepare=lambda: None, begin=begin, leaving=leaving):
                    log.append(("take", name, threading.current_thread().name, time.monotonic()))
                    time.sleep(hold_s)
                    log.append(("leave", name, threading.current_thread().name, time.monotonic()))
            except Exception as exc:  # noqa: BLE001
                log.append(("raised", name, type(exc).__name__, time.monotonic()))

        bodies.append((name, turn))
    return enter_in_order(slot, bodies)


def events(log, kind):
    return {name: (thread, at) for k, name, thread, at in log if k == kind}


def test_the_holder_begins_the_next_turn_as_it_leaves_and_the_turn_completes_it_before_its_block():
    slot, log = new_slot(), []
    slot.PREPARE_S = 0.1  # wide: each next turn is ready well before its holder leaves, even on a loaded machine
    for t in begin_turns(slot, ["a", "b", "c", "d"], log):
        t.join(10)
    begun, completed, taken, left = (events(log, k) for k in ("begin", "complete", "take", "leave"))
    assert begun["a"][0] == "thread-a"  # the slot was free: begun by the turn itself
    # No hold's length known while "a" holds: "b" prepares (claims) only once the slot is free, so it is not
    # ready when "a" leaves and begins itself.
    assert begun["b"][0] == "thread-b"
    for prev, nxt in (("b", "c"), ("c", "d")):
        # The request of the next turn goes out on the leaving holder's thread once its block has ended (the
        # device is free), never while it holds it; the next turn reads the reply before its own block.
        assert begun[nxt][0] == f"thread-{prev}"
        assert left[prev][1] <= begun[nxt][1] <= taken[nxt][1]
        assert completed[nxt][0] == f"thread-{nxt}" and completed[nxt][1] <= taken[nxt][1]
    assert [k for k, *_ in log].count("begin") == 4  # once each


def test_a_turn_of_a_leaving_worker_is_neither_begun_nor_started():
    slot, log = new_slot(), []
    leaving = threading.Event()
    threads = begin_turns(slot, ["a", "b"], log, hold_s=0.3, leaving=leaving.is_set)
    time.sleep(0.1)
    leaving.set()  # while "a" holds the slot: "b" goes back to its queue
    for t in threads:
        t.join(10)
    assert "b" not in events(log, "begin") and "b" not in events(log, "take")
    assert events(log, "raised")["b"][0] == "GiveBack"


def test_a_begin_that_fails_on_the_holders_thread_is_made_again_on_the_turns_own():
    slot, log = new_slot(), []
    slot.PREPARE_S = 0.1
    for t in begin_turns(slot, ["a", "b", "c"], log, begin_fails={"c"}):
        t.join(10)
    tries = [thread for k, name, thread, _ in log if k == "begin" and name == "c"]
    assert tries == ["thread-b", "thread-c"]
    assert events(log, "complete")["c"][0] == "thread-c" and "c" in events(log, "take")
