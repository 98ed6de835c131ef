"""The compose file's judge service, played as a local process: it reads configs/judge.yaml as written
(roots, queue, key variable), reaches Redis with the compose password, and judges an `editbatch score`
sent from the coordinator's container. Two translations beyond the rehearsal's: the judge's URL points at
the fake server on 127.0.0.1, and the template is one the fake server reads item ids from."""

from __future__ import annotations

import json
import shutil

import yaml
from PIL import Image

from editbatch.redisconn import connect

from .conftest import read_jsonl, write_dataset
from .fake_judge import FakeJudge
from .test_compose_rehearsal import _pings, wait_for


def test_the_judge_service_judges_a_score_sent_from_the_coordinator(compose, sample_image):
    with FakeJudge() as server:
        config_path = compose.path("/workspace/configs/judge.yaml")
        config = yaml.safe_load(config_path.read_text())
        template = compose.path("/workspace/data/template.txt")
        template.write_text("Grade the edit id={id} ({instruction}). Answer JSON only.\n")
        config["evaluate"]["judge"].update(url=server.url, template="/workspace/data/template.txt")
        config_path.write_text(compose.local(yaml.safe_dump(config), compose.services["judge"]))

        compose.start_redis()
        broker = compose.environment("judge")["EDITBATCH_BROKER"]
        redis = connect(broker)
        wait_for("redis", lambda: _pings(redis), compose, timeout=20)
        compose.start("judge")

        def judge_ready():
            records = [json.loads(redis.get(k) or "{}") for k in redis.scan_iter("editbatch:worker:judge-*")]
            return any(r.get("state") == "ready" for r in records)

        wait_for("the judge worker serves", judge_ready, compose, timeout=60)
        image = compose.path("/workspace/data/red.png")
        shutil.copy(sample_image, image)
        outputs = compose.path("/workspace/runs/outs")
        outputs.mkdir()
        ids = [f"c{n}" for n in range(4)]
        for n, item in enumerate(ids):
            Image.new("RGB", (24, 24), (n * 40, 80, 120)).save(outputs / f"{item}.png")
        write_dataset(compose.path("/workspace/data"), [
            {"id": i, "image": "/workspace/data/red.png", "instruction": f"make {i} warmer", "task_type": "color"}
            for i in ids])
        dataset = compose.path("/workspace/data/dataset.jsonl")
        dataset.write_text(dataset.read_text().replace("/workspace/data", str(compose.path("/workspace/data"))))
        scored = compose.exec("coordinator", "editbatch", "score", "/workspace/runs/outs", "--dataset",
                              "/workspace/data/dataset.jsonl", "--config", "/workspace/configs/judge.yaml")
        redis.close()
    assert scored.returncode == 0, scored.stdout + scored.stderr + compose.log("judge")
    rows = read_jsonl(outputs / "scores.jsonl")
    assert {r["scores"]["judge"]["status"] for r in rows} == {"ok"} and len(rows) == len(ids)
    assert all(server.count(i) == 1 for i in ids)
    assert "judge-" in compose.log("judge") and " ok" in compose.log("judge")  # asked by the service, not the command
