"""Nothing lost, nothing mixed: through the real CLI on real files, every way a careless or hostile
user loses data today is refused in one line, and nothing is left half-written."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

import seglab
from conftest import SUBPROCESS_ENV, TINY_FLAGS, assert_clean_failure, copy_isbi_crop, run_cli, run_main
from seglab.data.io import read_image
from seglab.errors import ConfigError, DataError, SeglabError

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


def test_two_predictions_into_one_folder_at_once_never_replace_each_others_masks(checkpoint, tmp_path):
    image = copy_isbi_crop("test", "images", "00", tmp_path / "inp")
    out = tmp_path / "out"
    # tiles and TTA make the mask take seconds, so both runs have planned before either writes
    args = [sys.executable, "-m", "seglab", "predict", "-m", str(checkpoint), "-i", str(image), "-o", str(out),
            "--tile", "64", "--tta", "d4", "--device", "cpu"]
    runs = [subprocess.Popen(args, env={**os.environ, **SUBPROCESS_ENV}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 1], results
    refused = next(stderr for code, stderr in results if code == 1)
    assert len(refused.strip().splitlines()) == 1 and "Traceback" not in refused
    assert "is in use by process" in refused or "already exist" in refused, refused
    assert sorted(p.name for p in out.iterdir()) == ["00_mask.png"]  # no lock file, no temporary left


KILLED_MID_WRITE = """
import os, signal, sys
from seglab.data.writing import atomic_output
temporary = atomic_output(sys.argv[1]).__enter__()  # seglab's own writer, killed before its rename
temporary.write_bytes(b"half a mask")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporaries_of_a_killed_prediction_are_removed_by_the_next_run_in_that_folder(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(out / "00_mask.png")], check=False,
                   env={**os.environ, **SUBPROCESS_ENV}, timeout=120)
    (stale,) = [p.name for p in out.iterdir()]
    assert stale.startswith(".00_mask.png.") and ".tmp" in stale
    alive = out / f".01_mask.png.{os.getpid()}.abcd1234.tmp.png"  # a writer that still runs (this test)
    alive.write_bytes(b"in progress")
    (out / ".notes.tmp").write_text("the user's own file")
    image = copy_isbi_crop("test", "images", "00", tmp_path / "inp", (0, 0, 64, 64))
    done = run_cli("predict", "-m", checkpoint, "-i", image, "-o", out, "--device", "cpu")
    assert done.rc == 0, done.output
    assert "removed 1 temporary file" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([alive.name, ".notes.tmp", "00_mask.png"])


def test_temporaries_of_a_killed_export_are_removed_by_the_next_export(checkpoint, tmp_path):
    target = tmp_path / "model.ts"
    export = subprocess.Popen([sys.executable, "-m", "seglab", "export", "-m", str(checkpoint), "--format",
                               "torchscript", "-o", str(target)], env={**os.environ, **SUBPROCESS_ENV},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".model.ts.*.tmp*")) and export.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    export.kill()  # kill -9 while the exported graph is written and checked
    export.wait()
    assert list(tmp_path.glob(".model.ts.*.tmp*")) and not target.exists()
    seglab.export(checkpoint, "torchscript", target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]


# ---- one run per folder ----------------------------------------------------------------------------
def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_is_intact(tmp_path, isbi_subset):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "seglab", "train", str(isbi_subset), "--out", str(out), "-e", "100000",
            "--time-budget", "8", *TINY_TRAIN]
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


@pytest.mark.parametrize("flags, expected", [
    (("--base-channels", "16"), "another model than this run's config asks for (base_channels 4 in last.pt, 16 now)"),
    (("--model", "deeplabv3"), "the model 'unet' in last.pt, deeplabv3 now"),
    (("--optimizer", "sgd"), "its optimizer has no dampening, momentum: it was another --optimizer"),
])
def test_resuming_with_another_model_or_optimizer_is_one_line_and_keeps_the_run(trained_run, tmp_path, flags,
                                                                                expected):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "split.json", "metrics.jsonl", "last.pt", "best.pt"):
        (run / name).write_bytes((trained_run.run_dir / name).read_bytes())
    before = checksums(run)
    result = run_main("train", "--resume", run, *flags, "--no-progress")
    assert_clean_failure(result)
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert {name: digest for name, digest in checksums(run).items() if name != ".seglab.lock"} == before


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
@pytest.mark.parametrize("shape, options, expected", [
    ((3, 2000, 2000), dict(photometric="rgb", planarconfig="separate"), "claims 3x2000x2000 pixels"),
    ((200, 500, 500), {}, "holds a stack of 200 pages"),
], ids=["planar RGB", "stack"])
def test_a_tiff_is_judged_by_its_header_before_any_page_is_decoded(tmp_path, monkeypatch, shape, options,
                                                                    expected):
    monkeypatch.setenv("SEGLAB_MAX_PIXELS", "1000000")
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), compression="zlib", **options)
    assert path.stat().st_size < 300_000  # 12 MB and 50 MB of pixels
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=expected):
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"{peak / 1e6:.0f} MB allocated: pixels were decoded"


def test_images_smaller_than_2x2_are_refused_alike_by_check_and_train(tmp_path, isbi_subset):
    data = tmp_path / "data"
    shutil.copytree(isbi_subset, data)
    Image.new("L", (1, 1)).save(data / "images" / "03.png")
    Image.new("L", (1, 1), 255).save(data / "masks" / "03.png")
    check = run_main("check", data)
    assert check.rc == 1 and "image '" in check.stdout and "03.png' is 1x1 pixels" in check.stdout, check.stdout
    train = run_main("train", data, "--out", tmp_path / "run", *TINY_TRAIN)
    assert_clean_failure(train)
    assert "03.png' is 1x1 pixels; seglab trains on images of at least 2x2" in train.stderr
    assert len(train.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


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
    ("train", "time_budget", "--time-budget", -5),
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


# 10^7 copies of "x" in 300 bytes, under a known key: main wrote them all into its error message.
ALIAS_BOMB = "train: {epochs: [&a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcdef", "bcdefg")) + "]}\n"


@pytest.mark.parametrize("yaml_text, expected", [
    ("train: {batch_size: two}", "invalid train.batch_size (--batch-size): 'two'; expected an integer"),
    ("data: {crop: abc}", "invalid data.crop (--crop): 'abc'"),
    ("model: {base_channels: -4}", "invalid model.base_channels (--base-channels): -4"),
    ("model: {name: unet, backbone: resnet18}", "unknown option 'backbone' in the options of model 'unet'"),
    ("train: {epoch: 5}", "unknown option 'epoch' in config section 'train'; did you mean 'epochs'?"),
    ("trian: {epochs: 5}", "unknown option 'trian' in the config (sections); did you mean 'train'?"),
    ("- just\n- a list", "must hold a mapping"),
    (ALIAS_BOMB, "expands to more than 100000 values (YAML aliases"),
    ("train: {epochs: " + "[" * 3000 + "]" * 3000 + "}", "nests values too deeply"),
    ("model: {name: [" + ", ".join(["unet"] * 10_000) + "]}", "invalid model.name (--model): ['unet', 'unet'"),
], ids=lambda value: value[:24])
def test_a_yaml_value_of_the_wrong_type_is_one_line(tmp_path, isbi_subset, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    result = run_main("train", isbi_subset, "--config", config, *TINY_FLAGS)
    assert_clean_failure(result)
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert len(result.stderr) < 1000  # a value is named, never printed whole


def test_a_recipe_sized_yaml_loads_and_aliases_still_may_not_add_more_than_the_limit(tmp_path):
    from seglab.yaml_files import MAX_YAML_VALUES, read_yaml

    def pairs(count: int) -> str:  # a recipe's list of training pairs: 3 values a pair
        return "data:\n  train_pairs:\n" + "".join(f"  - [images/{i:05d}.png, masks/{i:05d}.png]\n"
                                                   for i in range(count))

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(pairs(35_000))  # 105,000 values written out
    assert read_yaml(recipe)["data"]["train_pairs"][-1] == ["images/34999.png", "masks/34999.png"]
    # written values with aliases repeating 10^7 more: refused, whatever was written out
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(pairs(3000) + ALIAS_BOMB)
    with pytest.raises(SeglabError, match=f"expands to more than {MAX_YAML_VALUES} values"):
        read_yaml(bomb)


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
def small_tmpfs(tmp_path, request):
    """A 96 KiB tmpfs (or the size a test's `tmpfs_size` mark asks for): room for a mask or two, not
    for a checkpoint (root and mount(8) needed)."""
    mark = request.node.get_closest_marker("tmpfs_size")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mark.args[0] if mark else '96k'}", "tmpfs",
                           str(mount)], capture_output=True)
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


@pytest.mark.tmpfs_size("160k")  # config, split, events and best.pt (50 KB) fit; last.pt (160 KB) does not
def test_training_into_a_full_disk_says_what_is_true_and_keeps_the_run_folder_consistent(isbi_subset, small_tmpfs):
    run = small_tmpfs / "run"
    result = run_cli("train", isbi_subset, "--out", run, "-e", "2", "--checkpoint-interval", "0", *TINY_TRAIN)
    assert_clean_failure(result)
    assert "the disk is full" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    has_last = (run / "last.pt").is_file()
    assert ("--resume" in result.stderr) == has_last and ("train again" in result.stderr) != has_last
    rows = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]  # whole lines
    assert rows == list(range(1, len(rows) + 1))
    for name in ("best.pt", "last.pt"):  # a checkpoint never holds a row metrics.jsonl lacks
        if (run / name).is_file():
            assert torch.load(run / name, weights_only=True)["epoch"] + 1 in rows, (name, rows)
    assert (run / "best.pt").is_file(), "the tmpfs size no longer splits best.pt from last.pt"


def test_training_into_a_read_only_file_system_is_one_line(tmp_path, isbi_subset, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    result = run_cli("train", isbi_subset, "--out", small_tmpfs / "run", *TINY_TRAIN)
    assert_clean_failure(result)
    assert "read-only" in result.stderr
