"""Carvana: Kaggle-shaped zips unpacked into seglab's layout, zip slip refused, and the download's
failure paths (no kaggle package, no credentials) ending in one line."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, SUBPROCESS_ENV, assert_clean_failure, run_cli
from seglab.config import load_config
from seglab.data.carvana import unpack_carvana
from seglab.data.discover import discover
from seglab.data.preflight import run_preflight
from seglab.errors import SeglabError

CARS = ("0cdf5b5d0ce1_01", "0cdf5b5d0ce1_02", "fff9b3a5373f_16")
HAS_KAGGLE = importlib.util.find_spec("kaggle") is not None


def car_picture(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A small RGB 'car' photo (a grey car on a light floor with noise) and its {0,1} mask."""
    rng = np.random.default_rng(index)
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[12 + index:30, 8 + 2 * index:50] = 1
    photo = np.where(mask[..., None] == 1, [70, 80, 95], [225, 225, 220]) + rng.integers(-12, 12, (40, 60, 3))
    return np.clip(photo, 0, 255).astype(np.uint8), mask


def gif_bytes(mask: np.ndarray) -> bytes:
    """A mask as Carvana ships it: a GIF whose palette indices are 0 and 1."""
    import io

    image = Image.fromarray(mask, "P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    return buffer.getvalue()


def jpg_bytes(photo: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture
def kaggle_zips(tmp_path) -> tuple[Path, Path]:
    """train_hq.zip (train_hq/<car>.jpg) and train_masks.zip (train_masks/<car>_mask.gif), as on Kaggle."""
    train, masks = tmp_path / "train_hq.zip", tmp_path / "train_masks.zip"
    with zipfile.ZipFile(train, "w") as images_zip, zipfile.ZipFile(masks, "w") as masks_zip:
        images_zip.writestr("train_hq/", b"")
        masks_zip.writestr("train_masks/", b"")
        for index, car in enumerate(CARS):
            photo, mask = car_picture(index)
            images_zip.writestr(f"train_hq/{car}.jpg", jpg_bytes(photo))
            masks_zip.writestr(f"train_masks/{car}_mask.gif", gif_bytes(mask))
    return train, masks


def test_unpack_carvana_makes_the_seglab_layout_that_passes_check(kaggle_zips, tmp_path):
    dest = tmp_path / "carvana"
    assert unpack_carvana(*kaggle_zips, dest) == (3, 3)
    assert sorted(p.name for p in (dest / "images").iterdir()) == [f"{car}.jpg" for car in CARS]
    assert sorted(p.name for p in (dest / "masks").iterdir()) == [f"{car}_mask.gif" for car in CARS]
    assert sorted(p.name for p in dest.iterdir()) == ["images", "masks"]  # no staging folder left behind
    scan = discover(dest).splits["all"]
    assert scan.mask_suffix == "_mask" and len(scan.pairs) == 3
    report = run_preflight(dest)
    assert report.ok, report.errors + report.warnings
    assert report.class_map.values == (0, 1)
    with pytest.raises(SeglabError, match="already holds files"):
        unpack_carvana(*kaggle_zips, dest)


def test_seglab_data_carvana_with_downloaded_zips_unpacks_and_checks(kaggle_zips, tmp_path):
    dest = tmp_path / "carvana"
    result = run_cli("data", "carvana", "--dest", dest, "--train-zip", kaggle_zips[0], "--masks-zip", kaggle_zips[1])
    assert result.rc == 0, result.output
    assert "unpacked 3 images" in result.stdout and "3 image/mask pairs (mask suffix '_mask')" in result.stdout
    assert "binary {0,1}" in result.stdout and result.stdout.count("\nok\n") == 1


@pytest.mark.parametrize("evil", ["train_hq/../../evil.jpg", "/tmp/evil.jpg", "..\\evil.jpg"])
def test_zip_slip_names_are_refused_before_anything_is_written(kaggle_zips, tmp_path, evil):
    train = tmp_path / "evil.zip"
    with zipfile.ZipFile(kaggle_zips[0]) as good, zipfile.ZipFile(train, "w") as bad:
        for info in good.infolist():
            bad.writestr(info, good.read(info))
        bad.writestr(zipfile.ZipInfo(evil), b"not a car")
    dest = tmp_path / "deep" / "carvana"
    with pytest.raises(SeglabError, match="unsafe name") as error:
        unpack_carvana(train, kaggle_zips[1], dest)
    assert str(train) in str(error.value)
    assert not dest.exists()
    assert not list(tmp_path.rglob("evil.jpg"))


def test_a_damaged_zip_is_one_line(tmp_path, kaggle_zips):
    broken = tmp_path / "train_hq_broken.zip"
    broken.write_bytes(kaggle_zips[0].read_bytes()[:100])
    result = run_cli("data", "carvana", "--dest", tmp_path / "out", "--train-zip", broken,
                     "--masks-zip", kaggle_zips[1])
    assert_clean_failure(result)
    assert "not a readable zip" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def run_without_kaggle_setup(tmp_path: Path, extra: dict | None = None):
    """`seglab data carvana` with HOME an empty folder and no KAGGLE_* variables (no credentials anywhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(SUBPROCESS_ENV, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), **(extra or {}))
    return subprocess.run([sys.executable, "-m", "seglab", "data", "carvana", "--dest", str(tmp_path / "carvana")],
                          env=env, capture_output=True, text=True, timeout=120)


def test_without_credentials_one_line_says_how_to_get_them(tmp_path):
    done = run_without_kaggle_setup(tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no Kaggle credentials" in lines[0] and "kaggle.json" in lines[0] and "KAGGLE_KEY" in lines[0]
    assert not (tmp_path / "carvana" / "images").exists()


@pytest.mark.skipif(HAS_KAGGLE, reason="the kaggle package is installed here")
def test_without_the_kaggle_package_one_line_says_pip_install(tmp_path):
    done = run_without_kaggle_setup(tmp_path, {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "0" * 32})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install kaggle" in lines[0], done.stderr


@pytest.mark.skipif(not HAS_KAGGLE, reason="the kaggle package is not installed here")
def test_with_the_package_but_kaggle_unreachable_or_refusing_one_line(tmp_path):
    done = run_without_kaggle_setup(tmp_path, {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "0" * 32})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--train-zip" in lines[0], done.stderr


def test_carvana_preset_is_the_pytorch_unet_recipe():
    config = load_config(REPO / "configs" / "carvana.yaml")
    assert config.data.root == "data/carvana" and config.data.scale == 0.5
    assert (config.train.epochs, config.train.batch_size, config.train.learning_rate) == (5, 1, 1e-5)
    assert config.train.optimizer == "rmsprop" and config.model.name == "unet"
    assert yaml.safe_load((REPO / "configs" / "carvana.yaml").read_text())["data"]["crop"] is None
