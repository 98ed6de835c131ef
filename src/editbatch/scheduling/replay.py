"""Zero-overhead replay: the makespan a mode would reach if orchestration cost nothing.

The same policy object that drove the run is fed again in an event
simulation where a released item is instantly visible to the workers and
each task takes its recorded time. A device takes from its own queue first,
then from the shared queue, in FIFO order, like the real workers do.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable

from .policies import Policy

Duration = Callable[[int, str], float]


def replay(policy: Policy, device_queues: list[str], duration: Duration) -> float:
    """Simulate `policy` on devices named by their queues; return the makespan in seconds."""
    queues: dict[str, deque[int]] = {}

    def push(assignments) -> None:
        for a in assignments:
            queues.setdefault(a.queue, deque()).append(a.ordinal)

    def next_for(device: str) -> int | None:
        own = queues.get(device)
        if own:
            return own.popleft()
        for name, q in queues.items():
            if q and name not in device_queues:  # the shared queue(s)
                return q.popleft()
        return None

    push(policy.start())
    now = 0.0
    idle = list(device_queues)
    running: list[tuple[float, int, str]] = []
    makespan = 0.0
    while True:
        still_idle = []
        for device in idle:
            ordinal = next_for(device)
            if ordinal is None:
                still_idle.append(device)
            else:
                heapq.heappush(running, (now + duration(ordinal, device), ordinal, device))
        idle = still_idle
        if not running:
            break
        now, ordinal, device = heapq.heappop(running)
        makespan = max(makespan, now)
        idle.append(device)
        push(policy.done(ordinal))
        # Finish everything that ends at the same instant before dispatching.
        while running and running[0][0] <= now:
            _, ordinal, device = heapq.heappop(running)
            idle.append(device)
            push(policy.done(ordinal))
        idle.sort(key=device_queues.index)
    return makespan
