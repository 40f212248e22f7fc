"""Every `seglab` command run as a user runs it: a fresh process, real ISBI files, a tiny model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import seglab
from conftest import TINY_FLAGS, TRAINED_EPOCHS, assert_clean_failure, copy_isbi_crop
from seglab.data.classmap import ClassMap
from seglab.data.io import read_image, read_mask
from seglab.inference.predictor import Predictor
from seglab.models import UNet
from seglab.runtime.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint

METRIC_KEYS = {"train_loss", "val_loss", "val_dice", "val_iou", "lr"}


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity: other tools reading --json output would choke on them."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def bad_mask_folder(tmp_path_factory) -> Path:
    """Two real ISBI pairs, one of whose masks was exported as a gray gradient picture."""
    root = tmp_path_factory.mktemp("bad_mask")
    for stem in ("00", "01"):
        copy_isbi_crop("train", "images", stem, root / "images", (0, 0, 64, 64))
        copy_isbi_crop("train", "masks", stem, root / "masks", (0, 0, 64, 64))
    gradient = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    Image.fromarray(gradient).save(root / "masks" / "01.png")
    return root


@pytest.fixture(scope="module")
def predict_inputs(tmp_path_factory) -> Path:
    """Three real ISBI test slices, 96x80 crops, in a folder."""
    root = tmp_path_factory.mktemp("predict_inputs")
    for stem in ("00", "01", "02"):
        copy_isbi_crop("test", "images", stem, root, (0, 0, 96, 80))
    return root


# ---- the command itself -----------------------------------------------------------------------------
def test_python_m_seglab_help_lists_the_commands(run_seglab):
    rc, out, err = run_seglab("--help")
    assert rc == 0, err
    for command in ("check", "train", "predict", "evaluate", "demo"):
        assert command in out


def test_unknown_command_is_one_line_with_the_commands(run_seglab):
    rc, out, err = run_seglab("trian")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "invalid choice: 'trian'" in err and "'train'" in err and "seglab -h" in err


# ---- check ----------------------------------------------------------------------------------------
def test_check_describes_the_bundled_isbi_data(run_seglab, isbi_dir):
    rc, out, err = run_seglab("check", isbi_dir)
    assert rc == 0, out + err
    assert "train: 30 image/mask pairs" in out
    assert "test: 30 images without masks" in out
    assert "512x512" in out
    assert "mask values: [0, 255]" in out
    assert "class map: 0 -> 0" in out and "255 -> 1" in out
    assert out.strip().endswith("ok")


def test_check_names_the_bad_mask_and_exits_1(run_seglab, bad_mask_folder):
    result = run_seglab("check", bad_mask_folder)
    assert_clean_failure(result)
    assert str(Path("masks") / "01.png") in result.output
    assert "distinct values" in result.output


def test_check_lists_unpaired_files_and_exits_1(run_seglab, tmp_path):
    for stem in ("00", "01", "02"):
        copy_isbi_crop("train", "images", stem, tmp_path / "images", (0, 0, 32, 32))
    for stem in ("00", "01", "03"):
        copy_isbi_crop("train", "masks", stem, tmp_path / "masks", (0, 0, 32, 32))
    result = run_seglab("check", tmp_path)
    assert_clean_failure(result)
    assert "2 image/mask pairs" in result.stdout
    assert str(Path("images") / "02.png") in result.stdout
    assert str(Path("masks") / "03.png") in result.stdout


def test_check_of_a_missing_folder_exits_1_without_traceback(run_seglab, tmp_path):
    result = run_seglab("check", tmp_path / "does-not-exist")
    assert_clean_failure(result)
    assert "does-not-exist" in result.output


# ---- train ----------------------------------------------------------------------------------------
def test_train_writes_a_complete_run_folder(trained_run):
    r = trained_run.result
    assert r.rc == 0, r.stdout + r.stderr
    run_dir = trained_run.run_dir
    for name in ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "curves.png"):
        assert (run_dir / name).is_file(), f"{name} missing from {sorted(p.name for p in run_dir.iterdir())}"
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard events file"
    assert not list(run_dir.glob(".*.tmp")), "temporary checkpoint files left behind"
    with Image.open(run_dir / "curves.png") as curves:
        assert curves.size[0] > 100 and curves.size[1] > 100


def test_train_ends_saying_what_the_run_made_and_the_next_commands(trained_run):
    rows = metrics_rows(trained_run.run_dir)
    best = max(rows, key=lambda row: row["val_dice"])
    run_dir = trained_run.run_dir
    tail = trained_run.result.stdout.strip().splitlines()[-6:]
    assert tail == [
        f"run {run_dir}: best val_dice {best['val_dice']:.4f} at epoch {best['epoch']}, step {best['step']}; "
        f"all {TRAINED_EPOCHS} epochs trained",
        f"  best.pt  {run_dir / 'best.pt'}",
        f"  last.pt  {run_dir / 'last.pt'}",
        f"  report   {run_dir / 'report.html'}",
        f"  next:    seglab predict -m {run_dir / 'best.pt'} -i IMAGES -o OUT",
        f"           seglab serve -m {run_dir / 'best.pt'}"]
    assert repr(seglab.Run.open(run_dir)).splitlines() == tail


def test_train_logs_one_json_line_per_epoch(trained_run):
    rows = metrics_rows(trained_run.run_dir)
    assert [row["epoch"] for row in rows] == list(range(1, TRAINED_EPOCHS + 1))
    for row in rows:
        assert METRIC_KEYS <= set(row), f"missing {METRIC_KEYS - set(row)}"
        assert np.isfinite([row[k] for k in METRIC_KEYS]).all()
        assert 0.0 <= row["val_dice"] <= 1.0 and 0.0 <= row["val_iou"] <= 1.0


def test_train_flags_override_the_yaml_config(trained_run):
    saved = yaml.safe_load((trained_run.run_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == TRAINED_EPOCHS        # flag over YAML's 3
    assert saved["model"]["base_channels"] == 4              # flag over YAML's 8
    assert saved["model"]["depth"] == 2                      # from the YAML
    assert saved["train"]["learning_rate"] == 0.01           # from the YAML
    assert saved["data"]["crop"] == [64, 64]                 # from the YAML
    payload = torch.load(trained_run.best, map_location="cpu", weights_only=True)
    assert payload["model"]["kwargs"]["base_channels"] == 4 and payload["model"]["kwargs"]["depth"] == 2


def test_training_loss_falls(trained_run):
    rows = metrics_rows(trained_run.run_dir)
    assert len(rows) >= 6
    first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
    assert last < 0.95 * first, f"train_loss {first:.4f} -> {last:.4f} did not fall"
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_train_on_a_folder_with_a_bad_mask_exits_1_without_traceback(run_seglab, bad_mask_folder, tmp_path):
    result = run_seglab("train", bad_mask_folder, "--out", tmp_path / "run", "--epochs", 1,
                        "--base-channels", 4, "--depth", 2, "--crop", 64, *TINY_FLAGS, cwd=tmp_path)
    assert_clean_failure(result)
    assert "01.png" in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_refuses_an_eval_interval_it_cannot_read(run_seglab, isbi_subset, tmp_path):
    result = run_seglab("train", isbi_subset, "--out", tmp_path / "run", "--eval-every", "10 minutes",
                        *TINY_FLAGS, cwd=tmp_path)
    assert_clean_failure(result)
    assert "--eval-every" in result.stderr and "500 steps" in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_resume_continues_a_finished_run_for_more_epochs(run_seglab, checkpoint, trained_run, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(trained_run.run_dir, run_dir)
    before = load_checkpoint(run_dir / "last.pt")
    result = run_seglab("train", "--resume", run_dir, "--epochs", TRAINED_EPOCHS + 2, *TINY_FLAGS, cwd=tmp_path)
    assert result.rc == 0, result.output
    rows = metrics_rows(run_dir)
    assert [row["epoch"] for row in rows] == list(range(1, TRAINED_EPOCHS + 3))
    after = load_checkpoint(run_dir / "last.pt")
    assert after["epoch"] == before["epoch"] + 2
    assert after["step"] > before["step"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == TRAINED_EPOCHS + 2
    # The original run is untouched.
    assert len(metrics_rows(trained_run.run_dir)) == TRAINED_EPOCHS


def test_train_into_an_existing_run_folder_is_refused(run_seglab, checkpoint, trained_run, isbi_subset, tmp_path):
    result = run_seglab("train", isbi_subset, "--out", trained_run.run_dir, "--epochs", 1,
                        "--base-channels", 4, "--depth", 2, *TINY_FLAGS, cwd=tmp_path)
    assert_clean_failure(result)
    assert "--resume" in result.stderr
    assert len(metrics_rows(trained_run.run_dir)) == TRAINED_EPOCHS


# ---- checkpoints ------------------------------------------------------------------------------------
def test_checkpoint_loads_with_weights_only(checkpoint):
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert payload["format"] == "seglab-checkpoint"
    assert payload["model"]["name"] == "unet"
    assert payload["class_map"]["values"] == [0, 255]
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    last = torch.load(checkpoint.parent / "last.pt", map_location="cpu", weights_only=True)
    assert "train_state" in last and "optimizer" in last["train_state"]


def test_checkpoint_round_trip_predicts_what_the_in_memory_model_predicts(tmp_path):
    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=1, base_channels=4, depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # move weights and BatchNorm statistics away from their initial values
        loss = model(torch.randn(2, 1, 32, 32)).sigmoid().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    kwargs = {"in_channels": 1, "num_classes": 1, "base_channels": 4, "depth": 2, "up": "transpose",
              "padding": "same", "batch_norm": True}
    payload = make_checkpoint(model, "unet", kwargs, ClassMap.from_values([0, 255]),
                              {"channels": 1, "scale": 1.0, "normalization": "per_image", "threshold": 0.5})
    path = save_checkpoint(payload, tmp_path / "model.pt")
    rebuilt = model_from_checkpoint(torch.load(path, map_location="cpu", weights_only=True)).eval()
    predictor = Predictor.from_file(path, "cpu")
    x = torch.randn(1, 1, 45, 37, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(rebuilt(x), expected)
        assert torch.equal(predictor.model(x), expected)
    image = read_image(Path(__file__).resolve().parents[1] / "data" / "isbi2012" / "test" / "images" / "05.png")
    np.testing.assert_array_equal(predictor.predict(image).mask,
                                  Predictor(model, ClassMap.from_values([0, 255]), payload["preprocess"]
                                            ).predict(image).mask)


@pytest.fixture(scope="module")
def predicted_file(run_seglab, checkpoint, predict_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_file") / "OUT.png"
    result = run_seglab("predict", "-m", checkpoint, "-i", predict_inputs / "00.png", "-o", out, "--device", "cpu")
    return result, out


def test_cli_predict_equals_predictor_predict(predicted_file, checkpoint, predict_inputs):
    result, out = predicted_file
    assert result.rc == 0, result.output
    expected = Predictor.from_file(checkpoint, "cpu").predict(read_image(predict_inputs / "00.png")).mask
    np.testing.assert_array_equal(read_mask(out), expected)


# ---- predict --------------------------------------------------------------------------------------
def test_predict_one_file_writes_a_mask_of_its_size_in_the_users_values(predicted_file, predict_inputs):
    result, out = predicted_file
    assert result.rc == 0, result.output
    mask = read_mask(out)
    assert mask.shape == read_image(predict_inputs / "00.png").shape[:2]
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert sorted(p.name for p in out.parent.iterdir()) == ["OUT.png"]


def test_predict_folder_writes_a_mask_and_a_figure_per_image(run_seglab, checkpoint, predict_inputs, tmp_path):
    out = tmp_path / "outdir"
    result = run_seglab("predict", "-m", checkpoint, "-i", predict_inputs, "-o", out, "--viz", "--device", "cpu")
    assert result.rc == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in ("00", "01", "02") for kind in ("mask", "viz"))
    for stem in ("00", "01", "02"):
        assert read_mask(out / f"{stem}_mask.png").shape == (80, 96)
        with Image.open(out / f"{stem}_viz.png") as figure:
            assert figure.size[0] > 96  # a figure, not a copy of the mask


def test_predict_no_save_writes_no_masks_but_still_overlays(run_seglab, checkpoint, predict_inputs, tmp_path):
    out = tmp_path / "outdir"
    result = run_seglab("predict", "-m", checkpoint, "-i", predict_inputs, "-o", out, "-n", "--overlay",
                        "--device", "cpu")
    assert result.rc == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["00_overlay.png", "01_overlay.png", "02_overlay.png"]
    overlay = read_image(out / "00_overlay.png")
    assert overlay.shape == (80, 96, 3)
    assert not list(predict_inputs.glob("*_mask.png")), "masks written beside the inputs"


@pytest.mark.parametrize("threshold,value", [("0.0", 255), ("1.0", 0)])
def test_predict_threshold_extremes_give_uniform_masks_in_user_values(run_seglab, checkpoint, predict_inputs,
                                                                      tmp_path, threshold, value):
    out = tmp_path / "t.png"
    result = run_seglab("predict", "-m", checkpoint, "-i", predict_inputs / "01.png", "-o", out,
                        "-t", threshold, "--device", "cpu")
    assert result.rc == 0, result.output
    mask = read_mask(out)
    assert mask.shape == (80, 96)
    assert set(np.unique(mask).tolist()) == {value}


def test_predict_at_half_scale_returns_the_inputs_size(run_seglab, checkpoint, tmp_path):
    source = copy_isbi_crop("test", "images", "03", tmp_path, (10, 20, 111, 97), name="odd.png")  # 101x77
    out = tmp_path / "odd_out.png"
    result = run_seglab("predict", "-m", checkpoint, "-i", source, "-o", out, "-s", "0.5", "--device", "cpu")
    assert result.rc == 0, result.output
    mask = read_mask(out)
    assert mask.shape == (77, 101)
    assert set(np.unique(mask).tolist()) <= {0, 255}


def test_predict_skips_a_corrupt_file_and_writes_the_good_ones(run_seglab, checkpoint, tmp_path):
    inputs = tmp_path / "in"
    for stem in ("00", "02"):
        copy_isbi_crop("test", "images", stem, inputs, (0, 0, 64, 64))
    good = (inputs / "00.png").read_bytes()
    (inputs / "01.png").write_bytes(good[: len(good) // 2])  # truncated download
    out = tmp_path / "out"
    result = run_seglab("predict", "-m", checkpoint, "-i", inputs, "-o", out, "--device", "cpu")
    assert_clean_failure(result)
    assert sorted(p.name for p in out.iterdir()) == ["00_mask.png", "02_mask.png"]
    assert "1 of 3 inputs skipped" in result.stderr
    assert str(inputs / "01.png") in result.stderr


# ---- evaluate -------------------------------------------------------------------------------------
def test_evaluate_json_gives_per_image_and_mean_scores(run_seglab, checkpoint, isbi_subset):
    result = run_seglab("evaluate", "-m", checkpoint, isbi_subset, "--json", "--device", "cpu")
    assert result.rc == 0, result.output
    report = strict_json(result.stdout)
    classes = report["classes"]
    assert len(classes) == 2
    assert [Path(row["image"]).name for row in report["images"]] == [f"{i:02d}.png" for i in range(5)]
    for row in report["images"] + [report["mean"]]:
        assert set(row["dice"]) == set(classes) and set(row["iou"]) == set(classes)
        assert 0.0 <= row["pixel_error"] <= 1.0
        for name in classes:
            assert 0.0 <= row["dice"][name] <= 1.0 and 0.0 <= row["iou"][name] <= row["dice"][name] + 1e-9
    assert report["mean"]["pixel_error"] == pytest.approx(
        np.mean([row["pixel_error"] for row in report["images"]]))


def test_evaluate_prints_a_row_per_class_and_images_on_request(run_seglab, checkpoint, isbi_subset):
    result = run_seglab("evaluate", "-m", checkpoint, isbi_subset, "--device", "cpu")
    assert result.rc == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["class", "Dice", "IoU", "pixels"]
    assert [line.split()[0] for line in lines[1:4]] == ["0", "255", "mean"]  # classes named by their values
    assert "5 images" in result.stdout and not any(line.startswith("00.png") for line in lines)
    per_image = run_seglab("evaluate", "-m", checkpoint, isbi_subset, "--device", "cpu", "--per-image")
    rows = [line.split()[0] for line in per_image.stdout.splitlines() if line.endswith(tuple("0123456789"))]
    assert [r for r in rows if r.endswith(".png")] == [f"{i:02d}.png" for i in range(5)]


# ---- demo -----------------------------------------------------------------------------------------
@pytest.fixture
def small_isbi(tmp_path) -> Path:
    """The bundled layout, cut down so the demo fits the test budget: train slices 00-03 (256x256, the
    CPU crop size) and the held-out 25-29 (128x128), and all 30 test slices (128x128 crops)."""
    root = tmp_path / "isbi2012"
    for stem in ["00", "01", "02", "03"] + [f"{i}" for i in range(25, 30)]:
        box = (0, 0, 256, 256) if int(stem) < 25 else (0, 0, 128, 128)
        copy_isbi_crop("train", "images", stem, root / "train" / "images", box)
        copy_isbi_crop("train", "masks", stem, root / "train" / "masks", box)
    for i in range(30):
        copy_isbi_crop("test", "images", f"{i:02d}", root / "test" / "images", (0, 0, 128, 128))
    return root


@pytest.mark.slow
def test_demo_trains_predicts_and_summarises(run_seglab, small_isbi, tmp_path):
    out = tmp_path / "demo"
    result = run_seglab("demo", "--time-budget", 3, "--out", out, "--device", "cpu", "--no-progress",
                        cwd=tmp_path, env={"SEGLAB_DATA": str(small_isbi)}, timeout=600)
    assert result.rc == 0, result.output
    masks = sorted(p.name for p in (out / "predictions").iterdir())
    assert masks == [f"{i:02d}_mask.png" for i in range(30)]
    assert set(np.unique(read_mask(out / "predictions" / "07_mask.png")).tolist()) <= {0, 255}
    summary = strict_json((out / "demo_summary.json").read_text())
    assert 0.0 <= summary["pixel_error"] <= 1.0
    assert 0.0 <= summary["membrane_dice"] <= 1.0
    assert summary["held_out"] == [f"{i}" for i in range(25, 30)]
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml", "curves.png", "evaluation.json"):
        assert (out / name).is_file(), name
