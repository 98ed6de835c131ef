"""The workers a run uses: its own local cluster (`broker: auto`) or a Redis where workers already serve."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

from ..config import RunConfig
from .plan import Plan


@dataclass
class ClusterHandle:
    broker: str
    local: object | None = None  # the LocalCluster, with broker: auto

    def check_alive(self) -> None:
        """Raise if a worker we started exited before it was ready."""
        if self.local is not None:
            self.local.check_alive()

    def watch(self) -> None:
        """From now on, keep the local cluster whole (restart exited workers and Redis)."""
        if self.local is not None:
            self.local.watch()

    def restarting(self) -> bool:
        """A worker of the local cluster is being started again (it rejoins when loaded)."""
        return self.local is not None and self.local.restarting()


def start_cluster(config: RunConfig, plan: Plan, stack: contextlib.ExitStack,
                  say: Callable[[str], None]) -> ClusterHandle:
    if config.cluster.broker != "auto":
        return ClusterHandle(config.cluster.broker)
    from ..cluster.local import LocalCluster
    from ..scores.judge.setup import asks_judge
    from .. import layout

    local = stack.enter_context(LocalCluster(plan.resolved, config.devices, plan.out_dir / layout.LOGS,
                                             namespace=config.cluster.namespace, restarts=config.cluster.restarts,
                                             say=say, judge=asks_judge(config.evaluate)))
    return ClusterHandle(local.start(), local)
