"""editbatch's modes and Ray's ActorPool on the same scenario, in one run of this script.

The seed's scenario (270 items of 0.2 s, 6 devices, two 5 % slower, +-10 %
jitter) goes through editbatch in every mode (the simulated model, real
workers, a real Redis; see schedule.py), then, when Ray is installed,
through `ray.util.ActorPool` with 6 actors that sleep the same per-item
times (each item's base time from editbatch's records, times its actor's
speed factor). Every row's figures come from the same formulas
(`editbatch.scheduling.metrics`): efficiency = lower bound / makespan; ideal
= the runner's own release rule replayed with the recorded times and no
orchestration cost (for the ActorPool: each actor takes the next item when
free); tail = makespan - ideal; end idle = mean over devices of the time
from the device's last finish to the run's (in brackets: the same for a zero-overhead
shared queue, each device taking the next item when free).

    pip install -e ".[peers]"      # Ray, optional: without it only editbatch runs
    python bench/peers.py
    python bench/peers.py --seconds 1.0 --modes balanced
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import schedule  # noqa: E402  (bench/schedule.py: scenario, configs)

from editbatch.cluster.local import LocalCluster  # noqa: E402
from editbatch.config import dump_config  # noqa: E402
from editbatch.producer.run import execute  # noqa: E402
from editbatch.scheduling import metrics  # noqa: E402
from editbatch.scheduling.policies import BalancedPolicy  # noqa: E402
from editbatch.scheduling.metrics import Timing  # noqa: E402


def end_idle(timings: list[Timing]) -> float:
    """Mean over devices of (the run's last finish - the device's last finish): the stranded tail."""
    last: dict[str, float] = {}
    for t in timings:
        last[t.device] = max(last.get(t.device, 0.0), t.finished_at)
    return sum(max(last.values()) - v for v in last.values()) / len(last)


def ideal_end_idle(timings: list[Timing], devices: list[str], policy_factory) -> float:
    """The same for the zero-overhead replay (the recorded times, the runner's release rule)."""
    durations = {t.ordinal: t for t in timings}
    rates = metrics.device_rates(timings, devices)
    finished: dict[str, float] = {}

    def duration(ordinal: int, device: str) -> float:
        t = durations[ordinal]
        return t.duration if device == t.device else t.work / rates[device]

    import heapq

    policy, queue, free = policy_factory(), [], [(0.0, d) for d in devices]
    queue += [a.ordinal for a in policy.start()]
    heapq.heapify(free)
    while queue:
        now, device = heapq.heappop(free)
        ordinal = queue.pop(0)
        end = now + duration(ordinal, device)
        finished[device] = end
        heapq.heappush(free, (end, device))
        queue += [a.ordinal for a in policy.done(ordinal)]
    return sum(max(finished.values()) - v for v in finished.values()) / len(devices)


def editbatch_end_idle(output_dir: Path, summary: dict) -> tuple[float, float]:
    lines = (output_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    timings = [Timing(r["index"], r["device"], r["started_at"], r["finished_at"], work_s=r.get("work_s"))
               for r in map(json.loads, lines) if r.get("started_at") is not None]
    n, devices = len(timings), summary["devices"]
    return end_idle(timings), ideal_end_idle(timings, devices, lambda: BalancedPolicy(n, "shared", len(devices)))


def run_editbatch(args, speeds, root: Path) -> tuple[list[dict], dict[int, float]]:
    """Every mode through editbatch; the summaries, and each item's base time (seconds) by index."""
    modes = args.modes.split(",")
    cfg = schedule.make_config(root, args, speeds, "auto", modes[0], "workers")
    (root / "workers.yaml").write_text(dump_config(cfg))
    summaries, work = [], {}
    with LocalCluster(root / "workers.yaml", cfg.devices, root / "logs") as cluster, open(os.devnull, "w") as quiet:
        broker = cluster.start()
        for mode in modes:
            config = schedule.make_config(root, args, speeds, broker, mode, mode)
            outcome = execute(config, source="bench", stream=quiet)
            summaries.append({**outcome.summary, "end_idle": editbatch_end_idle(outcome.output_dir, outcome.summary)})
            print(f"  editbatch {mode}: {outcome.summary['makespan_s']:.2f}s", file=sys.stderr, flush=True)
            if not work:  # the items' base times: the same for every mode (drawn from each item's seed)
                lines = (outcome.output_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
                work = {r["index"]: r["work_s"] for r in map(json.loads, lines) if r.get("work_s") is not None}
    return summaries, work


def run_ray(work: dict[int, float], speeds: list[float]) -> dict | str:
    """The same items through Ray's ActorPool: the summary's figures, or why Ray did not run."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        return "Ray is not installed (pip install -e '.[peers]'): editbatch only"

    @ray.remote(num_cpus=1)
    class Device:
        def __init__(self, name: str, factor: float):
            self.name, self.factor = name, factor

        def edit(self, ordinal: int, seconds: float) -> tuple[int, str, float, float, float]:
            started = time.time()
            time.sleep(seconds * self.factor)
            return ordinal, self.name, started, time.time(), seconds

    try:
        ray.init(num_cpus=len(speeds), include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 object_store_memory=100 * 2**20)
    except Exception as exc:  # noqa: BLE001 - any reason Ray cannot start here is reported, not raised
        return f"Ray did not start here ({exc.__class__.__name__}: {exc}): editbatch only"
    try:
        devices = [f"actor{i}" for i in range(len(speeds))]
        actors = [Device.remote(name, f) for name, f in zip(devices, speeds)]
        ray.get([a.__ray_ready__.remote() for a in actors])  # started and ready, like editbatch's loaded workers
        items = [work[i] for i in sorted(work)]
        pool = ActorPool(actors)
        began = time.time()
        done = list(pool.map_unordered(lambda actor, item: actor.edit.remote(*item), list(enumerate(items))))
    finally:
        ray.shutdown()
    timings = [Timing(o, name, s, f, work_s=w) for o, name, s, f, w in done]
    span = metrics.makespan(timings, since=began)
    lower = metrics.lower_bound(timings, devices)
    ideal = metrics.ideal_makespan(timings, devices, lambda: BalancedPolicy(len(items), "shared", len(devices)))
    pool_rule = lambda: BalancedPolicy(len(items), "shared", len(devices))  # noqa: E731
    return {"mode": "ray ActorPool", "makespan_s": span, "lower_bound_s": lower, "efficiency": lower / span,
            "ideal_s": ideal, "overhead": span / ideal - 1,
            "end_idle": (end_idle(timings), ideal_end_idle(timings, devices, pool_rule))}


HEADER = ("| runner             | makespan | lower bd | effic | ideal  | overhead | tail s | end idle s     |\n"
          "|--------------------|---------:|---------:|------:|-------:|---------:|-------:|---------------:|")


def row(s: dict) -> str:
    name = s["mode"] if s["mode"].startswith("ray") else f"editbatch {s['mode']}"
    return (f"| {name:<18} | {s['makespan_s']:8.2f} | {s['lower_bound_s']:8.2f} | {s['efficiency']:5.3f} | "
            f"{s['ideal_s']:6.2f} | {100 * s['overhead']:+7.2f}% | {s['makespan_s'] - s['ideal_s']:+6.3f} | "
            f"{s['end_idle'][0]:.3f} ({s['end_idle'][1]:.3f}) |")


def main(argv=None) -> int:
    args = schedule.parse_args(argv)
    speeds = schedule.speeds_for(args)
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="editbatch-peers-")))
        root.mkdir(parents=True, exist_ok=True)
        print(f"scenario: {args.items} items, {args.devices} devices, speed factors {speeds}, jitter "
              f"+-{args.jitter:.0%}, {args.seconds} s per item; editbatch prefetch {args.prefetch}"
              f"{'' if args.take_back else ' (no take-back)'}; {os.cpu_count()} CPU cores", flush=True)
        summaries, work = run_editbatch(args, speeds, root)
    ray_row = run_ray(work, speeds) if work else "no item times recorded: Ray not run"
    if isinstance(ray_row, str):
        print(ray_row)
    else:
        summaries.append(ray_row)
        print(f"  {ray_row['mode']}: {ray_row['makespan_s']:.2f}s", file=sys.stderr, flush=True)
    print(HEADER)
    for s in summaries:
        print(row(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
