"""Nothing lost, nothing mixed: through the real CLI on real files, every way a careless or hostile
user loses data today is refused in one line, and nothing is left half-written."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import seglab
from conftest import SUBPROCESS_ENV, TINY_FLAGS, assert_clean_failure, copy_isbi_crop, run_cli, run_main
from seglab.errors import ConfigError

TINY_TRAIN = ("--base-channels", "4", "--depth", "2", "--crop", "64", "-b", "2", "--augment", "none", *TINY_FLAGS)


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- prediction never overwrites inputs or its own outputs --------------------------------------
@pytest.fixture
def same_stem_inputs(tmp_path) -> Path:
    """a.png, a.jpg, a.tif (one stem, three files), b.png and an existing b_mask.png."""
    folder = tmp_path / "inp"
    copy_isbi_crop("test", "images", "00", folder, (0, 0, 64, 64), name="a.png")
    with Image.open(folder / "a.png") as image:
        image.save(folder / "a.jpg", quality=95)
        image.save(folder / "a.tif")
    copy_isbi_crop("test", "images", "01", folder, (0, 0, 64, 64), name="b.png")
    copy_isbi_crop("train", "masks", "01", folder, (0, 0, 64, 64), name="b_mask.png")  # the user's own file
    return folder


def test_same_stem_inputs_get_separate_outputs_and_existing_files_are_kept(checkpoint, same_stem_inputs):
    before = checksums(same_stem_inputs)
    refused = run_cli("predict", "-m", checkpoint, "-i", same_stem_inputs, "-o", same_stem_inputs, "--device", "cpu")
    assert_clean_failure(refused)
    assert "b_mask.png" in refused.stderr and "--overwrite" in refused.stderr
    assert checksums(same_stem_inputs) == before  # nothing written, nothing replaced
    out = same_stem_inputs.parent / "out"
    done = run_cli("predict", "-m", checkpoint, "-i", same_stem_inputs, "-o", out, "--device", "cpu")
    assert done.rc == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg_mask.png", "a_png_mask.png", "a_tif_mask.png",
                                                     "b_mask.png"]
    assert checksums(same_stem_inputs) == before
    again = run_cli("predict", "-m", checkpoint, "-i", same_stem_inputs, "-o", out, "--device", "cpu")
    assert_clean_failure(again)  # the outputs of the first run are not replaced silently...
    assert run_cli("predict", "-m", checkpoint, "-i", same_stem_inputs, "-o", out, "--device", "cpu",
                   "--overwrite").rc == 0  # ...unless asked


def test_an_output_that_is_an_input_is_refused(checkpoint, same_stem_inputs, tmp_path):
    image = same_stem_inputs / "a.png"
    before = checksums(same_stem_inputs)
    for extra in ((), ("--overwrite",)):
        result = run_cli("predict", "-m", checkpoint, "-i", image, "-o", image, "--device", "cpu", *extra)
        assert_clean_failure(result)
        assert "is the input" in result.stderr
    two = run_cli("predict", "-m", checkpoint, "-i", image, same_stem_inputs / "b.png", "-o",
                  tmp_path / "x.png", tmp_path / "x.png", "--device", "cpu")
    assert_clean_failure(two)
    assert "would both write" in two.stderr
    assert checksums(same_stem_inputs) == before and not (tmp_path / "x.png").exists()


# ---- one run per folder ----------------------------------------------------------------------------
def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_is_intact(tmp_path, isbi_subset):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "seglab", "train", str(isbi_subset), "--out", str(out), "-e", "100000",
            "--max-time", "8", *TINY_TRAIN]
    first = subprocess.Popen(args, env={**os.environ, **SUBPROCESS_ENV}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    second = run_main("train", isbi_subset, "--out", out, "-e", "2", *TINY_TRAIN)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert_clean_failure(second)
    assert f"'{out}' is in use by process {first.pid}" in second.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))  # every epoch once: nothing of the second run
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 100000


def test_kill_9_leaves_the_folder_free_and_best_pt_exists_from_the_first_row(tmp_path, isbi_subset):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "seglab", "train", str(isbi_subset), "--out", str(out), "-e", "30",
            "--save-every", "1", "--checkpoint-interval", "1000", *TINY_TRAIN]
    process = subprocess.Popen(args, env={**os.environ, **SUBPROCESS_ENV}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_rows(out)) < 2:
        time.sleep(0.05)
    assert (out / "best.pt").is_file()  # written at the first row, although --save-every wrote last.pt first
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    resumed = run_cli("train", "--resume", out, "-e", "8", "--no-progress")
    assert resumed.rc == 0, resumed.output
    assert (out / "best.pt").is_file() and [r["epoch"] for r in _rows(out)] == list(range(1, 9))


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# ---- no non-finite checkpoint -----------------------------------------------------------------------
def test_an_exploding_learning_rate_never_saves_non_finite_weights(tmp_path, isbi_subset):
    out = tmp_path / "run"
    result = run_cli("train", isbi_subset, "--out", out, "-e", "3", "--optimizer", "sgd", "-l", "1e30",
                     "--checkpoint-interval", "0", *TINY_TRAIN)
    assert_clean_failure(result)
    assert "training diverged" in result.stderr and "lower --learning-rate" in result.stderr
    assert "--resume" not in result.stderr  # no last.pt exists, so resuming is not suggested
    for checkpoint in out.glob("*.pt"):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), checkpoint
    assert run_cli("train", isbi_subset, "--out", tmp_path / "inf", "-l", "inf", *TINY_TRAIN).rc == 1


# ---- decompression bombs are unreadable files ---------------------------------------------------------
def write_png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A 1x1 PNG whose header claims width x height pixels (the IHDR chunk rewritten, CRC fixed)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_in_a_folder_is_skipped_and_listed(checkpoint, tmp_path):
    folder = tmp_path / "inp"
    for stem in ("00", "01"):
        copy_isbi_crop("test", "images", stem, folder, (0, 0, 64, 64))
    write_png_bomb(folder / "bomb.png")
    out = tmp_path / "out"
    result = run_cli("predict", "-m", checkpoint, "-i", folder, "-o", out, "--device", "cpu")
    assert_clean_failure(result)
    assert sorted(p.name for p in out.iterdir()) == ["00_mask.png", "01_mask.png"]
    assert "1 of 3 inputs skipped" in result.stderr and "decompression bomb" in result.stderr
    single = run_cli("predict", "-m", checkpoint, "-i", folder / "bomb.png", "-o", tmp_path / "b.png")
    assert_clean_failure(single)
    assert len(single.stderr.strip().splitlines()) == 1 and "--max-pixels" in single.stderr


def test_check_and_train_report_a_bomb_as_an_unreadable_file(tmp_path, isbi_subset):
    data = tmp_path / "data"
    for kind in ("images", "masks"):
        for stem in ("00", "01", "02"):
            copy_isbi_crop("train", kind, stem, data / kind, (0, 0, 64, 64))
    write_png_bomb(data / "images" / "03.png")
    write_png_bomb(data / "masks" / "03.png")
    check = run_cli("check", data)
    assert check.rc == 1 and "Traceback" not in check.output and "decompression bomb" in check.stdout
    train = run_cli("train", data, "--out", tmp_path / "run", *TINY_TRAIN)
    assert_clean_failure(train)
    assert "decompression bomb" in train.stderr


# ---- every bad value refused in one line, the same way everywhere ---------------------------------------
BAD_TRAIN_VALUES = [  # (section, option, flag, value)
    ("train", "batch_size", "--batch-size", 0),
    ("train", "batch_size", "--batch-size", -3),
    ("train", "learning_rate", "--learning-rate", "nan"),
    ("train", "learning_rate", "--learning-rate", -0.1),
    ("train", "epochs", "--epochs", 0),
    ("data", "scale", "--scale", 0),
    ("data", "validation", "--validation", 100),
    ("data", "in_channels", "--in-channels", -1),
    ("train", "max_time", "--time-budget", -5),
    ("train", "accumulate", "--accumulate", 0),
    ("train", "momentum", "--momentum", 1.5),
    ("train", "seed", "--seed", -1),
]


@pytest.mark.parametrize("section, name, flag, value", BAD_TRAIN_VALUES)
def test_a_bad_training_value_is_refused_alike_by_flag_yaml_and_python(tmp_path, isbi_subset, section, name,
                                                                       flag, value):
    expected = f"invalid {section}.{name} ({flag}): "
    cli = run_main("train", isbi_subset, flag, str(value), "--out", tmp_path / "cli", *TINY_FLAGS)
    assert_clean_failure(cli)
    assert expected in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({section: {name: value}}))
    from_yaml = run_main("train", isbi_subset, "--config", config, "--out", tmp_path / "yaml", *TINY_FLAGS)
    assert_clean_failure(from_yaml)
    assert expected in from_yaml.stderr
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        seglab.train(isbi_subset, **{name: value}, out=tmp_path / "api", log=lambda *a, **k: None)
    assert not any((tmp_path / d).exists() for d in ("cli", "yaml", "api"))  # refused before any folder


@pytest.mark.parametrize("yaml_text, expected", [
    ("train: {batch_size: two}", "invalid train.batch_size (--batch-size): 'two'; expected an integer"),
    ("data: {crop: abc}", "invalid data.crop (--crop): 'abc'"),
    ("model: {base_channels: -4}", "invalid model.base_channels (--base-channels): -4"),
    ("model: {name: unet, backbone: resnet18}", "unknown option 'backbone' in the options of model 'unet'"),
    ("train: {epoch: 5}", "unknown option 'epoch' in config section 'train'; did you mean 'epochs'?"),
    ("trian: {epochs: 5}", "unknown option 'trian' in the config (sections); did you mean 'train'?"),
    ("- just\n- a list", "must hold a mapping"),
])
def test_a_yaml_value_of_the_wrong_type_is_one_line(tmp_path, isbi_subset, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    result = run_main("train", isbi_subset, "--config", config, *TINY_FLAGS)
    assert_clean_failure(result)
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value, expected", [
    ("--tile", "0", "invalid inference.tile (--tile): [0]"),
    ("--overlap", "1.5", "invalid inference.overlap (--overlap): 1.5"),
    ("--overlap", "-0.1", "invalid inference.overlap (--overlap): -0.1"),
    ("--batch-size", "0", "invalid inference.batch_size (--batch-size): 0"),
    ("--mask-threshold", "2", "invalid inference.threshold (--mask-threshold): 2.0"),
    ("--scale", "0", "--scale"),
])
def test_a_bad_prediction_value_is_one_line(checkpoint, tmp_path, flag, value, expected):
    image = copy_isbi_crop("test", "images", "00", tmp_path / "in", (0, 0, 64, 64))
    result = run_main("predict", "-m", checkpoint, "-i", image, "-o", tmp_path / "out.png", flag, value,
                     "--device", "cpu")
    assert_clean_failure(result)
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_flags_are_not_abbreviated_and_a_typo_gets_the_nearest_flag(isbi_subset, tmp_path):
    result = run_main("train", isbi_subset, "--epoch", "2", "--out", tmp_path / "run", *TINY_FLAGS)
    assert result.rc == 2 and "Traceback" not in result.output
    assert "did you mean --epochs?" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_no_save_without_other_outputs_is_refused(checkpoint, tmp_path):
    image = copy_isbi_crop("test", "images", "00", tmp_path / "in", (0, 0, 64, 64))
    result = run_main("predict", "-m", checkpoint, "-i", image, "-n", "--device", "cpu")
    assert_clean_failure(result)
    assert "nothing to write" in result.stderr


# ---- files that are not checkpoints ------------------------------------------------------------------
@pytest.mark.parametrize("content, expected", [
    (b"hello, I am a text file\n", "is not a checkpoint"),
    (bytes(range(256)) * 8, "is not a checkpoint"),
])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "train --load"])
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, isbi_subset, content, expected, command):
    fake = tmp_path / "model.pt"
    fake.write_bytes(content)
    args = {"predict": ["predict", "-m", fake, "-i", isbi_subset / "images" / "00.png", "-o", tmp_path / "o.png"],
            "evaluate": ["evaluate", "-m", fake, isbi_subset],
            "export": ["export", "-m", fake, "-o", tmp_path / "m.onnx"],
            "train --load": ["train", isbi_subset, "--load", fake, "--out", tmp_path / "run", *TINY_TRAIN]}[command]
    result = run_main(*args, "--device", "cpu") if command != "export" else run_main(*args)
    assert_clean_failure(result)
    assert expected in result.stderr and "could run code" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_damaged_seglab_checkpoint_is_one_line(tmp_path, isbi_subset):
    fake = tmp_path / "model.pt"
    torch.save({"format": "seglab-checkpoint", "version": 1}, fake)
    result = run_main("predict", "-m", fake, "-i", isbi_subset / "images" / "00.png", "-o", tmp_path / "o.png")
    assert_clean_failure(result)
    assert "damaged seglab checkpoint" in result.stderr


# ---- run folders that cannot be one, full disks ------------------------------------------------------
def test_out_onto_a_file_or_under_a_file_is_one_line(tmp_path, isbi_subset):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    for out, expected in ((a_file, "is a file, not a folder"), (a_file / "run", "which is a file")):
        result = run_main("train", isbi_subset, "--out", out, *TINY_TRAIN)
        assert_clean_failure(result)
        assert expected in result.stderr
    assert a_file.read_text() == "keep me"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 96 KiB tmpfs: room for a mask or two, not for a checkpoint (root and mount(8) needed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_prediction_into_a_full_disk_is_one_line_and_leaves_no_partial_file(checkpoint, tmp_path, small_tmpfs):
    folder = tmp_path / "inp"
    for k in range(12):
        copy_isbi_crop("test", "images", f"{k:02d}", folder, (0, 0, 128, 128))
    result = run_cli("predict", "-m", checkpoint, "-i", folder, "-o", small_tmpfs, "--viz", "--device", "cpu")
    assert_clean_failure(result)
    assert "the disk is full" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    leftovers = [p.name for p in small_tmpfs.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []
    for written in small_tmpfs.iterdir():
        with Image.open(written) as image:
            image.load()  # every file that is there is whole


def test_training_into_a_full_disk_says_what_is_true(tmp_path, isbi_subset, small_tmpfs):
    result = run_cli("train", isbi_subset, "--out", small_tmpfs / "run", "-e", "2", "--base-channels", "16",
                     *TINY_TRAIN[2:])
    assert_clean_failure(result)
    assert "the disk is full" in result.stderr
    assert "--resume" not in result.stderr and "train again" in result.stderr  # there is no last.pt


def test_training_into_a_read_only_file_system_is_one_line(tmp_path, isbi_subset, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    result = run_cli("train", isbi_subset, "--out", small_tmpfs / "run", *TINY_TRAIN)
    assert_clean_failure(result)
    assert "read-only" in result.stderr
