"""--oversample: the rare classes' index, crops centred on their pixels on both training paths, and
draws that depend only on (seed, epoch, place), so DDP ranks and resumed runs agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import config_from_dict
from seglab.data.augment import BatchAugmenter
from seglab.data.augment_config import AugmentConfig
from seglab.data.classmap import IGNORE_INDEX
from seglab.data.loaders import ResidentBatches
from seglab.data.oversampling import LOCATIONS_PER_CLASS, RareLocations, rare_classes, window_start
from seglab.engine import builders
from seglab.engine.recipe import Recipe
from seglab.errors import SeglabError

CROP = 17  # odd: the crop's centre pixel is exactly the drawn one


class OneProcess:
    rank, world_size = 0, 1


def squares_folder(root, n: int = 6, size: int = 64):
    """n 3-class images: background 0, a band of class 1, and one 3x3 square of class 2 (0.2% of
    the pixels) away from the border; one image without the square. Returns the folder."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[:, :20] = 1
        if i:
            row, col = rng.integers(12, size - 12, 2)
            mask[row - 1:row + 2, col - 1:col + 2] = 2
        image = (rng.random((size, size)) * 80 + mask * 60).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def recipe_for(data, **train) -> Recipe:
    config = {"data": {"root": str(data), "validation": 0.0, "crop": [CROP], "num_classes": 3},
              "train": {"device": "cpu", "augment": "none", "batch_size": 2, "seed": 5, **train}}
    return Recipe.from_data(config_from_dict(config))


def test_rare_classes_are_those_under_two_percent_else_the_rarest():
    assert rare_classes(np.array([900, 95, 5, 0])) == [2]  # absent classes are never rare
    assert rare_classes(np.array([500, 300, 19, 1, 180])) == [2, 3]
    assert rare_classes(np.array([78, 22])) == [1]  # binary: the smaller class
    assert rare_classes(np.array([10, 0])) == []


def test_the_index_keeps_a_spread_of_each_rare_class_pixels_per_image():
    masks = [np.zeros((40, 50), np.int64) for _ in range(2)]
    masks[0][10:30, 5:45] = 1  # 800 pixels of class 1: kept evenly, 256 of them
    masks[0][0, 0] = 2
    masks[1][:, :] = IGNORE_INDEX
    masks[1][3, 4] = 1
    rare = RareLocations.from_masks(masks, num_classes=3, share=0.5)
    assert rare.classes == [1, 2]
    first = rare.locations[0][1]
    assert first.dtype == np.int32 and len(first) == LOCATIONS_PER_CLASS
    assert (masks[0][first[:, 0], first[:, 1]] == 1).all()
    assert tuple(first[0]) == (10, 5) and tuple(first[-1]) == (29, 44)  # first and last pixel kept
    assert list(rare.locations[1]) == [1] and rare.locations[1][1].tolist() == [[3, 4]]  # ignored: never
    assert rare.nbytes() == (LOCATIONS_PER_CLASS + 1 + 1) * 2 * 4
    assert window_start(3, 17, 64) == 0 and window_start(40, 17, 64) == 32 and window_start(63, 17, 64) == 47


def test_the_share_of_centred_crops_is_p_and_the_draws_are_a_function_of_the_place():
    rare = RareLocations([1], [{1: np.array([[5, 6]], np.int32)}])
    draws = [rare.draw(0, 0.3, seed=1, epoch=2, slot=slot) for slot in range(2000)]
    assert sum(d is not None for d in draws) == pytest.approx(600, abs=80)
    assert {d for d in draws if d is not None} == {(5, 6)}
    assert draws == [rare.draw(0, 0.3, seed=1, epoch=2, slot=slot) for slot in range(2000)]
    assert all(rare.draw(0, 0.0, 1, 2, slot) is None for slot in range(100))


def test_loader_crops_centre_on_the_rare_class(tmp_path, monkeypatch):
    recipe = recipe_for(squares_folder(tmp_path / "data"), oversample=1.0)
    monkeypatch.setattr(builders, "RESIDENT_FRACTION", 0.0)  # the DataLoader path, as for a large data set
    batches, augmenter_crop = builders.make_train_batches(recipe, torch.device("cpu"), OneProcess(), log=print)
    assert augmenter_crop is None and batches.dataset.rare.classes == [2]
    batches.set_epoch(0)
    centres = torch.cat([masks[:, CROP // 2, CROP // 2] for _, masks, _, _ in batches])
    assert len(centres) == 6 and (centres == 2).sum() == 5  # the image without a square is cropped at random
    batches.dataset.oversample = 0.0
    plain = torch.cat([masks[:, CROP // 2, CROP // 2] for _, masks, _, _ in batches])
    assert (plain == 2).sum() <= 1


@pytest.mark.parametrize("world_size", [1, 2])
def test_resident_crops_centre_on_the_rare_class_through_flips_and_turns_on_every_rank(tmp_path, world_size):
    recipe = recipe_for(squares_folder(tmp_path / "data"), oversample=0.5)
    turns = BatchAugmenter(AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90_p=0.5), seed=0)
    placed, centred = {}, 0
    for rank in range(world_size):
        class Rank:
            pass
        Rank.rank, Rank.world_size = rank, world_size
        batches, crop = builders.make_train_batches(recipe, torch.device("cpu"), Rank(), log=print)
        assert isinstance(batches, ResidentBatches) and crop == (CROP, CROP)
        batches.set_epoch(3)
        for images, masks, weights, centres in batches:
            _, out, _ = turns(images, masks, weights, out_size=crop, centres=centres)
            chosen = ~torch.isnan(centres[:, 0])
            assert (out[chosen, CROP // 2, CROP // 2] == 2).all()
            centred += int(chosen.sum())
            for image, centre in zip(images, centres):
                placed.setdefault(float(image.sum()), []).append(tuple(centre.tolist()))
    assert centred >= 1
    if world_size == 2:  # the ranks' shares together draw what one process draws
        one, _ = builders.make_train_batches(recipe, torch.device("cpu"), OneProcess(), log=print)
        one.set_epoch(3)
        alone = {}
        for images, _, _, centres in one:
            for image, centre in zip(images, centres):
                alone.setdefault(float(image.sum()), []).append(tuple(centre.tolist()))
        as_text = lambda places: {k: sorted(map(str, v)) for k, v in places.items()}  # noqa: E731 (NaN != NaN)
        assert as_text(alone) == as_text(placed)


def test_oversampling_needs_crops_and_is_off_by_default(tmp_path):
    data = squares_folder(tmp_path / "data")
    recipe = Recipe.from_data(config_from_dict({"data": {"root": str(data), "validation": 0.0, "num_classes": 3},
                                                "train": {"device": "cpu", "oversample": 0.5}}))
    with pytest.raises(SeglabError, match="--crop"):
        builders.make_train_batches(recipe, torch.device("cpu"), OneProcess(), log=print)
    batches, _ = builders.make_train_batches(recipe_for(data), torch.device("cpu"), OneProcess(), log=print)
    assert batches.rare is None and all(centres is None for *_, centres in batches)


def test_binary_masks_oversample_their_smaller_class(isbi_dir):
    config = {"data": {"root": str(isbi_dir), "validation": 20, "scale": 0.25, "crop": [CROP]},
              "train": {"device": "cpu", "augment": "none", "batch_size": 4, "oversample": 1.0}}
    recipe = Recipe.from_data(config_from_dict(config))
    batches, crop = builders.make_train_batches(recipe, torch.device("cpu"), OneProcess(), log=print)
    assert recipe.class_map.is_binary and batches.rare.classes == [0]  # membrane: ~22% of the pixels
    augmenter = BatchAugmenter(AugmentConfig(), seed=0)
    batches.set_epoch(0)
    for images, masks, weights, centres in batches:
        _, out, _ = augmenter(images, masks, weights, out_size=crop, centres=centres)
        for sample, (row, col) in zip(out, centres.long().tolist()):
            # near the border the window moves inside the image: the drawn pixel is then off-centre
            top, left = window_start(row, CROP, masks.shape[1]), window_start(col, CROP, masks.shape[2])
            assert sample[row - top, col - left] == 0


def test_centred_windows_follow_rotations_and_zooms_to_within_a_pixel(tmp_path):
    recipe = recipe_for(squares_folder(tmp_path / "data"), oversample=1.0)
    batches, crop = builders.make_train_batches(recipe, torch.device("cpu"), OneProcess(), log=print)
    affine = BatchAugmenter(AugmentConfig(affine_p=1.0, rotate_degrees=45, scale=(0.8, 1.25), hflip_p=0.5,
                                          rot90_p=0.5), seed=1)
    batches.set_epoch(0)
    for images, masks, weights, centres in batches:
        _, out, _ = affine(images, masks, weights, out_size=crop, centres=centres)
        chosen = ~torch.isnan(centres[:, 0])
        near = out[chosen, CROP // 2 - 1:CROP // 2 + 2, CROP // 2 - 1:CROP // 2 + 2]  # (n, 3, 3)
        assert (near == 2).flatten(1).any(1).all()
