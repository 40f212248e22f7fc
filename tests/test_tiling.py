"""Overlap-tile prediction: exact tile geometry, blending, whole-image agreement, TIFF streaming."""
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch

from seglab.inference.tiff_io import TiffRows, predict_tiff_tiled
from seglab.inference.tiling import gaussian_profile, predict_bands, predict_tiled, tile_grid, tile_starts
from seglab.models import UNet
from seglab.models.outputs import probabilities_to_classes
from seglab.padding import mirror_indices, mirror_pad


# ---- geometry -----------------------------------------------------------------------------------
def test_tile_starts_known_answers():
    # 600 - 256 = 344 to cover in steps of at most 128: ceil(344 / 128) = 3 gaps of 114.67.
    assert tile_starts(size=600, tile=256, overlap=0.5) == [0, 115, 229, 344]
    assert tile_starts(size=512, tile=256, overlap=0.5) == [0, 128, 256]  # exact fit
    assert tile_starts(size=512, tile=256, overlap=0.0) == [0, 256]  # exact fit, no overlap
    assert tile_starts(size=1000, tile=100, overlap=0.25) == list(range(0, 901, 75))
    assert tile_starts(size=257, tile=256, overlap=0.5) == [0, 1]
    assert tile_starts(size=256, tile=256, overlap=0.5) == [0]
    assert tile_starts(size=100, tile=256, overlap=0.5) == [0]
    # Aligned to 16: ceil(344 / 16) = 22 units, steps of at most 8 units -> 3 gaps of 7.33 units
    # -> units 0, 7, 15, 22; the last tile ends at 352 + 256 = 608, 8 pixels past the image.
    assert tile_starts(size=600, tile=256, overlap=0.5, align=16) == [0, 112, 240, 352]


@pytest.mark.parametrize("size", [1, 7, 31, 32, 33, 100, 257, 600, 1023])
@pytest.mark.parametrize("tile, overlap", [(32, 0.5), (32, 0.0), (48, 0.25), (5, 0.8)])
def test_tile_starts_cover_evenly(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(size - tile, 0)
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= int(tile * (1 - overlap) + 1e-9)).all()
    assert gaps.size == 0 or gaps.max() - gaps.min() <= 1  # evenly spread


def gaussian_weights(height: int, width: int) -> torch.Tensor:
    """The weight of a (height, width) tile, as TileGrid blends it: the outer product of its profiles."""
    return torch.outer(gaussian_profile(height), gaussian_profile(width))


def test_gaussian_weights_symmetric_with_max_one():
    for height, width in [(32, 48), (33, 17), (1, 5)]:
        weights = gaussian_weights(height, width)
        assert weights.shape == (height, width) and weights.dtype == torch.float32
        assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(1))
        assert weights.max() == 1.0 and weights.min() > 0
    odd = gaussian_weights(33, 33)
    assert odd[16, 16] == 1.0 and torch.equal(odd, odd.T)
    assert odd[0, 0] < odd[0, 16] < odd[16, 16]


def test_mirror_pad_reflects_repeatedly():
    x = torch.arange(20.0).reshape(1, 4, 5)
    expected = np.pad(x.numpy(), ((0, 0), (9, 2), (1, 13)), mode="reflect")  # pads wider than the sides
    assert torch.equal(mirror_pad(x, 9, 2, 1, 13), torch.from_numpy(expected))
    assert mirror_indices(-3, 6, 4).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert mirror_indices(-2, 3, 1).tolist() == [0] * 5


def test_valid_plan_aligns_tiles_to_the_pooling_stride():
    model = UNet(1, 1, 8, depth=2, padding="valid")
    plan = tile_grid(77, 91, tile=20, margin=model.margin, valid_input=model.valid_input_size)
    # Output 20 needs input 60 (margin 20); valid sizes step by 2**2 = 4, so starts are multiples
    # of 4 no more than 20 apart.
    assert (plan.in_tile, plan.out_tile) == ((60, 60), (20, 20))
    assert plan.ys == (0, 20, 40, 60) and plan.xs == (0, 20, 36, 56, 72)


# ---- blending -----------------------------------------------------------------------------------
def test_identity_forward_reproduces_the_image():
    # Any misplaced tile, wrong weight sum or bad mirror read shows up as a difference.
    image = torch.rand(3, 77, 91, generator=torch.Generator().manual_seed(0))
    for kwargs in [dict(tile=32, overlap=0.5, batch_size=5), dict(tile=(24, 40), overlap=0.25, batch_size=1),
                   dict(tile=32, overlap=0.5, align=16), dict(tile=200)]:
        assert torch.allclose(predict_tiled(lambda b: b, image, **kwargs), image, atol=1e-6), kwargs
    crop = predict_tiled(lambda b: b[..., 7:-7, 7:-7], image, tile=20, margin=7, align=4)
    assert torch.allclose(crop, image, atol=1e-6)


def test_bands_tile_the_image_and_batching_does_not_change_results():
    image = torch.rand(2, 150, 70, generator=torch.Generator().manual_seed(1))
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    forward = lambda b: torch.softmax(conv(b), dim=1)  # noqa: E731
    pixels = image.permute(1, 2, 0).numpy()
    bands = list(predict_bands(forward, lambda a, b: pixels[a:b], 150, 70, tile=32, overlap=0.5, batch_size=3))
    assert bands[0][0] == 0 and bands[-1][1] == 150
    assert all(previous[1] == current[0] for previous, current in zip(bands, bands[1:]))
    assert all(probs.shape == (3, y1 - y0, 70) for y0, y1, probs in bands)
    one = predict_tiled(forward, image, tile=32, batch_size=1)
    many = predict_tiled(forward, image, tile=32, batch_size=64)
    assert torch.allclose(torch.cat([probs for _, _, probs in bands], dim=1), one, atol=1e-6)
    assert torch.allclose(one, many, atol=1e-6)


def test_tiled_prediction_matches_whole_image_for_valid_unet():
    torch.manual_seed(0)
    model = UNet(1, 1, 8, depth=2, padding="valid").eval()
    forward = lambda b: torch.sigmoid(model(b))  # noqa: E731
    image = torch.rand(1, 77, 91)
    tiled = predict_tiled(forward, image, tile=20, overlap=0.5, batch_size=4,
                          margin=model.margin, valid_input=model.valid_input_size)
    # Whole image: mirror the margin around it, then pad bottom/right up to a valid input size.
    margin = model.margin
    pad_h = model.valid_input_size(77) - 77 - margin
    pad_w = model.valid_input_size(91) - 91 - margin
    padded = np.pad(image.numpy(), ((0, 0), (margin, pad_h), (margin, pad_w)), mode="reflect")
    with torch.no_grad():
        whole = forward(torch.from_numpy(padded)[None])[0, :, :77, :91]
    assert torch.allclose(tiled, whole, atol=1e-5)
    # Starts off the pooling grid put the max-pools out of phase: the prediction changes.
    unaligned = predict_tiled(forward, image, tile=20, margin=margin, valid_input=model.valid_input_size, align=1)
    assert (unaligned - whole).abs().max() > 1e-3


def _disks(size: tuple[int, int], count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image (H, W) float32 of bright disks and their mask (H, W) float32."""
    rows, cols = np.mgrid[:size[0], :size[1]]
    mask = np.zeros(size, dtype=bool)
    for _ in range(count):
        cy, cx, radius = rng.uniform(0, size[0]), rng.uniform(0, size[1]), rng.uniform(4, 9)
        mask |= (rows - cy) ** 2 + (cols - cx) ** 2 < radius ** 2
    image = 0.25 + 0.5 * mask + rng.normal(0, 0.15, size)
    return image.astype(np.float32), mask.astype(np.float32)


def test_tiled_prediction_agrees_with_whole_image_for_same_unet():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = UNet(1, 1, 8, depth=2, padding="same")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        pairs = [_disks((48, 48), 6, rng) for _ in range(4)]
        images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        masks = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    forward = lambda b: torch.sigmoid(model(b))  # noqa: E731
    image, mask = _disks((97, 83), 25, rng)
    image = torch.from_numpy(image)[None]
    with torch.no_grad():
        whole = forward(image[None])[0]
    tiled = predict_tiled(forward, image, tile=32, overlap=0.5, batch_size=4)
    whole_mask, tiled_mask = whole[0] > 0.5, tiled[0] > 0.5
    assert (whole_mask.numpy() == mask).mean() > 0.9  # the model learned the disks
    assert (tiled_mask == whole_mask).float().mean() >= 0.995
    # The bar is tight enough to catch tiles misplaced by a few pixels.
    assert (tiled_mask.roll(3, dims=1) == whole_mask).float().mean() < 0.995


def test_wrong_output_size_explains_valid_padding():
    model = UNet(1, 1, 8, depth=2, padding="valid").eval()
    with pytest.raises(ValueError, match="margin=model.margin"):
        predict_tiled(model, torch.rand(1, 100, 100), tile=60)


# ---- TIFF in, TIFF out --------------------------------------------------------------------------
def _write(path, image, layout):
    if layout == "memmap":
        tifffile.imwrite(path, image)
    elif layout == "zlib strips":
        tifffile.imwrite(path, image, compression="zlib", rowsperstrip=37)
    else:
        tifffile.imwrite(path, image, compression="zlib", tile=(128, 96))


@pytest.mark.parametrize("layout", ["memmap", "zlib strips", "zlib tiles"])
def test_tiff_rows_read_any_layout(tmp_path, layout):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65535, (300, 200), dtype=np.uint16)
    _write(tmp_path / "gray.tif", gray, layout)
    with TiffRows(tmp_path / "gray.tif") as rows:
        assert (rows.height, rows.width, rows.channels) == (300, 200, 1)
        assert np.array_equal(rows.read_rows(37, 251), gray[37:251])
    rgb = rng.integers(0, 255, (3, 130, 70), dtype=np.uint8)  # stored as separate planes
    compression = None if layout == "memmap" else "zlib"
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", planarconfig="separate",
                     compression=compression, tile=None if layout != "zlib tiles" else (64, 64))
    with TiffRows(tmp_path / "rgb.tif") as rows:
        assert np.array_equal(rows.read_rows(5, 129), rgb[:, 5:129].transpose(1, 2, 0))


@pytest.mark.parametrize("layout", ["memmap", "zlib tiles"])
def test_tiff_prediction_equals_in_memory_prediction(tmp_path, layout):
    rng = np.random.default_rng(0)
    image = (rng.random((1500, 1300)) * 255).astype(np.uint8)
    _write(tmp_path / "in.tif", image, layout)
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 1, 3, padding=1))
    forward = lambda b: torch.sigmoid(conv(b))  # noqa: E731
    written = predict_tiff_tiled(forward, tmp_path / "in.tif", tmp_path / "out.tif", tile=256, overlap=0.5,
                                 batch_size=8)
    in_memory = predict_tiled(forward, torch.from_numpy(image.astype(np.float32) / 255)[None], tile=256,
                              overlap=0.5, batch_size=8)
    with tifffile.TiffFile(written) as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].shape == (1500, 1300)
        stored = tif.asarray()
    assert np.array_equal(stored, probabilities_to_classes(in_memory).numpy())
    assert 0.05 < stored.mean() < 0.95  # a mask, not a constant
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif"]  # no temporary left


def test_tiff_prediction_memory_is_bounded(tmp_path):
    """Bound: peak traced memory < 12 float32 bands (12 * tile * W * 4 bytes = 18 MiB here), and
    it does not grow with the image height. Whole-image float32 probabilities alone would take
    4096 * 3072 * 4 bytes = 48 MiB. The accumulators are NumPy-backed so tracemalloc sees them."""
    width, tile = 3072, 128
    forward = lambda b: torch.sigmoid(8 * (b - 0.5))  # noqa: E731  (cheap: the loop is under test)
    peaks = []
    for height in (2048, 4096):
        source = tifffile.memmap(tmp_path / f"in{height}.tif", shape=(height, width), dtype=np.uint8)
        source[:] = (np.arange(width) % 251).astype(np.uint8)
        source.flush()
        del source
        tracemalloc.start()
        predict_tiff_tiled(forward, tmp_path / f"in{height}.tif", tmp_path / f"out{height}.tif", tile=tile,
                           overlap=0.5, batch_size=8)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 12 * tile * width * 4
    assert peaks[1] < 1.1 * peaks[0]
    stored = tifffile.imread(tmp_path / "out4096.tif")
    assert np.array_equal(stored[100], (np.arange(width) % 251 > 127).astype(np.uint8))
