"""Shared fixtures: a real private Redis and real worker processes (no mocks, no eager mode)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from editbatch.cluster.local import LocalCluster

REPO = Path(__file__).resolve().parents[1]
SIM_DEVICES = ["cpu", "cpu", "cpu"]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m editbatch ...` as a user would, capturing its output."""
    return subprocess.run([sys.executable, "-m", "editbatch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_run(output_dir: Path) -> tuple[list[dict], dict]:
    return read_jsonl(output_dir / "manifest.jsonl"), json.loads((output_dir / "summary.json").read_text())


def write_dataset(folder: Path, rows: list[dict], name: str = "dataset.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (32, 24), (200, 20, 20)).save(path)
    return path


def simple_rows(n: int, image: Path) -> list[dict]:
    return [{"id": f"item-{i:03d}", "image": str(image), "instruction": f"edit number {i}"} for i in range(n)]


@pytest.fixture(scope="session")
def _redis_server():
    from editbatch.cluster.redis_server import RedisServer

    server = RedisServer()
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def redis_url(_redis_server):
    """A private real Redis (loopback, password), flushed before and after each test."""
    from editbatch.redisconn import connect

    client = connect(_redis_server)
    client.flushdb()
    try:
        yield _redis_server
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def sim_cluster(tmp_path_factory, sample_image):
    """Three simulated-model workers on a private Redis, shared by the tests that submit to a broker URL."""
    root = tmp_path_factory.mktemp("sim-cluster")
    dataset = write_dataset(root, simple_rows(1, sample_image))
    config = write_config(root / "workers.yaml", name="workers", dataset={"path": str(dataset)},
                          output_dir=str(root / "unused"), model={"type": "simulated", "path": "sim"},
                          cluster={"broker": "auto", "devices": SIM_DEVICES, "prefetch": 2,
                                   # Every test's folders (pytest's tmp_path) and nothing else.
                                   "output_roots": [str(tmp_path_factory.getbasetemp())],
                                   "input_roots": [str(tmp_path_factory.getbasetemp())]})
    from editbatch.devices import expand_devices

    # Restarted when they exit: tests with short task timeouts make workers end themselves (watchdog).
    cluster = LocalCluster(config, expand_devices(SIM_DEVICES), root / "logs", restarts=1000)
    url = cluster.start()
    cluster.watch()
    try:
        yield {"url": url, "cluster": cluster}
    finally:
        cluster.stop()


@pytest.fixture
def sim_run(tmp_path, sim_cluster, sample_image):
    """Run `editbatch run` against the shared simulated workers; returns (process, manifest, summary)."""

    def go(n: int = 12, *, mode: str = "sync", params: dict | None = None, rows: list[dict] | None = None,
           schedule: dict | None = None, extra_args: tuple[str, ...] = ()):
        dataset = write_dataset(tmp_path / "data", rows if rows is not None else simple_rows(n, sample_image))
        out = tmp_path / f"out-{mode}"
        config = write_config(tmp_path / f"{mode}.yaml", name=f"test-{mode}", dataset={"path": str(dataset)},
                              output_dir=str(out),
                              model={"type": "simulated", "path": "sim", "params": params or {"seconds": 0.05}},
                              cluster={"broker": sim_cluster["url"], "devices": SIM_DEVICES, "ready_timeout_s": 60},
                              schedule={"mode": mode, "task_timeout_s": 30, **(schedule or {})})
        proc = run_cli("run", str(config), *extra_args)
        manifest, summary = read_run(out) if (out / "summary.json").exists() else ([], {})
        return proc, manifest, summary

    return go


def stop_worker(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM (a warm shutdown: the worker finishes its task), then SIGKILL after `grace_s`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def as_in_a_terminal() -> None:
    """preexec_fn for a producer a test interrupts: SIGINT acted on, as in a terminal, whatever the test runner
    inherited (a suite started in the background by a script has SIGINT ignored, and so would its children)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def unsaved_at(calls, device, log):
    """What a worker killed or stopped now may have to give up: the edit on its device and, with prefetch 2,
    the one before it while that one's files were still being written (its worker log, read at the kill,
    does not show it handed back). The first was always computed again; the second is now too, if the kill
    came before its attempt's files were written (an attempt on disk is adopted, not computed again)."""
    mine = [c["id"] for c in read_jsonl(calls) if c["device"] == device]
    text = log.read_text(errors="replace") if log.exists() else ""
    return {mine[-1]} | {i for i in mine[-2:-1] if f"{device}: {i} ok in " not in text}


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Pids still alive after `timeout` seconds."""
    import psutil

    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    return alive


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped with the reason elsewhere): writes to it run out of room."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of `folder` up to `leave` bytes of free space; returns the filler file."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        left = max(0, stat.f_bavail * stat.f_frsize - leave)
        while left > 0 and os.write(fd, b"\0" * min(left, 65536)):
            left -= 65536
        while not leave and os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    return filler


def assert_barrier_held(manifest: list[dict]) -> None:
    """Sync mode's rule, from the manifest: within each round of each run, no item of batch k started before
    every item of the batches before it finished (items reused from an earlier run are not timed here)."""
    computed = [r for r in manifest if not r.get("reused")]
    for run, round_no in {(r.get("run"), r.get("round")) for r in computed}:
        mine = [r for r in computed if (r.get("run"), r.get("round")) == (run, round_no)]
        for k in sorted({r["batch"] for r in mine})[1:]:
            before = max(r["finished_at"] for r in mine if r["batch"] < k)
            assert min(r["started_at"] for r in mine if r["batch"] == k) >= before, (run, round_no, k)


@pytest.fixture
def compose(tmp_path):
    """docker-compose.yml played as local processes (see compose_rehearsal.py), stopped like `compose down`."""
    import secrets

    from .compose_rehearsal import Rehearsal

    dotenv = {"REDIS_PASSWORD": secrets.token_urlsafe(12), "FLOWER_PASSWORD": secrets.token_urlsafe(12)}
    project = Rehearsal(tmp_path, dotenv)
    try:
        yield project
    finally:
        project.stop()
