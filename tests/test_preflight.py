"""`seglab check`: one real bad folder per mask or file problem, each named with what to do; --fix-to."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ISBI, TINY_FLAGS, assert_clean_failure, run_cli
from seglab.data.preflight import run_preflight

COLOURS = {"background": [0, 0, 0], "road": [128, 64, 128], "car": [64, 0, 128]}


def isbi(stem: str, kind: str, size: int = 64) -> np.ndarray:
    """Top-left size x size crop of a bundled ISBI training slice or its {0,255} mask."""
    with Image.open(ISBI / "train" / kind / f"{stem}.png") as image:
        return np.asarray(image)[:size, :size].copy()


def make_pairs(root: Path, stems=("00", "01", "02"), mask_ext: str = ".png", mask_fn=None, **save) -> Path:
    """images/ + masks/ of ISBI crops; mask_fn(index, mask) may change each mask before it is saved."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index, stem in enumerate(stems):
        Image.fromarray(isbi(stem, "images")).save(root / "images" / f"{stem}.png")
        mask = isbi(stem, "masks")
        mask = mask_fn(index, mask) if mask_fn else mask
        Image.fromarray(mask).save(root / "masks" / f"{stem}{mask_ext}", **save)
    return root


def class_regions(index: int, size: int = 48) -> np.ndarray:
    """Three classes as solid regions (a road band and a car box that moves with `index`)."""
    classes = np.zeros((size, size), dtype=np.int64)
    classes[:, 16:32] = 1
    classes[index * 8:index * 8 + 12, 4:14] = 2
    return classes


def make_class_folder(root: Path, mask_of, count: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(count):
        classes = class_regions(i)
        Image.fromarray((classes * 90 + 20).astype(np.uint8)).save(root / "images" / f"{i}.png")
        mask_of(classes).save(root / "masks" / f"{i}.png")
    return root


def problems(report) -> str:
    return "\n".join(report.errors + report.warnings)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


# ---- colour masks ---------------------------------------------------------------------------------
def test_rgb_colour_masks_get_a_colour_table_that_check_accepts_back(tmp_path):
    palette = np.array(list(COLOURS.values()), dtype=np.uint8)
    data = make_class_folder(tmp_path / "data", lambda c: Image.fromarray(palette[c]))
    refused = run_cli("check", data)
    assert_clean_failure(refused)
    assert "masks/0.png" in refused.stdout and "--mask-colors" in refused.stdout
    block = refused.stdout[refused.stdout.index("\n{\n") + 1:]
    table = json.loads(block[:block.index("\n}") + 2])
    assert sorted(map(tuple, table.values())) == sorted(map(tuple, COLOURS.values()))
    (tmp_path / "colors.json").write_text(json.dumps(table))
    accepted = run_cli("check", data, "--mask-colors", tmp_path / "colors.json")
    assert accepted.rc == 0, accepted.output
    assert "rgb(128,64,128) -> " in accepted.stdout


def test_palette_masks_are_noted_with_their_colours(tmp_path):
    def palette_mask(classes):
        image = Image.fromarray(classes.astype(np.uint8), "P")
        image.putpalette(np.array(list(COLOURS.values()), dtype=np.uint8).reshape(-1).tolist())
        return image

    report = run_preflight(make_class_folder(tmp_path, palette_mask))
    assert report.ok, problems(report)
    note = next(line for line in report.lines if "palette" in line)
    assert "masks/0.png" in note and "1 = rgb(128,64,128)" in note
    assert report.class_map.values == (0, 1, 2)


# ---- JPEG and blurred masks -----------------------------------------------------------------------
def test_jpeg_masks_with_blurred_edges_are_fatal_and_named(tmp_path):
    report = run_preflight(make_pairs(tmp_path, mask_ext=".jpg", quality=90))
    assert len(report.errors) == 1, problems(report)
    error = report.errors[0]
    assert "masks/00.jpg" in error and "masks/02.jpg" in error
    assert "JPEG compression blurred the edges: re-export as PNG or use --fix-to" in error
    assert "nearest class" in error


def test_png_masks_with_antialiased_edges_are_caught_too(tmp_path):
    def resized(index, mask):
        small = Image.fromarray(mask).resize((32, 32), Image.Resampling.NEAREST)
        return np.asarray(small.resize((64, 64), Image.Resampling.BILINEAR)) if index == 1 else mask

    report = run_preflight(make_pairs(tmp_path, mask_fn=resized))
    assert len(report.errors) == 1, problems(report)
    assert "masks/01.png" in report.errors[0] and "masks/00.png" not in report.errors[0]
    assert "blurred the edges" in report.errors[0]


def test_jpeg_masks_with_exact_values_get_a_warning(tmp_path):
    def solid(index, mask):
        out = np.zeros_like(mask)
        out[:, 32:] = 255  # one straight edge on the 8x8 JPEG grid survives compression exactly
        return out

    report = run_preflight(make_pairs(tmp_path, mask_ext=".jpg", mask_fn=solid, quality=100))
    assert not report.errors, problems(report)
    assert len(report.warnings) == 1 and "masks/00.jpg" in report.warnings[0]
    assert "save masks as PNG" in report.warnings[0]


def test_multiclass_regions_are_not_mistaken_for_blur(tmp_path):
    def five_classes(classes):
        classes = classes.copy()
        classes[40:44, 36:40], classes[2:5, 40:46] = 3, 4
        return Image.fromarray(classes.astype(np.uint8))

    report = run_preflight(make_class_folder(tmp_path, five_classes))
    assert not report.errors, problems(report)
    assert report.class_map.values == (0, 1, 2, 3, 4)


# ---- binary conventions, class counts -------------------------------------------------------------
def test_binary_convention_is_noted(tmp_path):
    report = run_preflight(make_pairs(tmp_path / "a", mask_fn=lambda i, m: (m // 255).astype(np.uint8)))
    assert report.ok, problems(report)
    assert any("binary {0,1}" in line for line in report.lines)
    report = run_preflight(make_pairs(tmp_path / "b"))
    assert any("binary {0,255}" in line for line in report.lines)


def test_masks_mixing_0_1_and_0_255_are_named_both_ways(tmp_path):
    report = run_preflight(make_pairs(tmp_path, mask_fn=lambda i, m: (m // 255).astype(np.uint8) if i == 0 else m))
    assert len(report.errors) == 1, problems(report)
    error = report.errors[0]
    assert "1 is {0,1} (masks/00.png)" in error and "2 are {0,255} (masks/01.png, masks/02.png)" in error
    assert "--fix-to" in error


def test_a_void_value_of_255_beside_0_1_masks_is_not_a_mixed_convention(tmp_path):
    def void_border(index, mask):
        mask = (mask // 255).astype(np.uint8)
        if index == 0:
            mask[mask == 1] = 0  # only background and void in this one
        mask[:4] = 255
        return mask

    report = run_preflight(make_pairs(tmp_path, mask_fn=void_border), ignore_value=255)
    assert not report.errors, problems(report)
    assert report.class_map.values == (0, 1) and report.class_map.ignore_value == 255


def test_masks_with_more_values_than_num_classes_are_listed(tmp_path):
    def with_stray_class(classes):
        classes = classes.copy()
        if classes[0, 4] == 2:  # only the first mask
            classes[40:44, 40:44] = 5
        return Image.fromarray(classes.astype(np.uint8))

    root = make_class_folder(tmp_path, with_stray_class)
    report = run_preflight(root, num_classes=3)
    assert len(report.errors) == 1, problems(report)
    assert "masks/0.png has {0, 1, 2, 5}" in report.errors[0] and "--num-classes 3" in report.errors[0]
    assert "masks/1.png" not in report.errors[0]


# ---- files ----------------------------------------------------------------------------------------
def test_unpaired_images_and_masks_are_named(tmp_path):
    make_pairs(tmp_path, stems=("00", "01"))
    Image.fromarray(isbi("02", "images")).save(tmp_path / "images" / "02.png")
    Image.fromarray(isbi("03", "masks")).save(tmp_path / "masks" / "03.png")
    report = run_preflight(tmp_path)
    assert not report.errors and "images/02.png" in problems(report) and "masks/03.png" in problems(report)


def test_image_and_mask_sizes_that_differ_are_fatal(tmp_path):
    make_pairs(tmp_path, mask_fn=lambda i, m: m[:32, :40] if i == 2 else m)
    report = run_preflight(tmp_path)
    assert len(report.errors) == 1, problems(report)
    assert "images/02.png' is 64x64 but its mask" in report.errors[0] and "is 40x32" in report.errors[0]


def test_mixed_channel_counts_are_a_warning(tmp_path):
    make_pairs(tmp_path)
    gray = isbi("01", "images")
    Image.fromarray(np.stack([gray, gray // 2, 255 - gray], axis=-1)).save(tmp_path / "images" / "01.png")
    report = run_preflight(tmp_path)
    assert not report.errors and "mixed channel counts" in problems(report)


def test_empty_and_truncated_files_are_named(tmp_path):
    make_pairs(tmp_path, stems=("00", "01", "02", "03"))
    (tmp_path / "images" / "01.png").write_bytes(b"")
    data = (tmp_path / "masks" / "02.png").read_bytes()
    (tmp_path / "masks" / "02.png").write_bytes(data[:len(data) // 2])
    report = run_preflight(tmp_path)
    text = problems(report)
    assert len(report.errors) == 2, text
    assert "images/01.png' is empty (0 bytes)" in text
    assert "masks/02.png' is corrupt or truncated" in text
    assert report.class_map is not None and report.class_map.values == (0, 255)  # the rest is still checked


def test_16_bit_images_are_noted_as_handled(tmp_path):
    make_pairs(tmp_path)
    for stem in ("00", "01", "02"):
        Image.fromarray(isbi(stem, "images").astype(np.uint16) * 257).save(tmp_path / "images" / f"{stem}.png")
    report = run_preflight(tmp_path)
    assert report.ok, problems(report)
    assert any("16-bit" in line and "65535" in line for line in report.lines)


def test_a_class_under_one_percent_gets_a_note_with_what_to_do(tmp_path):
    def speck(index, mask):
        out = np.zeros_like(mask)
        out[10:13, 10:13] = 255
        return out

    report = run_preflight(make_pairs(tmp_path, mask_fn=speck))
    assert not report.errors and not report.warnings  # a fact about the data, not a mistake in it
    notes = [line for line in report.lines if "very unbalanced" in line]
    assert len(notes) == 1 and "'255' (0.22%)" in notes[0] and "--class-weights auto" in notes[0]


# ---- --fix-to and train ---------------------------------------------------------------------------
@pytest.fixture
def messy_splits(tmp_path) -> Path:
    """train/ with JPEG masks of both binary conventions and an image without a mask; val/; test/."""
    root = tmp_path / "messy"
    make_pairs(root / "train", stems=("00", "01", "02"), mask_ext=".jpg", quality=90)
    make_pairs(root / "train", stems=("03",), mask_fn=lambda i, m: (m // 255).astype(np.uint8))
    make_pairs(root / "val", stems=("04",))
    Image.fromarray(isbi("05", "images")).save(root / "train" / "images" / "05.png")
    (root / "test" / "images").mkdir(parents=True)
    Image.fromarray(isbi("06", "images")).save(root / "test" / "images" / "06.png")
    return root


def test_fix_to_writes_a_copy_that_passes_check_and_leaves_the_originals(messy_splits, tmp_path):
    before = tree_digest(messy_splits)
    fixed = tmp_path / "fixed"
    result = run_cli("check", messy_splits, "--fix-to", fixed)
    assert result.rc == 0, result.output
    assert "JPEG compression blurred the edges" in result.stdout and "masks mix two binary conventions" in result.stdout
    assert "left out" in result.stdout and "05.png: no mask" in result.stdout
    assert tree_digest(messy_splits) == before
    assert sorted(str(p.relative_to(fixed)) for p in fixed.rglob("*.png")) == [
        "test/images/06.png", "train/images/00.png", "train/images/01.png", "train/images/02.png",
        "train/images/03.png", "train/masks/00.png", "train/masks/01.png", "train/masks/02.png",
        "train/masks/03.png", "val/images/04.png", "val/masks/04.png"]
    for stem in ("00", "01", "03"):
        written = np.asarray(Image.open(fixed / "train" / "masks" / f"{stem}.png"))
        truth = (isbi(stem, "masks") // 255).astype(np.uint8)
        assert set(np.unique(written).tolist()) <= {0, 1}
        assert (written == truth).mean() > 0.97  # JPEG edges snapped back to the nearest class
    again = run_cli("check", fixed)
    assert again.rc == 0 and again.stdout.strip().endswith("ok"), again.output
    refused = run_cli("check", messy_splits, "--fix-to", fixed)
    assert_clean_failure(refused)
    assert "not empty" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_train_refuses_a_folder_with_a_fatal_problem(tmp_path):
    data = make_pairs(tmp_path / "data", mask_ext=".jpg", quality=90)
    result = run_cli("train", data, "--base-channels", "4", "--depth", "2", "--crop", "64", "-e", "2",
                     "--out", tmp_path / "run", *TINY_FLAGS)
    assert_clean_failure(result)
    assert "masks/00.jpg" in result.stderr and "JPEG compression blurred the edges" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_class_under_one_percent_is_noted_but_check_still_passes(tmp_path):
    from conftest import run_cli

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[:20] = 1
    mask[0, 0] = 2  # 1 pixel of 1600: 0.06%
    Image.fromarray((mask * 60).astype(np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    result = run_cli("check", tmp_path)
    assert result.rc == 0, result.output
    assert "very unbalanced classes" in result.stdout and "'2'" in result.stdout
