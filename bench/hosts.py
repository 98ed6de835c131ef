"""Several hosts: a run across three hosts against the same run on one, and what each network cut costs.

Hosts are network namespaces (tests/hosts.py: a bridge in a namespace of its
own, 198.18.0.0/24, no route anywhere else; needs root). Redis on host
`redis`, the producer on `prod`. Three-host layout: workers a:cpu0, a:cpu1,
b:cpu0, c:cpu0; one-host layout: solo:cpu0..3. Simulated model. Prints,
per mode, the wall time of `editbatch run` and its makespan on each
layout, then per cut (a worker host for 10 s, the Redis host for 20 s, the
producer host for 20 s): when the producer reported the worker lost (after
the cut), when the cut host's worker record was back in Redis (after the
link came back), when the first result after the link came back reached the
manifest, and the items computed twice.

    sudo python bench/hosts.py
    sudo python bench/hosts.py --items 48 --seconds 0.25 --modes sync,balanced
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import hosts as hostlib  # noqa: E402

NAMESPACE = "bench-hosts"
LAYOUTS = {"three hosts": {"a": ["a:cpu0", "a:cpu1"], "b": ["b:cpu0"], "c": ["c:cpu0"]},
           "one host": {"solo": ["solo:cpu0", "solo:cpu1", "solo:cpu2", "solo:cpu3"]}}
CUTS = [("worker host b", "b", 10.0), ("Redis host", "redis", 20.0), ("producer host", "prod", 20.0)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=48)
    p.add_argument("--seconds", type=float, default=0.25)
    p.add_argument("--modes", default="sync,balanced")
    return p.parse_args(argv)


def config(root: Path, name: str, url: str, devices: list[str], mode: str, args) -> Path:
    import yaml

    image = root / "in.png"
    if not image.exists():
        Image.new("RGB", (16, 16), (90, 120, 150)).save(image)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(
        json.dumps({"id": f"item-{i:03d}", "image": str(image), "instruction": f"edit {i}"}) + "\n"
        for i in range(args.items)))
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "dataset": {"path": str(folder / "data.jsonl")}, "output_dir": str(folder / "out"),
        "model": {"type": "simulated", "path": "sim",
                  "params": {"seconds": args.seconds, "call_log": str(folder / "calls.jsonl")}},
        "cluster": {"broker": url, "devices": devices, "namespace": NAMESPACE, "ready_timeout_s": 120,
                    "output_roots": [str(root)], "input_roots": [str(root)]},
        "schedule": {"mode": mode, "task_timeout_s": 60}}, sort_keys=False))
    return path


def presence_watch(net, url: str, queue: str, log: Path) -> subprocess.Popen:
    """A process on host prod that writes the monotonic time of each change of `queue`'s worker record."""
    code = (f"import redis,time\nr=redis.Redis.from_url({url!r},socket_timeout=1,socket_connect_timeout=1)\n"
            f"last=None\nwhile True:\n"
            f"    try: now=bool(r.exists('{NAMESPACE}:worker:{queue}'))\n"
            f"    except Exception: now=None\n"
            f"    if now is not None and now!=last: print(time.monotonic(),int(now),flush=True); last=now\n"
            f"    time.sleep(0.1)\n")
    return net.start("prod", [sys.executable, "-c", code], log=log)


def manifest_times(out: Path, stop: threading.Event, seen: list[float]) -> None:
    count = 0
    while not stop.is_set():
        path = out / "manifest.jsonl"
        n = path.read_text().count("\n") if path.exists() else 0
        if n > count:
            seen.append(time.monotonic())
            count = n
        time.sleep(0.05)


def run_once(net, cfg: Path, cut: tuple[str, str, float] | None) -> dict:
    folder = cfg.parent
    calls = folder / "calls.jsonl"
    began = time.monotonic()
    proc = net.editbatch("prod", "run", str(cfg))
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: [lines.append((time.monotonic(), b.decode(errors="replace")))
                                              for b in proc.stdout], daemon=True)
    reader.start()
    stop, results = threading.Event(), []
    threading.Thread(target=manifest_times, args=(folder / "out", stop, results), daemon=True).start()
    cut_at = restored_at = None
    if cut is not None:
        while not (calls.exists() and calls.read_text().count("\n") >= 6):
            time.sleep(0.05)
        cut_at = time.monotonic()
        net.cut(cut[1])
        time.sleep(cut[2])
        net.restore(cut[1])
        restored_at = time.monotonic()
    proc.wait()
    wall = time.monotonic() - began
    stop.set()
    reader.join(5)
    summary = json.loads((folder / "out" / "summary.json").read_text())
    counted = Counter(json.loads(x)["id"] for x in calls.read_text().splitlines())
    lost = next((t - cut_at for t, line in lines if cut_at and " lost" in line and t >= cut_at), None)
    first = next((t - restored_at for t in results if restored_at and t >= restored_at), None)
    return {"rc": proc.returncode, "wall": wall, "makespan": summary.get("makespan_s"), "ok": summary.get("ok"),
            "twice": sum(1 for n in counted.values() if n > 1), "lost": lost, "first_result": first,
            "cut_at": cut_at, "restored_at": restored_at}


def fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}s" if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    args = parse_args(argv)
    why = hostlib.why_not_available()
    if why:
        print(f"cannot build hosts here: {why}")
        return 2
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="editbatch-bench-hosts-") as tmp:
        root = Path(tmp)
        net = hostlib.Hosts(["redis", "prod", "a", "b", "c", "solo"])
        try:
            net.build()
            url = hostlib.start_redis(net, "redis", root / "redis")
            print(f"{args.items} items of {args.seconds}s, simulated model, 4 CPU workers\n")
            print("| layout | mode | wall | makespan | ok |\n|---|---|---|---|---|")
            for layout, placement in LAYOUTS.items():
                devices = [d for specs in placement.values() for d in specs]
                workers = [net.editbatch(host, "worker", "--config", str(config(root, "w", url, devices, "sync",
                                                                                  args)),
                                         "--device", spec, env={"EDITBATCH_BROKER": url},
                                         log=root / f"worker-{spec.replace(':', '-')}.log")
                           for host, specs in placement.items() for spec in specs]
                for mode in modes:
                    r = run_once(net, config(root, f"{layout[:3]}-{mode}", url, devices, mode, args), None)
                    print(f"| {layout} | {mode} | {fmt(r['wall'])} | {fmt(r['makespan'])} | {r['ok']} |")
                if layout == "three hosts":
                    cut_rows = []
                    for mode in modes:
                        for name, host, seconds in CUTS:
                            watch = presence_watch(net, url, "b-cpu0", root / f"watch-{mode}-{host}.log")
                            r = run_once(net, config(root, f"cut-{host}-{mode}", url, devices, mode, args),
                                         (name, host, seconds))
                            time.sleep(8 if host == "b" else 0.5)  # let b's record come back before reading
                            watch.terminate()
                            watch.wait()
                            back = [float(t) - r["restored_at"] for t, up in
                                    (x.split() for x in (root / f"watch-{mode}-{host}.log").read_text().splitlines())
                                    if up == "1" and float(t) >= r["restored_at"]]
                            cut_rows.append((name, seconds, mode, r, back[0] if back and host == "b" else None))
                for w in workers:
                    w.terminate()
                for w in workers:
                    w.wait(30)
            print("\n| cut | for | mode | worker reported lost | worker record back | first result after "
                  "the link is back | items computed twice | ok |\n|---|---|---|---|---|---|---|---|")
            for name, seconds, mode, r, back in cut_rows:
                print(f"| {name} | {seconds:.0f}s | {mode} | {fmt(r['lost'])} | {fmt(back)} | "
                      f"{fmt(r['first_result'])} | {r['twice']} | {r['ok']}/{args.items} |")
        finally:
            net.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
