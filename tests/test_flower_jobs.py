"""Jobs as a real Flower shows them (127.0.0.1, a free port, basic auth): a running job's counts in its task info
and on its task page (headless Chromium), a cancelled job REVOKED, a job with a failed item SUCCESS with its
counts, a job from `editbatch submit` listed too; a failed item's exception is one line.

Costs about 14 s on 2 cores (a coordinator with two workers, Flower, Chromium once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from editbatch.cluster.redis_server import free_port

from .conftest import REPO
from .jobs_helpers import flower_call, simulated_service, wait_state

AUTH = "ops:secret"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Flower:
    def __init__(self, broker: str, log):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "editbatch.celery_app", "flower",
                                      f"--port={self.port}", "--address=127.0.0.1", f"--basic-auth={AUTH}"],
                                     env={**os.environ, "EDITBATCH_BROKER": broker}, cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT)

    def call(self, path: str, body: dict | None = None):
        return flower_call(self.port, AUTH, path, body)

    def info(self, task_id: str) -> dict:
        try:
            return self.call(f"/api/task/info/{task_id}")
        except urllib.error.HTTPError:
            return {}  # not seen yet

    def wait_info(self, task_id: str, check, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        info = {}
        while time.monotonic() < deadline:
            info = self.info(task_id)
            if check(info):
                return info
            time.sleep(0.2)
        raise AssertionError(f"{task_id}: {info}")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with simulated_service(tmp_path_factory.mktemp("flower-jobs")) as svc:
        yield svc


@pytest.fixture(scope="module")
def flower(service):
    with (service.root / "flower.log").open("ab") as log:
        flower = Flower(service.url, log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if any(name.startswith("jobs@") for name in flower.call("/api/workers?refresh=1")):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        yield flower
    finally:
        flower.proc.terminate()
        flower.proc.wait(10)


def test_a_running_job_shows_its_counts_and_a_cancelled_one_is_revoked(service, flower, sample_image, tmp_path):
    config = yaml.safe_load(service.job_config("watched", 20, sample_image, seconds=1.5).read_text())
    job_id = flower.call("/api/task/send-task/editbatch.job", {"kwargs": {"config": config}})["task-id"]
    info = flower.wait_info(job_id, lambda i: i.get("state") == "PROGRESS" and
                            (i.get("result") or "").startswith("running: ") and "running: 0/" not in i["result"])
    assert info["name"] == "editbatch.job" and " ok, " in info["result"] and "not run" in info["result"]
    assert info["failed"] is None  # Celery's failure time, untouched by the counts
    chromium = os.path.exists(CHROMIUM)
    if chromium:
        dom = page(flower, job_id, tmp_path)
        assert "PROGRESS" in dom and "running: " in dom and "/20 done: " in dom, dom[-2000:]
        assert (tmp_path / "task-page.png").stat().st_size > 10_000
    assert service.cli("cancel", job_id).returncode == 0
    wait_state(service, job_id, ("cancelled",))
    revoked = flower.wait_info(job_id, lambda i: i.get("state") == "REVOKED")
    assert revoked["revoked"] is not None
    assert flower.call(f"/api/task/result/{job_id}")["state"] == "REVOKED"
    if not chromium:
        pytest.skip(f"{CHROMIUM} absent: the task page was not rendered (the API checks above passed)")


def test_a_job_with_a_failed_item_is_success_with_its_counts_and_the_item_fails_in_one_line(service, flower,
                                                                                            sample_image):
    config = yaml.safe_load(service.job_config("one-bad", 4, sample_image).read_text())
    config["model"]["params"]["fail_ids"] = ["item-002"]
    config["schedule"]["retries"] = 0
    job_id = flower.call("/api/task/send-task/editbatch.job", {"kwargs": {"config": config}})["task-id"]
    info = flower.wait_info(job_id, lambda i: i.get("state") == "SUCCESS")
    assert "'ok': 3" in info["result"] and "'failed': 1" in info["result"]
    result = flower.call(f"/api/task/result/{job_id}")["result"]
    assert result["ok"] == 3 and result["failed"] == 1 and result["state"] == "done"
    # The item's own task: FAILURE, and its exception is the error line, not the result dict.
    deadline, failed = time.monotonic() + 30, []
    while time.monotonic() < deadline and not failed:
        failed = [t for t in flower.call("/api/tasks?state=FAILURE").values()
                  if t.get("name") == "editbatch.edit" and "item=item-002" in (t.get("args") or "")]
        time.sleep(0.3)
    assert failed, "the failed item's task is not in Flower"
    assert failed[0]["exception"] == "ItemFailed(\"item-002: RuntimeError: simulated failure for item 'item-002'\")"


def test_a_job_submitted_from_the_cli_appears_in_flower(service, flower, sample_image):
    proc = service.cli("submit", str(service.job_config("from-cli", 3, sample_image)), "--id", "cli-seen", "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = flower.wait_info("cli-seen", lambda i: i.get("state") == "SUCCESS")
    assert info["name"] == "editbatch.job" and "config=from-cli" in info["kwargs"] and "'ok': 3" in info["result"]


def page(flower: Flower, job_id: str, folder) -> str:
    """The task page through headless Chromium: its DOM, and a PNG kept beside it."""
    url = f"http://{AUTH}@127.0.0.1:{flower.port}/task/{job_id}"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={folder / 'chromium'}", "--window-size=1280,1000"]
    subprocess.run([*common, f"--screenshot={folder / 'task-page.png'}", url], capture_output=True, timeout=60)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    (folder / "task-page.html").write_text(dom.stdout)
    return dom.stdout
