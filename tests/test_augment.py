"""Batched augmentation: exact permutations, one resample, masks stay class indices, reproducible streams."""
from __future__ import annotations

import io
import math

import pytest
import torch
import yaml

from seglab.data.augment import BatchAugmenter
from seglab.data.augment_config import AUGMENT_PRESETS, AugmentConfig, augment_config_from_dict, augment_preset
from seglab.data.classmap import IGNORE_INDEX
from seglab.errors import SeglabError
from seglab.viz.preview import save_augment_preview

SIZE = 64


def _batch(n: int = 6, height: int = SIZE, width: int = SIZE, classes: int = 3, seed: int = 0):
    """Random images (N, 1, H, W), masks (N, H, W) in 0..classes-1 and weights (N, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, height, width, generator=generator)
    masks = torch.randint(0, classes, (n, height, width), generator=generator)
    weights = torch.rand(n, height, width, generator=generator) + 0.5
    return images, masks, weights


def _pixel_ids(n: int, height: int, width: int) -> torch.Tensor:
    """(N, H, W) int64: every pixel of every sample a different value, so positions can be traced."""
    return torch.arange(n * height * width).reshape(n, height, width)


def _dihedral(plane: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a (H, W) tensor."""
    turned = [torch.rot90(plane, k, dims=(0, 1)) for k in range(4)]
    return turned + [torch.flip(t, dims=(1,)) for t in turned]


def _is_window_of_dihedral(out: torch.Tensor, full: torch.Tensor) -> bool:
    """out (h, w) equals a whole-pixel window of some flip/rotation of full (H, W) with unique values."""
    for candidate in _dihedral(full):
        where = (candidate == out[0, 0]).nonzero()
        if len(where) != 1:
            continue
        top, left = where[0].tolist()
        window = candidate[top:top + out.shape[0], left:left + out.shape[1]]
        if window.shape == out.shape and torch.equal(window, out):
            return True
    return False


def test_flips_and_rotations_are_exact_permutations_moving_image_and_mask_together():
    n = 16
    masks = _pixel_ids(n, SIZE, SIZE)
    images = masks[:, None].float()  # the image IS the mask, so both must land in the same places
    augmenter = BatchAugmenter(augment_preset("light"), seed=3)
    out_images, out_masks, _ = augmenter(images, masks)
    assert torch.equal(out_images[:, 0].round().long(), out_masks)
    assert (out_images[:, 0] - out_masks).abs().max() < 1e-2  # float rounding of the grid only
    for k in range(n):
        assert torch.equal(out_masks[k].flatten().sort().values, masks[k].flatten())  # a permutation
        assert _is_window_of_dihedral(out_masks[k], masks[k])
    moved = sum(not torch.equal(out_masks[k], masks[k]) for k in range(n))
    assert moved >= n // 2  # 7 of the 8 orientations move pixels


def test_non_square_images_are_only_turned_by_180_degrees():
    masks = _pixel_ids(12, 24, 40)
    config = AugmentConfig(rot90_p=1.0)
    _, out_masks, _ = BatchAugmenter(config, seed=0)(masks[:, None].float(), masks)
    assert out_masks.shape == masks.shape
    for k in range(12):
        assert torch.equal(out_masks[k], torch.rot90(masks[k], 2, dims=(0, 1)))


def test_elastic_with_sigma_zero_and_identity_affine_return_the_input():
    images, masks, weights = _batch()
    config = AugmentConfig(affine_p=1.0, rotate_degrees=0.0, scale=(1.0, 1.0), shear_degrees=0.0,
                           translate=0.0, elastic_p=1.0, elastic_sigma=0.0)
    out_images, out_masks, out_weights = BatchAugmenter(config, seed=1)(images, masks, weights)
    torch.testing.assert_close(out_images, images, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_weights, weights, atol=1e-5, rtol=0)
    assert torch.equal(out_masks, masks)


def test_preset_none_returns_the_batch_untouched():
    images, masks, weights = _batch()
    out = BatchAugmenter(augment_preset("none"), seed=0)(images, masks, weights)
    assert out[0] is images and out[1] is masks and out[2] is weights


def test_masks_only_gain_the_ignore_index_where_sampling_leaves_the_image():
    images, masks, weights = _batch(n=8, classes=3)
    config = augment_preset("strong", affine_p=1.0, rotate_degrees=30.0, scale=(0.7, 0.8))
    out_images, out_masks, out_weights = BatchAugmenter(config, seed=5)(images, masks, weights)
    values = set(out_masks.unique().tolist())
    assert values <= {0, 1, 2, IGNORE_INDEX}
    assert IGNORE_INDEX in values  # zooming out by 0.7 samples outside the image
    assert (out_weights[out_masks == IGNORE_INDEX] == 0).all()
    assert torch.isfinite(out_images).all()
    assert out_masks.dtype == torch.int64


def test_ignored_input_pixels_stay_ignored_and_never_become_classes():
    images, masks, _ = _batch(n=4, classes=2)
    masks[:, :8] = IGNORE_INDEX
    _, out_masks, _ = BatchAugmenter(augment_preset("paper"), seed=2)(images, masks)
    assert set(out_masks.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert (out_masks == IGNORE_INDEX).sum() >= 4 * 8 * SIZE * 0.9  # the strip moves but keeps its area


def test_elastic_displacement_is_measured_in_pixels():
    n, sigma = 16, 3.0
    columns = torch.arange(SIZE, dtype=torch.float32).expand(n, 1, SIZE, SIZE).contiguous()
    config = AugmentConfig(elastic_p=1.0, elastic_grid=3, elastic_sigma=sigma)
    out, _, _ = BatchAugmenter(config, seed=4)(columns, torch.zeros(n, SIZE, SIZE, dtype=torch.long))
    inner = slice(12, SIZE - 12)  # away from the reflected border
    shift = (out - columns)[..., inner, inner]
    rms = shift.pow(2).mean().sqrt().item()
    # Bicubic interpolation of N(0, sigma) nodes: sigma at the nodes, somewhat less between them.
    assert 0.4 * sigma < rms < 1.2 * sigma


def test_same_seed_gives_the_same_output_and_different_seeds_differ():
    images, masks, weights = _batch()
    config = augment_preset("strong")
    first = BatchAugmenter(config, seed=7)(images, masks, weights, out_size=(40, 48))
    again = BatchAugmenter(config, seed=7)(images, masks, weights, out_size=(40, 48))
    other = BatchAugmenter(config, seed=8)(images, masks, weights, out_size=(40, 48))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])


def test_augmenting_a_batch_never_moves_values_between_host_and_device(monkeypatch):
    """On a GPU each host->device copy of a Python list (torch.tensor(..., device="cuda")) and each
    device->host read (.item(), bool(), .tolist()) stalls the stream. The augmenter runs once per
    step, so it must make neither: all randomness and constants are made on the batch's device."""
    images, masks, weights = _batch(n=5, height=48, width=56)
    augmenter = BatchAugmenter(augment_preset("strong"), seed=3)
    augmenter(images, masks, weights, out_size=(32, 40))  # the generator is created on the first batch

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"the augmenter called {name} while augmenting a batch")
        return call

    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, refuse(f"torch.{name}"))
    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse(f"Tensor.{name}"))
    sizes = [(32, 40), (48, 56), (60, 60)]
    shapes = [tuple(tensor.shape) for size in sizes for tensor in augmenter(images, masks, weights, out_size=size)]
    monkeypatch.undo()
    assert shapes == [shape for h, w in sizes for shape in ((5, 1, h, w), (5, h, w), (5, h, w))]


def test_state_dict_round_trip_continues_the_same_stream():
    images, masks, weights = _batch()
    config = augment_preset("strong")
    running = BatchAugmenter(config, seed=11)
    running(images, masks, weights)
    buffer = io.BytesIO()
    torch.save(running.state_dict(), buffer)  # plain tensors and ints: weights_only loading works
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = running(images, masks, weights, out_size=(32, 32))
    resumed = BatchAugmenter(config, seed=0)
    resumed.load_state_dict(state)
    got = resumed(images, masks, weights, out_size=(32, 32))
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_crops_have_the_requested_shape_and_come_from_inside_the_image():
    n = 12
    masks = _pixel_ids(n, SIZE, SIZE)
    weights = torch.ones(n, SIZE, SIZE)
    for config in (AugmentConfig(), augment_preset("light")):
        out_images, out_masks, out_weights = BatchAugmenter(config, seed=9)(
            masks[:, None].float(), masks, weights, out_size=(24, 40))
        assert out_images.shape == (n, 1, 24, 40) and out_masks.shape == (n, 24, 40)
        assert out_weights.shape == (n, 24, 40) and (out_weights == 1).all()
        assert (out_masks != IGNORE_INDEX).all()
        for k in range(n):
            assert _is_window_of_dihedral(out_masks[k], masks[k])
    windows = {tuple(out_masks[k, 0, :2].tolist()) for k in range(n)}
    assert len(windows) > 1  # the windows are random, not all the same corner


def test_a_window_larger_than_the_image_is_centred_and_padded_with_ignore():
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    out_images, out_masks, _ = BatchAugmenter(AugmentConfig(), seed=0)(
        torch.rand(2, 1, 32, 32), masks, out_size=(40, 40))
    assert out_images.shape == (2, 1, 40, 40)
    assert (out_masks[:, 4:36, 4:36] == 0).all()
    assert (out_masks[:, :4] == IGNORE_INDEX).all() and (out_masks[:, :, 36:] == IGNORE_INDEX).all()


def test_intensity_transforms_change_images_but_not_masks():
    images, masks, weights = _batch(n=8)
    config = AugmentConfig(gamma_p=1.0, gamma=(0.5, 2.0), contrast_p=1.0, contrast=0.5, brightness_p=1.0,
                           brightness=0.2, blur_p=1.0, blur_sigma=(0.5, 1.5), noise_p=1.0, noise_std=0.05)
    out_images, out_masks, out_weights = BatchAugmenter(config, seed=0)(images, masks, weights)
    assert out_images.shape == images.shape and torch.isfinite(out_images).all()
    assert (out_images - images).abs().mean() > 0.01
    assert out_masks is masks and out_weights is weights


def test_config_round_trips_through_yaml_and_presets_build():
    for name in AUGMENT_PRESETS:
        config = augment_preset(name)
        assert augment_config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    tuned = augment_config_from_dict({"preset": "paper", "elastic_sigma": 6, "scale": [0.9, 1.1]})
    assert tuned.elastic_sigma == 6.0 and tuned.scale == (0.9, 1.1) and tuned.hflip_p == 0.5
    assert augment_preset("light", hflip_p=0.0).hflip_p == 0.0


def test_bad_augmentation_settings_raise_errors_that_say_what_to_use():
    with pytest.raises(SeglabError, match="none, light, paper, photo, strong"):
        augment_preset("heavy")
    with pytest.raises(SeglabError, match="unknown augmentation setting"):
        augment_config_from_dict({"flip": 0.5})
    with pytest.raises(SeglabError, match="probability"):
        AugmentConfig(hflip_p=1.5)
    with pytest.raises(SeglabError, match="scale"):
        augment_config_from_dict({"scale": [1.2, 0.8]})


def test_resident_batches_visit_every_image_once_per_epoch_split_across_ranks():
    from seglab.data.loaders import ResidentBatches

    images, masks, weights = _batch(n=5)

    def index_of(batch: torch.Tensor) -> list[int]:
        return [int((images == image).all(dim=(1, 2, 3)).nonzero()) for image in batch]

    single = ResidentBatches(images, masks, weights, batch_size=2, seed=3)
    single.set_epoch(0)
    order = [i for batch_images, *_ in single for i in index_of(batch_images)]
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert [i for b, *_ in single for i in index_of(b)] == order  # same (seed, epoch), same order
    single.set_epoch(1)
    assert [i for b, *_ in single for i in index_of(b)] != order
    ranks = []
    for rank in range(2):
        shard = ResidentBatches(images, masks, weights, batch_size=2, seed=3, rank=rank, world_size=2)
        shard.set_epoch(0)
        ranks.append([i for b, *_ in shard for i in index_of(b)])
    assert len(ranks[0]) == len(ranks[1]) == 3  # padded to equal shares
    assert set(ranks[0]) | set(ranks[1]) == {0, 1, 2, 3, 4}


def test_preview_writes_a_png(tmp_path):
    images, masks, _ = _batch(n=3, classes=2)
    path = tmp_path / "previews" / "augment.png"
    written = save_augment_preview(images, masks, BatchAugmenter(augment_preset("strong"), seed=0), path,
                                   n=4, out_size=(48, 48))
    assert written == path
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["augment.png"]  # no temporary file left


def test_paper_augmentation_and_the_border_weighted_loss_train_through_the_cli(tmp_path):
    import json

    from conftest import TINY_FLAGS, copy_isbi_crop, run_cli

    for stem in ("00", "01", "02", "03", "04"):
        copy_isbi_crop("train", "images", stem, tmp_path / "data" / "images", (0, 0, 128, 128))
        copy_isbi_crop("train", "masks", stem, tmp_path / "data" / "masks", (0, 0, 128, 128))
    run = tmp_path / "run"
    result = run_cli("train", tmp_path / "data", "--augment", "paper", "--border-weight", "10,5", "--crop", "64",
                     "-e", "2", "-b", "2", "--base-channels", "4", "--depth", "2", "--out", run, *TINY_FLAGS)
    assert result.rc == 0, result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows)
    refused = run_cli("train", tmp_path / "data", "--border-weight", "10", "--out", tmp_path / "bad", *TINY_FLAGS)
    assert refused.rc == 1 and "W0,SIGMA" in refused.stderr and "Traceback" not in refused.output
