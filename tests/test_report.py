"""The run report: the page's links, items and counts, comparisons by item id, timeline.png, and a real browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from editbatch import ledger
from editbatch.imageio import load_rgb
from editbatch.report import write_report
from editbatch.report.gallery import CHUNK, PAGE
from editbatch.report.timeline import MAX_ITEM_BARS
from editbatch.report.thumbnails import SIZE, make_thumbnails, thumbnail_path, write_item_thumbnails

from .conftest import SIM_DEVICES, run_cli, simple_rows


class Page(HTMLParser):
    """What the tests read from report.html: links, item rows, their cells, timelines."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[str] = []
        self.rows: list[dict] = []
        self.svgs: list[dict] = []
        self.bars: list[list[str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])
        if tag == "tr" and "item" in (a.get("class") or "").split():
            self.rows.append({"id": a["data-id"], "status": a["data-status"].split(), "cells": [],
                              "partial": "partial" in a["class"], "key": a["id"]})
        elif tag == "td" and self.rows and "cell" in (a.get("class") or "").split():
            self.rows[-1]["cells"].append({"class": a["class"].split()[1], "links": []})
        elif tag in ("a", "img") and self.rows and self.rows[-1]["cells"] and (a.get("href") or a.get("src")):
            self.rows[-1]["cells"][-1]["links"].append(a.get("href") or a.get("src"))
        elif tag == "svg":
            self.svgs.append({"lanes": int(a["data-lanes"])})
            self.bars.append([])
        elif tag == "rect" and "bar" in (a.get("class") or "").split():
            self.bars[-1].append(a.get("class"))


def check_links(page: Page, html: Path) -> None:
    for link in page.links:
        if link.startswith("#"):
            continue
        assert not link.startswith(("http:", "https:", "//")), f"network link {link}"
        assert (html.parent / unquote(link)).exists(), f"broken link {link}"


def failing_rows(n: int, image: Path) -> list[dict]:
    rows = simple_rows(n, image)
    for k, row in enumerate(rows):
        row["category"] = ["colour", "style"][k % 2]
    rows.append({"id": "no-image", "image": str(image.parent / "nowhere.png"), "instruction": "x", "category": "style"})
    return rows


def test_report_of_a_run_links_every_file_and_counts_the_manifest(sim_run, sample_image):
    proc, manifest, summary = sim_run(rows=failing_rows(9, sample_image), mode="sync",
                                      params={"seconds": 0.02, "fail_ids": ["item-004"]})
    assert proc.returncode == 1, proc.stderr
    out = Path(proc.stdout.split("Outputs: ")[1].strip())
    assert "Report: " in proc.stdout  # written at the end of every run
    html = out / "report.html"
    page = Page(html.read_text())
    check_links(page, html)
    # Every item once, with the status the manifest has.
    assert sorted(r["id"] for r in page.rows) == sorted(r["id"] for r in manifest)
    by_id = {r["id"]: r for r in page.rows}
    for record in manifest:
        assert by_id[record["id"]]["status"] == [record["status"]]
        assert [c["class"] for c in by_id[record["id"]]["cells"]] == [record["status"]]
    text = html.read_text()
    assert f"{summary['items']}: {summary['ok']} ok, {summary['failed']} failed, {summary['invalid']} invalid" in text
    assert (summary["ok"], summary["failed"], summary["invalid"]) == (8, 1, 1)
    # Failed and invalid items are listed with their errors.
    assert "simulated failure" in text and "image file not found" in text
    # Grouped by category, with counts.
    assert 'data-category="colour"' in text and "colour (5)" in text and "style (5)" in text
    # The timeline: one lane per device, one bar per item that ran, the failed one marked.
    assert page.svgs == [{"lanes": len(SIM_DEVICES)}]
    ran = [r for r in manifest if r["started_at"] is not None]
    assert len(page.bars[0]) == len(ran) and sum("failed" in c for c in page.bars[0]) == 1
    # Thumbnails live under report/ and are reused by a second build.
    thumbs = sorted((out / "report" / "thumbs").iterdir())
    assert thumbs and all(t.stat().st_size < 20_000 for t in thumbs)
    before = {t: t.stat().st_mtime_ns for t in thumbs}
    write_report([out])
    assert {t: t.stat().st_mtime_ns for t in thumbs} == before


def test_workers_write_the_thumbnails_and_the_report_decodes_no_output(sim_run):
    proc, manifest, _ = sim_run(5, mode="sync", params={"seconds": 0.3})
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.split("Outputs: ")[1].strip())
    ok = [r for r in manifest if r["status"] == "ok"]
    assert len(ok) == 5
    thumbs = {r["id"]: thumbnail_path(out, out / r["output"]) for r in ok}
    last_batch = max(r["batch"] for r in ok)
    last_report = max(r["reported_at"] for r in ok)
    for record in ok:
        thumb = thumbs[record["id"]]
        assert ledger.record_path(out, record["id"]).is_file()
        if record["batch"] < last_batch:
            # Made by the worker just after it reported the item, while the next batch's 0.3 s edits ran:
            # before the run's last result, so before the run's report could make it.
            assert thumb.stat().st_mtime <= last_report
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and max(im.size) <= SIZE
        # The output no longer decodes: a report that needed it could not make its thumbnail.
        image = out / record["output"]
        image.write_bytes(b"not a png")
        os.utime(image, (thumb.stat().st_mtime - 60,) * 2)
    before = {t: t.stat().st_mtime_ns for t in thumbs.values()}
    write_report([out])
    assert {t: t.stat().st_mtime_ns for t in before} == before
    rows = "".join(p.read_text() for p in (out / "report").rglob("chunk-*.js"))
    assert all(t.name in rows for t in thumbs.values())


def test_a_worker_input_thumbnail_is_the_one_the_report_uses(tmp_path, sample_image):
    run_dir = tmp_path / "run"
    output = run_dir / "images" / "a.png"
    output.parent.mkdir(parents=True)
    image = Image.new("RGB", (640, 320), (10, 200, 10))
    image.save(output)
    write_item_thumbnails(run_dir, output, image, [(sample_image, load_rgb(sample_image, 10**6))])
    made = {p: thumbnail_path(run_dir, p) for p in (output, sample_image)}
    before = {t: t.stat().st_mtime_ns for t in made.values()}
    with Image.open(made[output]) as im:
        assert im.size == (SIZE, SIZE // 2)
    assert make_thumbnails([output, sample_image], run_dir) == made
    assert {t: t.stat().st_mtime_ns for t in made.values()} == before  # up to date: not decoded again
    # Best effort: a folder that cannot hold thumbnails does not fail the item.
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the run folder should be")
    write_item_thumbnails(blocked, blocked / "images" / "a.png", image, [(sample_image, image)])


def test_workers_import_the_thumbnails_without_the_report_page():
    code = ("import sys, editbatch.tasks.edit; "
            "print(sorted(m for m in ('jinja2', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_timeline_png_has_one_lane_per_device(sim_run):
    proc, manifest, summary = sim_run(7, mode="balanced")
    assert proc.returncode == 0, proc.stderr
    png = Path(proc.stdout.split("Outputs: ")[1].strip()) / "timeline.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] == 1000 and 150 <= im.size[1] <= 400
        assert im.info["Description"] == "lanes: " + ", ".join(summary["devices"])


def test_comparison_pairs_items_by_id_and_marks_partial_ones(sim_run, sample_image, tmp_path):
    rows = simple_rows(8, sample_image)
    _, first, _ = sim_run(rows=rows, mode="sync")
    # The second run: other order, one item left out, one new one.
    second_rows = list(reversed(rows[1:])) + [{"id": "extra", "image": str(sample_image), "instruction": "new"}]
    _, second, _ = sim_run(rows=second_rows, mode="balanced")
    a, b = tmp_path / "out-sync", tmp_path / "out-balanced"
    html = tmp_path / "compare" / "report.html"
    proc = run_cli("report", str(a), str(b), "-o", str(html))
    assert proc.returncode == 0, proc.stderr
    page = Page(html.read_text())
    check_links(page, html)
    ids = [r["id"] for r in page.rows]
    assert sorted(ids) == sorted({r["id"] for r in first} | {r["id"] for r in second}) and len(ids) == len(set(ids))
    for row in page.rows:
        assert len(row["cells"]) == 2
        for cell, run in zip(row["cells"], (a, b)):
            if cell["class"] == "missing":
                continue
            targets = {(html.parent / unquote(link)).resolve() for link in cell["links"]}
            assert (run / "images" / f"{row['id']}.png").resolve() in targets  # this run's own output
    partial = {r["id"]: [c["class"] for c in r["cells"]] for r in page.rows if r["partial"]}
    assert partial == {"item-000": ["ok", "missing"], "extra": ["missing", "ok"]}
    assert len(Page(html.read_text()).svgs) == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium): "
                                              "the page is not rendered in a browser here")
def test_page_renders_in_headless_chromium_without_console_errors(sim_run, sample_image, tmp_path):
    proc, manifest, _ = sim_run(rows=failing_rows(6, sample_image), mode="sync",
                                params={"seconds": 0.02, "fail_ids": ["item-001"]})
    html = Path(proc.stdout.split("Outputs: ")[1].strip()) / "report.html"
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1400",
              "--enable-logging=stderr", "--v=0", "--allow-file-access-from-files"]
    render = subprocess.run(common + [f"--screenshot={shot}", html.as_uri()], capture_output=True, text=True,
                            timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000, render.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 1400)
    dom = subprocess.run(common + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in (render.stderr + dom.stderr).splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    # The filter script ran: it fills in the item count.
    assert f'id="f-count" class="muted">{len(manifest)} items</span>' in dom.stdout


def synthetic_run(folder: Path, n: int, devices: int = 4) -> Path:
    """A finished run folder of `n` items written directly (no images: the report links none)."""
    folder.mkdir(parents=True)
    t0 = 1_700_000_000.0
    with (folder / "manifest.jsonl").open("w") as fh:
        for i in range(n):
            start = t0 + (i // devices) * 0.01
            status = "failed" if i in (5, 102, 199) else "ok"
            fh.write(json.dumps({"id": f"item-{i:05d}", "index": i, "status": status, "output": None,
                                 "device": f"gpu{i % devices}", "started_at": start, "finished_at": start + 0.008,
                                 "error": "boom" if status != "ok" else None, "inputs": [],
                                 "category": ("add", "color", "style")[i % 3], "instruction": f"make number {i} nicer"})
                     + "\n")
    (folder / "summary.json").write_text(json.dumps({
        "mode": "nosync", "items": n, "devices": [f"gpu{d}" for d in range(devices)], "name": "synthetic",
        "run_id": f"r{n}", "started_at": t0, "makespan_s": n * 0.01 / devices, "efficiency": None, "overhead": None,
        "not_applicable": "0.00 ms of work per task"}))
    return folder


def gallery_rows(html: Path) -> tuple[list[dict], list[list]]:
    """The rows of every chunk beside `html` (parsed as the page would show them) and the index's entries."""
    items = html.with_suffix("") / "items"
    rows = []
    for chunk in sorted(items.glob("chunk-*.js")):
        text = chunk.read_text()
        rows += Page("".join(json.loads(text[text.index(",") + 1:text.rindex(")")]))).rows
    text = (items / "index.js").read_text()
    return rows, json.loads(text[text.index("[", text.index("}")):text.rindex(")")])


def test_a_large_report_is_paged_and_its_page_does_not_grow_with_the_items(tmp_path):
    small = write_report([synthetic_run(tmp_path / "small", 1500)])
    large = write_report([synthetic_run(tmp_path / "large", 3000)])
    assert abs(large.html.stat().st_size - small.html.stat().st_size) < 2_000  # the timeline is drawn per slice
    for result, n in ((small, 1500), (large, 3000)):
        page = Page(result.html.read_text())
        assert len(page.rows) == PAGE  # the first page: the first category in input order
        assert [r["id"] for r in page.rows] == [f"item-{i:05d}" for i in range(0, 3 * PAGE, 3)]
        rows, index = gallery_rows(result.html)
        assert sorted(r["id"] for r in rows) == [f"item-{i:05d}" for i in range(n)]  # every item once, in chunks
        assert len(list((result.html.with_suffix("") / "items").glob("chunk-*.js"))) == -(-n // CHUNK)
        assert len(index) == n and {e[2] for e in index} == {"ok", "failed"}
        assert len(page.bars[0]) <= 4 * MAX_ITEM_BARS  # 4 lanes, drawn per slice of time
    text = large.html.read_text()
    assert "n/a (0.00 ms of work per task)" in text and "Failed, invalid and not-run items (3)" in text


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")
def test_a_multi_page_report_searches_and_pages_over_every_item_in_headless_chromium(tmp_path):
    html = write_report([synthetic_run(tmp_path / "run", 2000)]).html
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
              "--virtual-time-budget=10000", "--dump-dom"]
    # A search for an item on the last page: the index finds it, its chunk is loaded and shown.
    found = subprocess.run(common + [html.as_uri() + "#q=item-01997"], capture_output=True, text=True, timeout=120)
    shown = Page(found.stdout).rows
    assert [r["id"] for r in shown] == ["item-01997"], found.stderr[-2000:]
    assert 'id="f-count" class="muted">1 of 2000 items shown</span>' in found.stdout
    # A link to a row on a later page (as a timeline bar makes) opens that page.
    linked = subprocess.run(common + [html.as_uri() + "#item-1999"], capture_output=True, text=True, timeout=120)
    ids = [r["id"] for r in Page(linked.stdout).rows]
    # item 1999 is the last of category color (add, color, style): row 1334 of the gallery
    assert "item-01999" in ids and len(ids) <= PAGE and 'page 14 of 20' in linked.stdout
    console = [line for line in (found.stderr + linked.stderr).splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
