"""Bad input gets one clear line and loses nothing; training survives kills, full disks and NaNs."""
from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import SUBPROCESS_ENV, TINY_FLAGS, assert_clean_failure, copy_isbi_crop, run_cli
from seglab.config import config_from_dict
from seglab.errors import DataError, SeglabError
from seglab.runtime.checkpoint import load_checkpoint

TINY_TRAIN = ("--base-channels", "4", "--depth", "2", "--augment", "none", *TINY_FLAGS)


def _one_line_error(result, *names: str) -> None:
    assert_clean_failure(result)
    errors = [line for line in result.output.splitlines() if "error" in line]
    assert errors, result.output
    for name in names:
        assert name in result.output, result.output


# ---- broken image files ------------------------------------------------------------------------
def _broken_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = copy_isbi_crop("test", "images", "00", folder, (0, 0, 64, 64), name="good.png")
    files = {"zero-byte": folder / "empty.png", "truncated png": folder / "cut.png",
             "truncated jpeg": folder / "cut.jpg", "text named png": folder / "notes.png"}
    files["zero-byte"].write_bytes(b"")
    files["truncated png"].write_bytes(good.read_bytes()[:200])
    Image.open(good).save(folder / "full.jpg", quality=90)
    files["truncated jpeg"].write_bytes((folder / "full.jpg").read_bytes()[:300])
    (folder / "full.jpg").unlink()
    files["text named png"].write_text("these are not pixels\n")
    return files


@pytest.mark.parametrize("kind", ["zero-byte", "truncated png", "truncated jpeg", "text named png"])
def test_a_broken_single_input_fails_with_its_name_and_writes_nothing(checkpoint, tmp_path, kind):
    broken = _broken_files(tmp_path / "in")[kind]
    out = tmp_path / "out.png"
    result = run_cli("predict", "-m", checkpoint, "-i", broken, "-o", out, "--device", "cpu")
    assert result.rc == 1 and "Traceback" not in result.output
    assert broken.name in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.png*"))


def test_a_broken_mask_in_a_data_folder_is_named_by_check_and_refused_by_train(tmp_path):
    for stem in ("00", "01", "02"):
        copy_isbi_crop("train", "images", stem, tmp_path / "images", (0, 0, 64, 64))
        copy_isbi_crop("train", "masks", stem, tmp_path / "masks", (0, 0, 64, 64))
    (tmp_path / "masks" / "01.png").write_bytes(b"")
    checked = run_cli("check", tmp_path)
    _one_line_error(checked, "01.png")
    trained = run_cli("train", tmp_path, "--out", tmp_path / "run", *TINY_TRAIN)
    _one_line_error(trained, "01.png")
    assert not (tmp_path / "run").exists()


def test_an_unreadable_file_is_reported_as_a_permissions_problem(tmp_path, monkeypatch):
    path = copy_isbi_crop("test", "images", "00", tmp_path, (0, 0, 32, 32))
    path.chmod(0)
    if os.geteuid() != 0:
        from seglab.data.io import read_image

        with pytest.raises(DataError, match="permissions"):
            read_image(path)
        return
    # root reads any file whatever its mode, so here the denial is the kernel's answer we stand in for
    from seglab.data import io

    monkeypatch.setattr(io.os, "access", lambda p, mode: Path(p) != path)
    with pytest.raises(DataError, match=r"not readable \(permissions\)"):
        io.read_image(path)


def test_a_folder_without_images_is_refused_by_predict_and_check(checkpoint, tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    predicted = run_cli("predict", "-m", checkpoint, "-i", tmp_path / "empty", "--device", "cpu")
    _one_line_error(predicted, "holds no images")
    checked = run_cli("check", tmp_path / "empty")
    assert_clean_failure(checked)


def test_an_rgb_image_for_a_gray_model_is_refused_by_name(checkpoint, tmp_path):
    colour = np.zeros((40, 40, 3), dtype=np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "colour.png")
    result = run_cli("predict", "-m", checkpoint, "-i", tmp_path / "colour.png", "-o", tmp_path / "o.png",
                     "--device", "cpu")
    _one_line_error(result, "colour.png", "grayscale")
    assert not (tmp_path / "o.png").exists()


def test_16_bit_and_float_images_are_handled_not_refused(checkpoint, tmp_path):
    base = np.asarray(Image.open(copy_isbi_crop("test", "images", "01", tmp_path / "src", (0, 0, 96, 80))))
    Image.fromarray(base.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    tifffile.imwrite(tmp_path / "float.tif", base.astype(np.float32) / 255.0)
    for name in ("deep.png", "float.tif"):
        out = tmp_path / f"{name}.mask.png"
        result = run_cli("predict", "-m", checkpoint, "-i", tmp_path / name, "-o", out, "--device", "cpu")
        assert result.rc == 0, result.output
        assert np.asarray(Image.open(out)).shape == (80, 96)


def test_images_smaller_than_the_crop_are_padded_not_refused(tmp_path):
    for stem in ("00", "01", "02", "03"):
        copy_isbi_crop("train", "images", stem, tmp_path / "images", (0, 0, 40, 40))
        copy_isbi_crop("train", "masks", stem, tmp_path / "masks", (0, 0, 40, 40))
    result = run_cli("train", tmp_path, "--crop", "64", "-e", "1", "-b", "2", "--out", tmp_path / "run", *TINY_TRAIN)
    assert result.rc == 0, result.output


# ---- checkpoints -------------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "seglab-checkpoint", "payload": _RunsCode(str(marker))}, evil)
    with open(tmp_path / "plain.pkl", "wb") as handle:
        pickle.dump(_RunsCode(str(marker)), handle)
    for path in (evil, tmp_path / "plain.pkl"):
        result = run_cli("predict", "-m", path, "-i", tmp_path, "--device", "cpu")
        _one_line_error(result, path.name)
        assert not marker.exists()


def test_corrupt_foreign_and_mismatched_checkpoints_are_refused_with_one_line(checkpoint, tmp_path):
    image = copy_isbi_crop("test", "images", "00", tmp_path / "in", (0, 0, 32, 32))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"model_state": torch.nn.Linear(2, 2).state_dict(), "epoch": 3}, foreign)
    mismatched = tmp_path / "mismatched.pt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["model"]["kwargs"]["base_channels"] = 8  # weights of a 4-channel net, described as 8
    torch.save(payload, mismatched)
    for path, words in ((corrupt, "corrupt"), (foreign, "not a seglab checkpoint"), (mismatched, "do not fit")):
        result = run_cli("predict", "-m", path, "-i", image, "-o", tmp_path / "o.png", "--device", "cpu")
        _one_line_error(result, path.name, words)
        assert not (tmp_path / "o.png").exists()
    loaded = run_cli("evaluate", "-m", corrupt, tmp_path)
    _one_line_error(loaded, "corrupt.pt")


# ---- outputs -----------------------------------------------------------------------------------
def test_an_output_path_that_cannot_be_written_fails_cleanly(checkpoint, tmp_path):
    image = copy_isbi_crop("test", "images", "00", tmp_path / "in", (0, 0, 32, 32))
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    result = run_cli("predict", "-m", checkpoint, "-i", image, "-o", blocker / "sub" / "o.png", "--device", "cpu")
    _one_line_error(result, "writable")


def test_output_names_cannot_escape_the_output_folder(tmp_path):
    from seglab.api.output_names import safe_join

    assert safe_join(tmp_path, "a_mask.png") == tmp_path / "a_mask.png"
    with pytest.raises(SeglabError, match="escape"):
        safe_join(tmp_path, "../outside_mask.png")


OOM_SCRIPT = """
import sys, torch
from seglab.cli import main
from seglab.models.unet import UNet

def exhausted(self, x):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

UNet.forward = exhausted
sys.exit(main(sys.argv[1:]))
"""


def test_out_of_memory_stops_with_the_batch_or_tile_size_to_try(checkpoint, tmp_path, isbi_subset):
    script = tmp_path / "oom.py"
    script.write_text(OOM_SCRIPT)
    env = dict(os.environ, **SUBPROCESS_ENV)
    train = subprocess.run([sys.executable, str(script), "train", str(isbi_subset), "--out", str(tmp_path / "run"),
                            "-b", "4", *TINY_TRAIN], capture_output=True, text=True, env=env, timeout=120)
    assert train.returncode == 1 and "Traceback" not in train.stderr, train.stderr
    assert "out of memory" in train.stderr and "--batch-size 2" in train.stderr
    predict = subprocess.run([sys.executable, str(script), "predict", "-m", str(checkpoint), "-i",
                              str(isbi_subset / "images" / "00.png"), "-o", str(tmp_path / "o.png"), "--tile", "128",
                              "--device", "cpu"], capture_output=True, text=True, env=env, timeout=120)
    assert predict.returncode == 1 and "Traceback" not in predict.stderr, predict.stderr
    assert "--tile 64" in predict.stderr and not (tmp_path / "o.png").exists()


# ---- faults during training --------------------------------------------------------------------
SAVER_SCRIPT = """
import sys, torch
from seglab.runtime.checkpoint import save_checkpoint
path, n = sys.argv[1], 0
while True:
    n += 1
    payload = {"format": "seglab-checkpoint", "version": 1, "n": n, "model": {"name": "unet", "kwargs": {}},
               "class_map": {}, "preprocess": {},
               "state_dict": {"weights": torch.full((200_000 + 50_000 * (n % 3),), float(n))}}
    save_checkpoint(payload, path)
"""


def test_killing_a_process_during_repeated_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(SAVER_SCRIPT)
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    for trial in range(12):
        saver = subprocess.Popen([sys.executable, str(script), str(path)], env=dict(os.environ, **SUBPROCESS_ENV))
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        payload = load_checkpoint(path)
        assert torch.all(payload["state_dict"]["weights"] == payload["n"])  # a whole file, never a torn one


def test_a_killed_training_run_resumes_losing_at_most_save_every_steps(tmp_path, isbi_dir):
    run = tmp_path / "run"
    args = ["train", str(isbi_dir), "--out", str(run), "-s", "0.25", "-e", "3", "-b", "2", "--save-every", "3",
            "--base-channels", "4", "--depth", "2", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, **SUBPROCESS_ENV)
    training = subprocess.Popen([sys.executable, "-m", "seglab", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "last.pt").exists():
        time.sleep(0.05)
    training.send_signal(signal.SIGKILL)
    training.wait()
    saved = load_checkpoint(run / "last.pt")
    resumed = run_cli("train", "--resume", run, "--no-progress")
    assert resumed.rc == 0, resumed.output
    assert f"(step {saved['step']})" in resumed.output
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


DISK_FULL_SCRIPT = """
import errno, sys, torch
from seglab.cli import main
from seglab.runtime import checkpoint

real_save, calls = torch.save, []

def fills_the_disk(obj, handle, *args, **kwargs):
    calls.append(1)
    if len(calls) > 2:  # best.pt and last.pt of epoch 1 fit; then the disk is full mid-write
        handle.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(obj, handle, *args, **kwargs)

checkpoint.torch.save = fills_the_disk
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_during_a_save_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, isbi_subset):
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL_SCRIPT)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, str(script), "train", str(isbi_subset), "--out", str(run), "-e", "3",
                           "--crop", "64", *TINY_TRAIN], capture_output=True, text=True,
                          env=dict(os.environ, **SUBPROCESS_ENV), timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "disk is full" in done.stderr and "intact" in done.stderr
    assert load_checkpoint(run / "last.pt")["epoch"] == 0
    assert not list(run.glob(".*.tmp"))


def test_non_finite_losses_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint(tmp_path, isbi_subset):
    from seglab.engine.recipe import Recipe
    from seglab.engine.trainer import Trainer

    config = config_from_dict({"out": str(tmp_path / "run"),
                               "data": {"root": str(isbi_subset), "crop": [64, 64], "validation": 20},
                               "model": {"base_channels": 4, "depth": 2},
                               "train": {"epochs": 3, "batch_size": 2, "device": "cpu", "augment": "none",
                                         "max_bad_steps": 3, "checkpoint_interval": 0}})
    messages = []
    trainer = Trainer(Recipe.from_data(config), progress=False, log=messages.append)
    real_loss = trainer.loss_fn.forward

    def poisoned(logits, target, weights=None):
        loss = real_loss(logits, target, weights)
        return loss * float("nan") if trainer.step >= 2 else loss  # epoch 1 has 2 steps, then NaNs

    trainer.loss_fn.forward = poisoned
    snapshots = {}
    real_close_period = trainer._close_period

    def remember(epoch, validate, position):
        snapshots[epoch] = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        return real_close_period(epoch, validate, position)

    trainer._close_period = remember
    with pytest.raises(SeglabError, match="non-finite losses in a row"):
        trainer.fit()
    assert any("non-finite loss" in m and "skipped" in m for m in messages)
    good = load_checkpoint(tmp_path / "run" / "last.pt")
    assert good["epoch"] == 1  # epoch 2 was all NaN: saved, but its updates were skipped
    for name, value in snapshots[0].items():  # the weights after the last good epoch
        assert torch.isfinite(good["state_dict"][name]).all()
        assert torch.equal(good["state_dict"][name], value)
