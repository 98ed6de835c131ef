"""Several hosts, for real: network namespaces as hosts (tests/hosts.py), faults as links cut on the bridge.

Redis on host `redis`; workers a-cpu0 and a-cpu1 on host `a`, b-cpu0 on `b`,
c-cpu0 on `c` (started by hand, as on real machines); the producer and the
coordinator on host `prod`; the storage a shared temporary folder. Each
scenario runs in sync and balanced mode (the run across hosts and the
worker host cut in all four) and checks from the files that
every item is in the manifest once, ok, with an image that decodes and the
record of the attempt the manifest names, and counts the items computed
twice (the simulated model's call log). Costs about 3 min 45 s on 2 cores.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from editbatch import ledger

from . import hosts as hostlib
from .conftest import read_jsonl, read_run, run_cli, simple_rows, write_config, write_dataset

WHY_NOT = hostlib.why_not_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

DEVICES = ["a:cpu", "a:cpu", "b:cpu", "c:cpu"]
WORKER_HOSTS = {"a": ["a:cpu0", "a:cpu1"], "b": ["b:cpu0"], "c": ["c:cpu0"]}
N = 16
SECONDS = 0.4
NAMESPACE = "hosts"
MODES = ["sync", "balanced"]
ALL_MODES = ["sync", "nosync", "balanced", "window"]  # for the cheaper scenarios
SKEWED_HOST, SKEW_S = "c", -3600.0  # host c's clock runs an hour behind


def run_config(folder: Path, url: str, roots: str, image: Path, mode: str, *, n: int = N,
               broker: str | None = None, devices: list | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder / f"{mode}.yaml", name=f"hosts-{mode}",
                        dataset={"path": str(write_dataset(folder / "data", simple_rows(n, image)))},
                        output_dir=str(folder / "out"),
                        model={"type": "simulated", "path": "sim",
                               "params": {"seconds": SECONDS, "call_log": str(folder / "calls.jsonl")}},
                        cluster={"broker": broker or url, "devices": devices or DEVICES, "namespace": NAMESPACE,
                                 "ready_timeout_s": 90, "output_roots": [roots], "input_roots": [roots]},
                        schedule={"mode": mode, "task_timeout_s": 60})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, sample_image):
    root = tmp_path_factory.mktemp("hosts")
    roots = str(tmp_path_factory.getbasetemp())
    net = hostlib.Hosts(["redis", "prod", "a", "b", "c"])
    try:
        net.build()
        url = hostlib.start_redis(net, "redis", root / "redis")
        config = run_config(root / "workers", url, roots, sample_image, "balanced")
        for host, devices in WORKER_HOSTS.items():
            # Host c's workers report times on a clock an hour behind (a test-only hook; see editbatch/clock.py).
            env = {"EDITBATCH_BROKER": url, **({"EDITBATCH_TEST_CLOCK_OFFSET_S": str(SKEW_S)}
                                              if host == SKEWED_HOST else {})}
            for spec in devices:
                net.editbatch(host, "worker", "--config", str(config), "--device", spec, env=env,
                              log=root / f"worker-{spec.replace(':', '-')}.log")
        yield {"net": net, "url": url, "roots": roots, "root": root}
    finally:
        net.stop()


class Producer:
    """`editbatch run` on host prod, its stdout lines timed as they come."""

    def __init__(self, net: hostlib.Hosts, config: Path):
        self.proc = net.editbatch("prod", "run", str(config))
        self.lines: list[tuple[float, str]] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.decode(errors="replace").rstrip()))

    def wait(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as timed_out:
            self.proc.kill()
            raise AssertionError("the run did not end:\n" + self.text()[-3000:]) from timed_out
        self._reader.join(5)
        self.err = self.proc.stderr.read().decode(errors="replace")
        return self.proc.returncode

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, text: str, after: float) -> float | None:
        return next((t - after for t, line in self.lines if text in line and t >= after), None)


def wait_calls(calls: Path, count: int, producer: Producer, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and producer.proc.poll() is None:
        if calls.exists() and calls.read_text().count("\n") >= count:
            return read_jsonl(calls)
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach {count} model calls:\n" + producer.text()[-3000:])


def check_files(out: Path, calls: Path, n: int = N) -> tuple[list[dict], list[str]]:
    """Each item once, ok, its image decodes, the record on disk is the attempt the manifest names;
    returns the manifest and the ids computed twice."""
    manifest, summary = read_run(out)
    assert sorted(r["id"] for r in manifest) == [f"item-{i:03d}" for i in range(n)]
    assert all(r["status"] == "ok" for r in manifest), [(r["id"], r["errors"]) for r in manifest]
    for row in manifest:
        with Image.open(out / row["output"]) as im:
            im.load()
        record = ledger.read_record(ledger.record_path(out, row["id"]))
        assert (record["worker"], record["attempt"]) == (row["worker"], row["attempt"]), (row, record)
        # Times of a skewed host are moved onto the producer's clock; the record keeps the worker's own.
        assert abs(record["started_at"] - (row.get("clock_offset_s") or 0) - row["started_at"]) < 1e-6, (row, record)
    assert summary["ok"] == n
    assert summary["makespan_s"] >= 0 and summary["median_queue_wait_s"] >= 0, summary
    counted = Counter(c["id"] for c in read_jsonl(calls))
    assert max(counted.values()) <= 2, counted
    return manifest, sorted(i for i, k in counted.items() if k > 1)


@dataclass
class Faulted:
    producer: Producer
    out: Path
    calls: Path
    running: dict  # device -> the item it had started last when the link was cut
    cut_at: float | None
    restored_at: float | None


def run_with_fault(cluster, tmp_path, image, mode, host: str | None, cut_s: float, after_calls: int = 4) -> Faulted:
    """A run with `host`'s link cut for `cut_s` seconds once `after_calls` edits started."""
    config = run_config(tmp_path, cluster["url"], cluster["roots"], image, mode)
    calls = tmp_path / "calls.jsonl"
    producer = Producer(cluster["net"], config)
    cut_at, restored_at, running = None, None, {}
    if host is not None:
        started = wait_calls(calls, after_calls, producer)
        cut_at = time.monotonic()
        cluster["net"].cut(host)
        for call in started:
            running[call["device"]] = call["id"]
        try:
            time.sleep(cut_s)
        finally:
            cluster["net"].restore(host)
            restored_at = time.monotonic()
    rc = producer.wait(240)
    assert rc == 0, producer.text()[-4000:] + producer.err[-2000:]
    return Faulted(producer, tmp_path / "out", calls, running, cut_at, restored_at)


def report(name: str, mode: str, twice: list[str], **figures) -> None:
    shown = " ".join(f"{k}={v:.1f}s" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[hosts] {name} {mode}: ok, computed twice {len(twice)} {twice} {shown}")


@pytest.fixture(scope="module")
def one_host(tmp_path_factory, sample_image):
    """The same run on one host (broker: auto, four CPU workers on loopback): the outputs to match."""
    folder = tmp_path_factory.mktemp("one-host")
    config = run_config(folder, "auto", str(tmp_path_factory.getbasetemp()), sample_image, "balanced",
                        broker="auto", devices=["cpu"] * 4)
    proc = run_cli("run", str(config), timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return folder / "out"


@pytest.mark.parametrize("mode", ALL_MODES)
def test_a_run_across_three_hosts_matches_one_host(cluster, one_host, tmp_path, sample_image, mode):
    run = run_with_fault(cluster, tmp_path, sample_image, mode, None, 0)
    manifest, twice = check_files(run.out, run.calls)
    assert twice == []
    assert {r["device"].split("-")[0] for r in manifest} == {"a", "b", "c"}
    for row in manifest:
        assert (run.out / row["output"]).read_bytes() == (one_host / row["output"]).read_bytes(), row["id"]
    # Host c's clock is an hour behind: its times are put on the producer's clock, none is absurd.
    _, summary = read_run(run.out)
    # The shift is measured (each clock against Redis's TIME, good to half a round trip), so it is
    # the hour give or take milliseconds; hosts whose clocks agree are not shifted at all.
    shifts = {r["device"]: r.get("clock_offset_s") for r in manifest}
    assert all(abs(shifts[d] - SKEW_S) < 0.05 for d in shifts if d.startswith("c-")), shifts
    assert all(shifts[d] is None for d in shifts if not d.startswith("c-")), shifts
    starts = [r["started_at"] for r in manifest]
    assert max(starts) - min(starts) < 600 and summary["makespan_s"] < 600, summary
    assert all(r["finished_at"] >= r["started_at"] for r in manifest)
    report("three hosts", mode, twice, makespan=summary["makespan_s"])


@pytest.mark.parametrize("mode", ALL_MODES)
def test_a_worker_host_cut_off_is_replaced_and_rejoins(cluster, tmp_path, sample_image, mode):
    cut_s = 10.0  # longer than the presence TTL (6 s)
    run = run_with_fault(cluster, tmp_path, sample_image, mode, "b", cut_s)
    lost = run.producer.first("b-cpu0 lost", run.cut_at)
    back = run.producer.first("b-cpu0 back", run.restored_at)
    assert lost is not None, run.producer.text()[-3000:]
    manifest, twice = check_files(run.out, run.calls)
    # Only what b held when cut off may run twice; its late copy loses the commit and leaves no files.
    assert set(twice) <= {run.running.get("b-cpu0")}, (twice, run.running)
    if twice:
        log = cluster["root"] / "worker-b-cpu0.log"
        assert wait_for(lambda: f"{twice[0]} superseded by a later claim" in log.read_text(), 30), log.read_text()
        assert wait_for(lambda: not list((run.out / ".attempts").iterdir()), 10)
        check_files(run.out, run.calls)  # the record on disk is still the committed attempt
    # b is back: the next run uses it.
    again = run_with_fault(cluster, tmp_path / "again", sample_image, mode, None, 0)
    manifest2, _ = check_files(again.out, again.calls)
    assert "b-cpu0" in {r["device"] for r in manifest2}
    report("worker host cut", mode, twice, detected=lost, back=back if back is not None else "after the run",
           cut=cut_s)


@pytest.mark.parametrize("mode", MODES)
def test_the_redis_host_unreachable_for_20s(cluster, tmp_path, sample_image, mode):
    run = run_with_fault(cluster, tmp_path, sample_image, mode, "redis", 20.0)
    manifest, twice = check_files(run.out, run.calls)
    # Every record lapsed while Redis was away, for everyone alike: no worker is written off for it.
    assert run.producer.first(" lost: continuing", run.cut_at) is None, run.producer.text()[-3000:] + run.producer.err
    report("redis host cut", mode, twice, ended_after_restore=time.monotonic() - run.restored_at)


@pytest.mark.parametrize("mode", MODES)
def test_the_producer_host_cut_off_for_20s(cluster, tmp_path, sample_image, mode):
    run = run_with_fault(cluster, tmp_path, sample_image, mode, "prod", 20.0)
    manifest, twice = check_files(run.out, run.calls)
    assert run.producer.first(" lost: continuing", run.cut_at) is None, run.producer.text()[-3000:]
    assert twice == []
    report("producer host cut", mode, twice, ended_after_restore=time.monotonic() - run.restored_at)


def wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def cli(cluster, host: str, *args: str, timeout: float = 60) -> tuple[int, str]:
    """`editbatch ARGS` on `host`; (exit code, stdout and stderr)."""
    proc = cluster["net"].editbatch(host, *args, "--broker", cluster["url"], "--config", str(cluster["service"]))
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace") + err.decode(errors="replace")


@pytest.mark.parametrize("mode", ["sync", "balanced"])
def test_a_job_submitted_from_one_host_runs_on_the_others_and_is_cancelled_from_a_third(cluster, tmp_path,
                                                                                          sample_image, mode):
    n = 24
    service = cluster["service"] = write_config(tmp_path / "cluster.yaml", name="service",
                           model={"type": "simulated", "path": "sim"},
                           cluster={"broker": cluster["url"], "devices": DEVICES, "namespace": NAMESPACE,
                                    "ready_timeout_s": 90, "output_roots": [cluster["roots"]],
                                    "input_roots": [cluster["roots"]]})
    serve = cluster["net"].editbatch("prod", "serve", "--config", str(service), "--broker", cluster["url"],
                                     log=tmp_path / "serve.log")
    job = write_config(tmp_path / "job.yaml", name="hosts-job",
                       dataset={"path": str(write_dataset(tmp_path / "data", simple_rows(n, sample_image)))},
                       output_dir=str(tmp_path / "out"),
                       model={"type": "simulated", "path": "sim",
                              "params": {"seconds": SECONDS, "call_log": str(tmp_path / "calls.jsonl")}},
                       schedule={"mode": mode, "task_timeout_s": 60})
    job_id = f"hosts-job-{mode}"
    try:
        code, said = cli(cluster, "c", "submit", str(job), "--id", job_id)
        assert code == 0, said
        calls = tmp_path / "calls.jsonl"
        assert wait_for(lambda: calls.exists() and calls.read_text().count("\n") >= 6, 90), \
            (tmp_path / "serve.log").read_text()[-3000:]
        code, said = cli(cluster, "a", "cancel", job_id)
        assert code == 0 and "cancel requested" in said, said
        assert wait_for(lambda: '"state": "cancelled"' in cli(cluster, "b", "status", job_id, "--json")[1], 60)
        assert serve.poll() is None  # the coordinator takes the next job
    finally:
        serve.terminate()  # the next test starts its own coordinator
        serve.wait(30)
    out = tmp_path / "out"
    manifest, summary = read_run(out)
    assert sorted(r["id"] for r in manifest) == [f"item-{i:03d}" for i in range(n)]
    assert summary["not_run"] > 0, summary
    # An edit the cancel stopped midway ends failed with its reason (as on one host); nothing else fails.
    assert all(r["status"] in ("ok", "not_run") or r["errors"] == ["EditCancelled: run cancelled during the edit"]
               for r in manifest), [(r["id"], r["errors"]) for r in manifest]
    for row in manifest:
        if row["status"] == "ok":
            with Image.open(out / row["output"]) as im:
                im.load()
    assert {r["device"].split("-")[0] for r in manifest if r["status"] == "ok"} >= {"a", "b"}
    counted = Counter(c["id"] for c in read_jsonl(calls))
    assert max(counted.values()) == 1, counted
    report("job across hosts", mode, [], ok=summary["ok"], not_run=summary["not_run"])
