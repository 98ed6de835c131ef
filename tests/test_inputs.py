"""Hostile and careless input: paths outside the roots, decompression bombs, odd files, secrets in the open."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from editbatch.celery_app import make_app
from editbatch.cluster.redis_server import RedisServer
from editbatch.dataset import check_items, load_dataset
from editbatch.errors import ConfigError
from editbatch.imageio import ImageTooLarge, load_rgb
from editbatch.output_folder import create_output_dir
from editbatch.workers.roots import Roots, confine

from .conftest import REPO, read_run, run_cli, simple_rows, wait_gone, write_config, write_dataset


def config_for(tmp_path, dataset, output_dir, **cluster):
    return write_config(tmp_path / "c.yaml", name="t", dataset={"path": str(dataset)}, output_dir=str(output_dir),
                        model={"type": "simulated", "path": "sim", "params": {"seconds": 0.01}},
                        cluster={"broker": "auto", "devices": ["cpu"], **cluster})


# ---------------------------------------------------------------- the worker's roots


@pytest.fixture
def outside(tmp_path_factory):
    """A folder outside pytest's base temp dir, i.e. outside the shared cluster's roots."""
    folder = Path(tempfile.mkdtemp(prefix="editbatch-outside-", dir="/var/tmp"))
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "secret.png")
    yield folder
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def raw_task(url: str, payload: dict, report: str) -> dict:
    """Send one `editbatch.edit` task as any broker client could, and read what the worker reported."""
    from redis import Redis

    app = make_app(url)
    app.send_task("editbatch.edit", args=[{"report": report, "seed": 1, "instruction": "x", **payload}],
                  queue="cpu0").get(timeout=30, propagate=False)
    redis = Redis.from_url(url)
    try:
        # The worker also pushes "held"/"started" events there; the result is the message without "event".
        results = [json.loads(m) for m in redis.lrange(report, 0, -1) if "event" not in json.loads(m)]
        return results[0] if results else {}
    finally:
        redis.delete(report)
        redis.close()


def test_tasks_outside_the_roots_are_refused_and_the_worker_keeps_serving(sim_cluster, sim_run, tmp_path,
                                                                         sample_image, outside):
    url, report = sim_cluster["url"], "editbatch:run:test-roots:results"
    inside_out = tmp_path / "out"
    link = tmp_path / "link-out"
    (link / "images").parent.mkdir(parents=True)
    os.symlink(outside, link / "images")  # a folder inside the roots whose images/ leads outside
    cases = [
        ({"id": "write-out", "images": [str(sample_image)], "output_dir": str(outside)}, str(outside)),
        ({"id": "dotdot", "images": [str(sample_image)], "output_dir": f"{tmp_path}/../../../../var/tmp/"
                                                                       f"{outside.name}"}, "/../"),
        ({"id": "symlink", "images": [str(sample_image)], "output_dir": str(link)}, str(link)),
        ({"id": "read-out", "images": [str(outside / "secret.png")], "output_dir": str(inside_out)},
         str(outside / "secret.png")),
    ]
    for payload, named in cases:
        result = raw_task(url, payload, report)
        assert result["status"] == "failed", result
        assert named in result["error"] and "outside the worker's" in result["error"], result["error"]
        assert str(tmp_path.parents[1]) in result["error"]  # the roots are named
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"]  # nothing written outside
    assert not inside_out.exists()

    proc, manifest, summary = sim_run(4, mode="nosync")
    assert proc.returncode == 0 and summary["ok"] == 4, proc.stderr


def test_a_report_key_outside_the_namespace_is_refused(sim_cluster, tmp_path, sample_image):
    from redis import Redis

    url = sim_cluster["url"]
    app = make_app(url)
    result = app.send_task("editbatch.edit", queue="cpu0", args=[{
        "id": "x", "images": [str(sample_image)], "instruction": "x", "output_dir": str(tmp_path / "o"), "seed": 1,
        "report": "someone-else:queue"}]).get(timeout=30, propagate=False)
    assert isinstance(result, ValueError) and "outside namespace" in str(result)
    assert Redis.from_url(url).exists("someone-else:queue") == 0


def test_roots_compare_real_paths(tmp_path):
    (tmp_path / "root").mkdir()
    roots = Roots.of([tmp_path / "root"], [tmp_path / "root" / "out", tmp_path / "root"])
    assert roots.outputs == (str(tmp_path / "root"),)  # a root inside another adds nothing
    confine([tmp_path / "root" / "a.png"], tmp_path / "root" / "x" / "images" / "a.png", roots)
    for image, output in [(tmp_path / "rootless.png", tmp_path / "root" / "a.png"),  # prefix, not inside
                          (tmp_path / "root" / "a.png", tmp_path / "root" / ".." / "a.png")]:
        with pytest.raises(PermissionError, match="outside the worker's"):
            confine([image], output, roots)


def test_configured_roots_are_checked_before_the_run(tmp_path, sample_image):
    dataset = write_dataset(tmp_path / "data", simple_rows(2, sample_image))
    path = config_for(tmp_path, dataset, tmp_path / "out", output_roots=[str(tmp_path / "elsewhere")])
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2 and f"{path}: output_dir: " in proc.stderr and "outside cluster.output_roots" \
        in proc.stderr
    path = config_for(tmp_path, dataset, tmp_path / "out", input_roots=[str(tmp_path / "data")])
    proc = run_cli("validate", str(path))
    assert proc.returncode == 1 and "is outside cluster.input_roots" in proc.stdout
    path = config_for(tmp_path, dataset, tmp_path / "out", output_roots=["/"])
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2 and "cluster.output_roots" in proc.stderr and "system folders" in proc.stderr


# ---------------------------------------------------------------- decompression bombs


def one_bit_png(path: Path, width: int, height: int) -> Path:
    """A black 1-bit PNG written chunk by chunk: a 30000x30000 one is ~110 kB and never exists in memory."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed pixels
    squeeze = zlib.compressobj(9)
    block = row * 1000
    data = [squeeze.compress(block) for _ in range(height // 1000)]
    data += [squeeze.compress(row * (height % 1000)), squeeze.flush()]

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(data))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return one_bit_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 30000, 30000)


def test_a_decompression_bomb_is_invalid_in_validate_and_run(tmp_path, bomb, sample_image):
    assert bomb.stat().st_size < 200_000
    rows = simple_rows(2, sample_image) + [{"id": "bomb", "image": str(bomb), "instruction": "x"}]
    dataset = write_dataset(tmp_path / "data", rows)
    path = config_for(tmp_path, dataset, tmp_path / "out")
    proc = run_cli("validate", str(path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "3 items, 2 valid, 1 invalid" in proc.stdout
    assert "30000x30000 = 900,000,000 pixels, over dataset.max_pixels = 100,000,000" in proc.stdout

    proc = run_cli("run", str(path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    manifest, summary = read_run(tmp_path / "out")
    status = {r["id"]: (r["status"], r["error"]) for r in manifest}
    assert status["bomb"][0] == "invalid" and "image too large" in status["bomb"][1]
    assert status["item-000"] == status["item-001"] == ("ok", None)


def test_the_worker_refuses_to_decode_a_bomb_and_large_images_still_pass(tmp_path, bomb):
    with pytest.raises(ImageTooLarge, match="over dataset.max_pixels = 100,000,000"):
        load_rgb(bomb, 100_000_000)
    with pytest.raises(ImageTooLarge, match="30000x30000 = 900,000,000 pixels"):  # named, not PIL's bomb error
        load_rgb(bomb, 1000)
    big = one_bit_png(tmp_path / "big.png", 8192, 8192)
    items = load_dataset(write_dataset(tmp_path, [{"id": "big", "image": str(big), "instruction": "x"}]))
    assert check_items(items)[0].error is None  # 8192x8192 is a real image size, not an attack
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    assert load_rgb(tmp_path / "small.png", 1200).size == (40, 30)
    with pytest.raises(ImageTooLarge):
        load_rgb(tmp_path / "small.png", 1199)


# ---------------------------------------------------------------- files new users make


def test_a_csv_with_a_byte_order_mark_keeps_its_id_column(tmp_path, sample_image):
    path = tmp_path / "excel.csv"
    path.write_bytes("id,image,instruction\nfirst,{0},make it blue\n".format(sample_image).encode("utf-8-sig"))
    (item,) = load_dataset(path)
    assert item.id == "first" and item.instruction == "make it blue"
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(json.dumps({"id": "j", "image": str(sample_image), "instruction": "x"}).encode("utf-8-sig"))
    assert [i.id for i in load_dataset(jsonl)] == ["j"] and load_dataset(jsonl)[0].valid


@pytest.mark.parametrize("where, words", [
    ("{file}/below", "is a file, not a folder"),
    ("/proc/editbatch-x", "inside /proc"),
    ("/sys/editbatch-x", "inside /sys"),
    ("/", "system or home folder"),
    ("/usr", "system or home folder"),
    ("~", "system or home folder"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_output_dir_that_cannot_or_must_not_be_used_is_one_line(tmp_path, sample_image, where, words, command):
    (tmp_path / "a-file").write_text("x")
    output = os.path.expanduser(where.format(file=tmp_path / "a-file"))
    path = config_for(tmp_path, write_dataset(tmp_path / "data", simple_rows(1, sample_image)), output)
    proc = run_cli(command, str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"editbatch: error: {path}: output_dir: ") and words in lines[0]


def test_creating_the_output_dir_fails_as_a_config_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="output_dir: cannot create"):
        create_output_dir(tmp_path / "a-file" / "out", "c.yaml")


# ---------------------------------------------------------------- what a run leaves behind


def test_a_killed_producer_leaves_no_process_and_no_temp_folder(tmp_path, sample_image):
    temp = tmp_path / "temp"
    temp.mkdir()
    dataset = write_dataset(tmp_path / "data", simple_rows(40, sample_image))
    path = config_for(tmp_path, dataset, tmp_path / "out")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(path), "--set", "model.params.seconds=0.3"],
                            cwd=REPO, env={**os.environ, "TMPDIR": str(temp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "workers.json").exists():
        time.sleep(0.1)
    info = json.loads((out / "logs" / "cluster.json").read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_gone([info["redis_pid"], *info["workers"].values()], timeout=20) == []
    assert [p.name for p in temp.iterdir() if p.name.startswith("editbatch")] == []


# ---------------------------------------------------------------- the broker password


def secrets_in_the_open(password: str, folders: list[Path]) -> list[str]:
    """Files under `folders` and process command lines that show `password` or an unmasked redis URL."""
    unmasked = re.compile(r"redis://[^:/@\s]*:(?!\*)[^@\s]+@")
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                text = path.read_text(errors="replace")
                if password in text or unmasked.search(text):
                    found.append(str(path))
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if password in text:
            found.append(f"{cmdline}: {text[:200]}")
    return found


def test_the_broker_password_is_never_printed_or_stored(tmp_path, sample_image):
    redis = RedisServer()
    url = redis.start()
    out, logs = tmp_path / "out", tmp_path / "worker-logs"
    logs.mkdir()
    dataset = write_dataset(tmp_path / "data", simple_rows(3, sample_image))
    # The URL lives in the config file (readable by its owner only), not on any command line.
    path = config_for(tmp_path, dataset, out, broker=url, devices=["cpu4"], ready_timeout_s=60)
    path.chmod(0o600)
    with (logs / "worker-cpu4.log").open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "editbatch", "worker", "--config", str(path),
                                   "--device", "cpu4"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        proc = run_cli("run", str(path))
        assert proc.returncode == 0, proc.stderr
        during = secrets_in_the_open(redis.password, [])
    finally:
        worker.terminate()
        worker.wait(30)
        redis.stop()
    assert "transport:   redis://:**@" in (logs / "worker-cpu4.log").read_text()  # Celery's banner masks it
    assert "***@" in (out / "config.resolved.yaml").read_text()
    assert during == [] and secrets_in_the_open(redis.password, [out, logs]) == []
    assert redis.password not in proc.stdout + proc.stderr


def test_a_private_clusters_password_stays_out_of_the_run_folder(tmp_path, sample_image):
    path = config_for(tmp_path, write_dataset(tmp_path / "data", simple_rows(2, sample_image)), tmp_path / "out",
                      devices=["cpu", "cpu"])
    proc = run_cli("run", str(path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "logs" / "redis.log").exists()
    assert secrets_in_the_open("no password known here", [tmp_path / "out"]) == []
    assert not re.search(r"redis://[^:/@\s]*:(?!\*)[^@\s]+@", proc.stdout + proc.stderr)
