"""`seglab report`: one self-contained report.html for a real (tiny) training run, rendered by headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import assert_clean_failure, run_cli
from seglab.runtime.run_files import read_split
from seglab.viz.report import write_report

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


class PageParts(HTMLParser):
    """Tags, image sources, ids and link targets of a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.image_sources: list[str] = []
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.image_sources.append(attrs.get("src", ""))
        for key in ("href", "src", "action"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


@pytest.fixture(scope="module")
def report_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the session's trained run (so the shared folder stays as it was) with its report."""
    assert trained_run.result.rc == 0, trained_run.result.output
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(trained_run.run_dir, run_dir)
    result = run_cli("report", run_dir)
    assert result.rc == 0, result.output
    assert result.stdout.strip() == f"wrote {run_dir / 'report.html'}"
    return run_dir


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def run_chromium(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_report_is_one_self_contained_file(report_run):
    page = (report_run / "report.html").read_text(encoding="utf-8")
    parts = PageParts()
    parts.feed(page)
    assert "script" not in parts.tags and "link" not in parts.tags and "iframe" not in parts.tags
    assert parts.links == [], "the report must not point anywhere"
    assert "http://" not in page and "https://" not in page and "<style>" in page
    held_out = read_split(report_run)["val"]
    shown = 1 if len(held_out) == 1 else 2 * min(3, len(held_out) // 2)  # best and worst, or the only one
    assert len(parts.image_sources) == 1 + 4 * shown  # the curves, then image/truth/prediction/errors of each
    for source in parts.image_sources:
        assert source.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 32


def test_report_shows_curves_table_overlays_speed_environment_and_config(report_run):
    page = (report_run / "report.html").read_text(encoding="utf-8")
    parts = PageParts()
    parts.feed(page)
    assert {"curves", "metrics-table", "overlays"} <= parts.ids
    assert "alt='loss and metric curves'" in page
    table = page[page.index("id='metrics-table'"):page.index("</table>", page.index("id='metrics-table'"))]
    assert "<td>0</td>" in table and "<td>255</td>" in table and "mean" in table  # ISBI classes 0 and 255
    assert "the only validation image:" in page or ("best #1:" in page and "worst #1:" in page)
    for caption in ("image", "truth", "prediction", "errors"):
        assert f"<figcaption>{caption}</figcaption>" in page
    assert "images/s" in page and "total training time" in page
    import torch

    from seglab import __version__
    assert f">{__version__}</td>" in page and f">{torch.__version__}</td>" in page
    config = yaml.safe_load((report_run / "config.yaml").read_text())
    assert f"base_channels: {config['model']['base_channels']}" in page


def test_chromium_renders_the_report_from_disk(report_run, tmp_path):
    shot = tmp_path / "report.png"
    url = (report_run / "report.html").resolve().as_uri()
    done = run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20, "the screenshot is blank"
    assert (pixels < 200).mean() > 0.05, "too little drawn: the images did not render"
    dom = run_chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="metrics-table"' in dom.stdout and "<td>255</td>" in dom.stdout


def edit_split(run_dir: Path, edit) -> None:
    """Rewrite the run's split.json through edit(record) -> record."""
    path = run_dir / "split.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def test_best_and_worst_images_are_ranked_by_dice(report_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(report_run, run_dir)
    # hold out 3 of the 5 crops: best #1 and worst #1, predicted here (no training scores to rank by)
    edit_split(run_dir, lambda split: {"train": split["train"][2:], "val": split["val"] + split["train"][:2]})
    (run_dir / "best_images.json").unlink()
    page = write_report(run_dir).read_text(encoding="utf-8")
    dice = [float(page[i:page.index("</h3>", i)].rsplit("Dice ", 1)[1])
            for i in (page.index("best #1:"), page.index("worst #1:"))]
    assert dice[0] >= dice[1]
    assert page.count("<figcaption>truth</figcaption>") == 2


def test_the_images_are_ranked_by_the_validation_that_made_best_pt_when_it_scored_them(report_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(report_run, run_dir)
    held_out = [str(pair.image) for pair in read_split(report_run)["val"]]
    assert [row["image"] for row in json.loads((run_dir / "best_images.json").read_text())["images"]] == held_out
    edit_split(run_dir, lambda split: {"train": split["train"][3:], "val": split["val"] + split["train"][:3]})
    val = [str(pair.image) for pair in read_split(run_dir)["val"]]
    record = json.loads((run_dir / "best_images.json").read_text())
    record["images"] = [{"image": val[1], "mdice": 0.9}, {"image": val[3], "mdice": 0.1}]  # 2 of the 4
    (run_dir / "best_images.json").write_text(json.dumps(record))
    page = write_report(run_dir).read_text(encoding="utf-8")
    shown = {name for name in map(lambda path: Path(path).name, val) if f": {name} — Dice" in page}
    assert shown == {Path(val[1]).name, Path(val[3]).name}
    assert "best.pt on 2 validation images" in page
    assert "scored by the validation that made best.pt, 2 of the 4 held-out images" in page
    # scores of another checkpoint are not used: the report predicts its own sample
    record["step"] += 1
    (run_dir / "best_images.json").write_text(json.dumps(record))
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "best.pt on 4 validation images" in page and "scored by the validation" not in page


def test_report_of_a_run_whose_data_moved_still_has_curves_and_table(report_run, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(report_run, moved)
    gone = str(tmp_path / "gone")
    edit_split(moved, lambda split: {name: [[gone + "/" + Path(p).name for p in pair] for pair in pairs]
                                     for name, pairs in split.items()})
    (moved / "curves.png").unlink()  # re-plotted from metrics.jsonl
    page = write_report(moved).read_text(encoding="utf-8")
    assert "id='metrics-table'" in page and "alt='loss and metric curves'" in page
    assert "no predictions shown" in page and "gone" in page


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    result = run_cli("report", tmp_path)
    assert_clean_failure(result)
    assert "not a run folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


def test_the_epoch_table_keeps_every_evaluated_row():
    from seglab.viz.report import MAX_EPOCH_ROWS, _epochs_table

    rows = [{"epoch": k, "step": k, "train_loss": 1.0 / k, "lr": 1e-3, "images_per_s": 3.0, "time": float(k)}
            for k in range(1, 301)]
    for row in rows[6::7]:  # every 7th epoch validated, the best among them
        row.update(val_loss=0.5, val_dice=0.5 + row["epoch"] / 1000, val_iou=0.4, val_pixel_error=0.1)
    table = _epochs_table(rows)
    shown = [int(cell.split("<td>")[1].split("</td>")[0]) for cell in table.split("<tr>")[2:]]
    evaluated = [r["epoch"] for r in rows if "val_dice" in r]
    assert set(evaluated) <= set(shown)  # the best epoch (294) among them
    assert len(shown) <= MAX_EPOCH_ROWS + len(evaluated) and shown == sorted(shown)
