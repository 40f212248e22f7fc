"""Data held in memory trains, prepares and evaluates as a folder would: arrays, PIL images, tensors
and paths, as (images, masks), as pairs or as a Dataset, written once into a cached folder; anything
else is one SeglabError naming what was given and what is accepted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import seglab
from conftest import ISBI
from seglab.data.io import read_mask
from seglab.errors import SeglabError

QUIET = lambda *args, **kwargs: None  # noqa: E731
TINY = dict(base_channels=4, depth=2, batch_size=2, crop=64, augment="none", device="cpu", epochs=1,
            progress=False, log=QUIET)


@pytest.fixture
def slices(monkeypatch, tmp_path):
    """Six 96x80 crops of ISBI slices and their masks (uint8 0/255), with the cache under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    names = sorted((ISBI / "train" / "images").iterdir())[:6]
    images = [np.asarray(Image.open(path))[:96, :80] for path in names]
    masks = [np.asarray(Image.open(ISBI / "train" / "masks" / path.name))[:96, :80] for path in names]
    return images, masks


def test_arrays_train_with_their_own_validation_and_the_folder_is_made_once(slices, tmp_path):
    images, masks = slices
    run = seglab.train((images[:4], masks[:4]), val_data=list(zip(images[4:], masks[4:])), out=tmp_path / "run",
                       **TINY)
    recipe = seglab.Recipe.load(run.run_dir / "recipe.yaml")
    assert len(recipe.train_pairs) == 4 and len(recipe.val_pairs) == 2
    folder = recipe.train_pairs[0].image.parents[2]
    assert folder.parent == tmp_path / "cache" / "seglab" / "arrays"
    np.testing.assert_array_equal(read_mask(recipe.val_pairs[1].mask), masks[5])   # written losslessly
    again = seglab.prepare((images[:4], masks[:4]), val_data=list(zip(images[4:], masks[4:])), log=QUIET,
                           device="cpu")
    assert again.train_pairs[0].image.parents[2] == folder                          # same content, same folder
    scores = seglab.evaluate(run.best_checkpoint, (images[4:], masks[4:]), device="cpu")
    assert len(scores.images) == 2 and 0 <= scores.pooled["mdice"] <= 1


def test_pil_images_path_pairs_and_a_dataset_of_tensors_are_taken(slices, tmp_path):
    images, masks = slices
    pil = seglab.prepare(([Image.fromarray(i) for i in images], [Image.fromarray(m) for m in masks]), log=QUIET,
                         device="cpu")
    assert len(pil.train_pairs) + len(pil.val_pairs) == 6
    names = sorted((ISBI / "train" / "images").iterdir())[:3]
    paths = seglab.check(seglab.data.in_memory.materialise([(p, ISBI / "train" / "masks" / p.name) for p in names]))
    assert paths.ok and "3 image/mask pairs" in str(paths)

    class Slices(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, index):  # (C, H, W) float in [0, 1], (H, W) int64 classes
            return torch.from_numpy(images[index] / 255.0).float()[None], torch.from_numpy(masks[index] // 255)

    dataset = seglab.prepare(Slices(), log=QUIET, device="cpu")
    assert dataset.train_pairs[0].image.suffix == ".tif" and dataset.class_map.num_classes == 2


@pytest.mark.parametrize("data, words", [
    (42, "data is a int; seglab takes a data folder, a tuple (images, masks)"),
    (([np.zeros((8, 8))] * 2, [np.zeros((8, 8))]), "2 images but 1 masks"),
    (([np.zeros((8, 8))], [np.full((8, 8), 0.5)]), "the mask holds non-integer values"),
    (([np.zeros((8, 8))], ["missing.png"]), "the mask file 'missing.png' does not exist"),
    (([np.zeros((8, 8))], [{"mask": 1}]), "the mask is a dict"),
    ([], "data holds no images"),
])
def test_anything_else_is_one_line_naming_what_was_given(data, words, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(SeglabError) as error:
        seglab.train(data, **TINY)
    assert words in str(error.value) and "\n" not in str(error.value)
