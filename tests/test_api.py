"""The Python API as users call it: seglab.train / load / evaluate / check, and one evaluation path."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import seglab
from conftest import ISBI, SUBPROCESS_ENV, assert_clean_failure, copy_isbi_crop, run_cli, run_group
from seglab.errors import ConfigError, DataError, SeglabError

QUIET = lambda *args, **kwargs: None  # noqa: E731
TINY = dict(base_channels=4, depth=2, batch_size=4, augment="none", device="cpu", progress=False, log=QUIET)
HELD_OUT = [f"{i:02d}" for i in range(25, 30)]


def _last_row(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


# ---- one evaluation path: the metrics row equals seglab.evaluate --------------------------------
def test_val_scores_equal_evaluate_of_best_pt_on_isbi_at_half_scale(tmp_path):
    run = seglab.train(ISBI, scale=0.5, crop=128, epochs=1, val_files=HELD_OUT, out=tmp_path / "run", **TINY)
    assert [p.image.stem for p in run.validation_pairs] == HELD_OUT
    row = _last_row(run.run_dir)
    scores = seglab.evaluate(run.best_checkpoint, run.validation_pairs, device="cpu")
    assert abs(row["val_dice"] - scores.pooled["mdice"]) < 1e-6
    assert abs(row["val_miou"] - scores.pooled["miou"]) < 1e-6
    assert scores.images[0]["image"].endswith("25.png") and len(scores.images) == 5
    # The report ranks the same numbers: its best image is the best per-image Dice.
    page = (run.run_dir / "report.html").read_text()
    best = max(scores.images, key=lambda r: r["mdice"])
    assert f"best #1: {Path(best['image']).name}" in page


COLOURS = {"road": [128, 64, 128], "car": [0, 0, 192], "sky": [128, 128, 128], "void": [0, 0, 0]}


def _colour_mask_folder(root: Path, count: int = 8, size: int = 48) -> Path:
    """RGB images whose colour masks use COLOURS (void on a 2-pixel frame), and colors.json."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(count):
        classes = np.zeros((size, size), dtype=np.int64)
        classes[: size // 3] = 2
        classes[size // 2:, rng.integers(0, size // 2):] = 1
        colours = np.array([COLOURS["road"], COLOURS["car"], COLOURS["sky"]], dtype=np.uint8)[classes]
        colours[:2], colours[:, :2] = 0, 0
        image = (colours.astype(np.float32) * 0.6 + rng.normal(0, 20, colours.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{k}.png")
        Image.fromarray(colours).save(root / "masks" / f"{k}.png")
    (root / "colors.json").write_text(json.dumps(COLOURS))
    return root


def test_val_scores_equal_evaluate_for_rgb_colour_masks(tmp_path):
    data = _colour_mask_folder(tmp_path / "colours")
    run = seglab.train(data, mask_colors=data / "colors.json", epochs=1, validation=25, out=tmp_path / "run", **TINY)
    row = _last_row(run.run_dir)
    scores = seglab.evaluate(run.best_checkpoint, run.validation_pairs, device="cpu")
    assert scores.classes == ["road", "car", "sky"]
    assert abs(row["val_dice"] - scores.pooled["mdice"]) < 1e-6
    assert abs(row["val_miou"] - scores.pooled["miou"]) < 1e-6
    frame = 2 * 48 * 2 - 4  # void pixels count nowhere
    assert scores.pooled["pixels"] == len(scores.images) * (48 * 48 - frame)


# ---- the same refusals as the command ------------------------------------------------------------
def _no_images(root: Path) -> Path:
    (root / "stuff").mkdir(parents=True)
    return root


def _wrong_size_mask(root: Path) -> Path:
    for stem in ("00", "01", "02"):
        copy_isbi_crop("train", "images", stem, root / "images", (0, 0, 64, 64))
        copy_isbi_crop("train", "masks", stem, root / "masks", (0, 0, 64, 64) if stem != "01" else (0, 0, 60, 64))
    return root


def _rgb_masks(root: Path) -> Path:
    data = _colour_mask_folder(root, count=3)
    (data / "colors.json").unlink()
    return data


@pytest.mark.parametrize("make", [_no_images, _wrong_size_mask, _rgb_masks])
def test_train_refuses_the_folders_the_command_refuses_with_the_same_line(tmp_path, make):
    data = make(tmp_path / "data")
    with pytest.raises(DataError) as refused:
        seglab.train(data, out=tmp_path / "api", **TINY)
    cli = run_cli("train", data, "--out", tmp_path / "cli", "--device", "cpu", "--no-progress")
    assert_clean_failure(cli)
    assert cli.stderr.strip() == f"seglab: error: {refused.value}"
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()


def test_user_mistakes_raise_seglab_errors_not_system_exit(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        seglab.train(tmp_path / "missing", **TINY)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        seglab.train(ISBI, epoch=2, **TINY)
    with pytest.raises(ConfigError, match=r"invalid train.batch_size \(--batch-size\): 0"):
        seglab.train(ISBI, **{**TINY, "batch_size": 0})
    with pytest.raises(SeglabError, match="does not exist"):
        seglab.load(tmp_path / "nothing.pt")
    with pytest.raises(ConfigError, match="tta"):
        seglab.load(Path(__file__).parent / "fixtures" / "v0.1.0" / "unet_tiny.pt", tta="rotate")


def test_load_predicts_paths_arrays_and_pil_images_alike(checkpoint, isbi_subset):
    model = seglab.load(checkpoint, device="cpu")
    path = isbi_subset / "images" / "00.png"
    by_path = model.predict(path)
    by_array = model.predict(np.asarray(Image.open(path)))
    by_pil = model.predict(Image.open(path))
    assert np.array_equal(by_path.mask, by_array.mask) and np.array_equal(by_path.mask, by_pil.mask)
    assert by_path.classes.shape == (128, 128) and by_path.probabilities.shape == (1, 128, 128)
    cells = seglab.load(checkpoint, device="cpu", seed_threshold=0.45).predict(path, instances=True).instances
    assert cells.shape == (128, 128) and cells.max() > 0  # a barely trained model: a lenient seed threshold
    streamed = list(model.predict_many(p for p in sorted((isbi_subset / "images").iterdir())))
    assert len(streamed) == 5 and np.array_equal(streamed[0].mask, by_path.mask)


def test_check_returns_the_report_the_command_prints(isbi_subset, run_seglab):
    report = seglab.check(isbi_subset)
    assert report.ok and report.class_map.values == (0, 255)
    assert run_seglab("check", isbi_subset).stdout.strip() == str(report)


# ---- a call leaves no global state behind --------------------------------------------------------
TWO_RUNS = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import seglab

data, out = sys.argv[1], sys.argv[2]
options = dict(epochs=1, base_channels=4, depth=2, scale=0.25, batch_size=2, augment="none", device="cpu",
               progress=False, log=lambda *a, **k: None)
benchmark = torch.backends.cudnn.benchmark


class Seen:  # callbacks run on rank 0 only, unless they ask for every rank (all_ranks)
    def __init__(self, all_ranks):
        self.all_ranks = all_ranks

    def on_evaluation(self, run, row):  # a file per rank and kind: the ranks' prints would interleave
        (Path(out) / f"seen by rank {run.rank}, all_ranks {self.all_ranks}").touch()


for k in range(2):
    callbacks = [Seen(False), Seen(True)] if k == 0 else None
    run = seglab.train(data, out=f"{out}/run{k}", callbacks=callbacks, **options)
    assert not dist.is_initialized(), "a process group was left behind"
    assert torch.backends.cudnn.benchmark == benchmark
dist.init_process_group("gloo")  # a group the caller made stays the caller's
seglab.train(data, out=f"{out}/run2", **options)
assert dist.is_initialized()
dist.destroy_process_group()
print("done", run.best_value is not None)
"""


def test_two_trainings_in_one_process_leave_no_process_group_behind(tmp_path, isbi_subset):
    script = tmp_path / "two_runs.py"
    script.write_text(TWO_RUNS)
    env = {**os.environ, **SUBPROCESS_ENV}
    done = run_group([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      str(script), str(isbi_subset), str(tmp_path)], env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done True") == 2
    seen = {path.name for path in tmp_path.glob("seen by rank *")}
    assert seen == {"seen by rank 0, all_ranks False", "seen by rank 0, all_ranks True",
                    "seen by rank 1, all_ranks True"}
    assert all((tmp_path / f"run{k}" / "best.pt").is_file() for k in range(3))


def test_seglab_draws_without_pyplot(tmp_path, isbi_subset):
    """A notebook's matplotlib backend and figures are its own: training and reports use Figure objects."""
    code = textwrap.dedent(f"""
        import sys, seglab
        run = seglab.train({str(isbi_subset)!r}, out={str(tmp_path / 'run')!r}, epochs=1, base_channels=4,
                           depth=2, device="cpu", progress=False, log=lambda *a, **k: None)
        assert (run.run_dir / "curves.png").is_file() and (run.run_dir / "report.html").is_file()
        print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
    """)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **SUBPROCESS_ENV}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("no pyplot")


def test_a_trainer_built_directly_cleans_up_as_a_context_manager(tmp_path, isbi_subset):
    from seglab.config import config_from_dict
    from seglab.engine.recipe import Recipe
    from seglab.engine.trainer import Trainer

    config = config_from_dict({"out": str(tmp_path / "run"), "data": {"root": str(isbi_subset)},
                               "model": {"base_channels": 4, "depth": 2},
                               "train": {"epochs": 1, "device": "cpu", "seed": 5}})
    before = torch.random.get_rng_state()
    with Trainer(Recipe.from_data(config), progress=False, log=QUIET) as trainer:
        trainer.fit()
    assert torch.equal(torch.random.get_rng_state(), before)  # the run's seeding is undone


def test_with_options_is_a_replace_of_the_predictors_one_options_object(checkpoint):
    model = seglab.load(checkpoint, device="cpu", runtime="pytorch")
    half = model.with_options(scale=0.5, tta="flips", threshold=None)   # None keeps the model's threshold
    assert half.options == dataclasses.replace(model.options, scale=0.5, tta="flips")
    assert half.model is model.model and model.options.scale == 1.0
    assert half.predict(np.zeros((64, 48), np.uint8)).mask.shape == (64, 48)  # results at the input's size
    with pytest.raises(SeglabError, match="unknown inference option 'treshold'"):
        model.with_options(treshold=0.4)
    with pytest.raises(SeglabError, match="runtime is chosen when a model is loaded"):
        model.with_options(runtime="auto")
    with pytest.raises(SeglabError, match="scale"):
        model.with_options(scale=0)


def test_objects_show_themselves_in_a_few_lines_and_as_html(checkpoint, isbi_subset):
    model = seglab.load(checkpoint, device="cpu", runtime="pytorch", tta="flips")
    shown = repr(model)
    assert shown.startswith("Predictor(unet from best.pt: ") and "tta flips" in shown and len(shown.splitlines()) <= 5
    image = np.asarray(Image.open(isbi_subset / "images" / "00.png"))[:96, :80]
    prediction = model.predict(image, name="00.png")
    assert repr(prediction).startswith("Prediction('00.png', 80x96: ") and "%" in repr(prediction)
    assert "<img src='data:image/png;base64," in prediction._repr_html_()
    assert prediction.overlay().shape == (96, 80, 3)
    scores = seglab.evaluate(model, [(isbi_subset / "images" / "00.png", isbi_subset / "masks" / "00.png")])
    assert repr(scores).startswith("Evaluation(1 images; pooled mDice ") and len(repr(scores).splitlines()) == 2
    assert scores._repr_html_().count("<tr>") == len(scores.classes) + 2
    config = seglab.load_config(checkpoint.parent / "config.yaml")
    assert repr(config).startswith("RunConfig(data ") and len(repr(config).splitlines()) <= 5
