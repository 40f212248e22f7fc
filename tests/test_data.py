"""Data folders as users lay them out: pairing, splits, mask-value -> class maps, and file I/O errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.data.classmap import IGNORE_INDEX, ClassMap
from seglab.data.discover import discover, infer_class_map, survey_masks
from seglab.data.io import read_image, read_mask
from seglab.data.preflight import run_preflight
from seglab.data.writing import write_mask
from seglab.errors import DataError, SeglabError

ISBI = Path(__file__).resolve().parents[1] / "data" / "isbi2012"


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def isbi_mask(stem: str = "00", size: int = 32) -> np.ndarray:
    """A real ISBI membrane mask ({0, 255}), cropped."""
    return np.asarray(Image.open(ISBI / "train" / "masks" / f"{stem}.png"))[:size, :size].copy()


def isbi_image(stem: str = "00", size: int = 32) -> np.ndarray:
    return np.asarray(Image.open(ISBI / "train" / "images" / f"{stem}.png"))[:size, :size].copy()


def make_folder(root: Path, stems, masks: dict[str, np.ndarray] | None = None, image_dir="images",
                mask_dir="masks", mask_stems=None) -> Path:
    """root/image_dir/<stem>.png (real ISBI crops) and root/mask_dir/<stem>.png."""
    for i, stem in enumerate(stems):
        write_png(root / image_dir / f"{stem}.png", isbi_image(f"{i % 30:02d}"))
    for i, stem in enumerate(mask_stems if mask_stems is not None else stems):
        mask = (masks or {}).get(stem, isbi_mask(f"{i % 30:02d}"))
        write_png(root / mask_dir / f"{stem}.png", mask)
    return root


def class_map_of(root: Path, **kwargs) -> ClassMap:
    layout = discover(root)
    return infer_class_map(survey_masks([p.mask for p in layout.training_pairs()]), **kwargs)


# ---- discovery ------------------------------------------------------------------------------------
def test_images_and_masks_folders_pair_by_stem(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"])
    layout = discover(tmp_path)
    assert not layout.has_named_splits
    pairs = layout.training_pairs()
    assert [(p.image.name, p.mask.name) for p in pairs] == [("a.png", "a.png"), ("b.png", "b.png"),
                                                            ("c.png", "c.png")]
    assert all(p.image.parent.name == "images" and p.mask.parent.name == "masks" for p in pairs)


def test_imgs_and_labels_folders_are_accepted(tmp_path):
    make_folder(tmp_path, ["x1", "x2"], image_dir="imgs", mask_dir="labels")
    pairs = discover(tmp_path).training_pairs()
    assert [p.image.stem for p in pairs] == ["x1", "x2"]
    assert {p.mask.parent.name for p in pairs} == {"labels"}


def test_carvana_style_jpg_and_mask_gif_pair_with_detected_suffix(tmp_path):
    rng = np.random.default_rng(0)
    for stem in ("0cdf5b5d0ce1_01", "0cdf5b5d0ce1_02", "fff9b3a5373f_16"):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{stem}.jpg",
                                                                                  quality=90)
        gif = Image.fromarray((rng.random((24, 32)) > 0.5).astype(np.uint8), mode="L").convert("P")
        gif.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
        (tmp_path / "masks").mkdir(exist_ok=True)
        gif.save(tmp_path / "masks" / f"{stem}_mask.gif")
    layout = discover(tmp_path)
    scan = layout.splits["all"]
    assert scan.mask_suffix == "_mask"
    assert [(p.image.name, p.mask.name) for p in scan.pairs] == [
        ("0cdf5b5d0ce1_01.jpg", "0cdf5b5d0ce1_01_mask.gif"),
        ("0cdf5b5d0ce1_02.jpg", "0cdf5b5d0ce1_02_mask.gif"),
        ("fff9b3a5373f_16.jpg", "fff9b3a5373f_16_mask.gif")]
    assert not scan.unpaired_images and not scan.unpaired_masks
    assert read_image(scan.pairs[0].image).shape == (24, 32, 3)
    # GIF palette indices are the class values: {0, 1} -> binary.
    assert class_map_of(tmp_path).values == (0, 1)


def test_train_val_test_subfolders_with_unlabelled_test(tmp_path):
    make_folder(tmp_path / "train", ["00", "01", "02"])
    make_folder(tmp_path / "val", ["10"])
    for stem in ("20", "21"):
        write_png(tmp_path / "test" / "images" / f"{stem}.png", isbi_image(stem))
    layout = discover(tmp_path)
    assert layout.has_named_splits
    assert set(layout.splits) == {"train", "val", "test"}
    assert [p.image.stem for p in layout.training_pairs()] == ["00", "01", "02"]
    assert [p.image.stem for p in layout.labelled("val")] == ["10"]
    test = layout.splits["test"]
    assert test.mask_dir is None and test.pairs == []
    assert [p.stem for p in test.images] == ["20", "21"]


def test_bundled_isbi_layout(isbi_dir):
    layout = discover(isbi_dir)
    assert len(layout.labelled("train")) == 30
    assert len(layout.splits["test"].images) == 30


def test_unpaired_files_are_reported(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"], mask_stems=["a", "b", "d"])
    scan = discover(tmp_path).splits["all"]
    assert [p.image.stem for p in scan.pairs] == ["a", "b"]
    assert [p.name for p in scan.unpaired_images] == ["c.png"]
    assert [p.name for p in scan.unpaired_masks] == ["d.png"]
    report = run_preflight(tmp_path)
    assert not report.ok
    problems = " ".join(report.warnings + report.errors)
    assert "c.png" in problems and "d.png" in problems


def test_missing_folder_and_folder_without_images_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="images/"):
        discover(tmp_path)


# ---- mask values -> classes -----------------------------------------------------------------------
def test_masks_of_0_and_255_are_binary(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    class_map = class_map_of(tmp_path)
    assert class_map.values == (0, 255)
    assert class_map.is_binary and class_map.num_outputs == 1


def test_masks_of_0_and_1_are_binary(tmp_path):
    make_folder(tmp_path, ["a", "b"], masks={"a": (isbi_mask("00") // 255), "b": (isbi_mask("01") // 255)})
    class_map = class_map_of(tmp_path)
    assert class_map.values == (0, 1)
    assert class_map.is_binary


def test_class_index_masks_give_one_class_per_index(tmp_path):
    gray = isbi_image("00").astype(np.int64)
    classes = np.digitize(gray, [64, 128, 192]).astype(np.uint8)  # 0..3
    assert set(np.unique(classes)) == {0, 1, 2, 3}
    make_folder(tmp_path, ["a"], masks={"a": classes})
    class_map = class_map_of(tmp_path)
    assert class_map.values == (0, 1, 2, 3)
    assert class_map.num_classes == 4 and class_map.num_outputs == 4


def test_gradient_mask_raises_data_error_naming_the_file_and_its_values(tmp_path):
    gradient = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))  # an exported picture
    make_folder(tmp_path, ["a", "b"], masks={"b": gradient})
    with pytest.raises(DataError) as info:
        class_map_of(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "masks" / "b.png") in message
    assert "32 distinct values" in message
    assert "--mask-values" in message
    bad = sorted(set(np.unique(gradient).tolist()) - set(range(32)) - {255})
    assert str(bad[0]) in message


def test_mask_saved_as_jpeg_is_refused_by_name(tmp_path):
    make_folder(tmp_path, ["a"], mask_stems=[])
    (tmp_path / "masks").mkdir()
    Image.fromarray(isbi_mask("00", size=64)).save(tmp_path / "masks" / "a.jpg", quality=75)
    with pytest.raises(DataError) as info:
        class_map_of(tmp_path)
    assert "a.jpg" in str(info.value)


def test_mixed_0_1_255_masks_raise_data_error(tmp_path):
    mixed = isbi_mask("00").copy()
    mixed[:4] = 1  # a mask that mixes the {0,1} and {0,255} conventions
    make_folder(tmp_path, ["a"], masks={"a": mixed})
    with pytest.raises(DataError, match="a.png"):
        class_map_of(tmp_path)


def test_explicit_mask_values_define_the_classes_in_order(tmp_path):
    three = isbi_mask("00").copy()
    three[:8] = 128
    make_folder(tmp_path, ["a"], masks={"a": three})
    with pytest.raises(DataError, match="128"):
        class_map_of(tmp_path)  # 128 is neither binary nor a small class index
    class_map = class_map_of(tmp_path, mask_values=[255, 128, 0], class_names=["cell", "edge", "membrane"])
    assert class_map.values == (255, 128, 0)
    assert class_map.names == ("cell", "edge", "membrane")
    assert class_map.encode(np.array([[255, 128, 0]], dtype=np.uint8)).tolist() == [[0, 1, 2]]
    with pytest.raises(DataError, match="128"):
        class_map_of(tmp_path, mask_values=[0, 255])  # a value the user did not list
    with pytest.raises(DataError, match="2 class names"):
        class_map_of(tmp_path, mask_values=[0, 128, 255], class_names=["a", "b"])


# ---- ClassMap ---------------------------------------------------------------------------------------
def test_class_map_encode_decode_round_trip():
    class_map = ClassMap.from_values([0, 128, 255], ["bg", "edge", "fg"])
    raw = np.array([[0, 128], [255, 0]], dtype=np.uint8)
    classes = class_map.encode(raw)
    assert classes.dtype == np.int64
    assert classes.tolist() == [[0, 1], [2, 0]]
    decoded = class_map.decode(classes)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, raw)
    assert ClassMap.from_dict(class_map.to_dict()) == class_map


def test_class_map_decodes_large_values_to_uint16():
    class_map = ClassMap.from_values([0, 1000, 40000])
    raw = np.array([[40000, 0, 1000]], dtype=np.uint16)
    decoded = class_map.decode(class_map.encode(raw))
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, raw)


def test_class_map_maps_the_ignore_value_to_ignore_index():
    class_map = ClassMap.from_values(range(11), ignore_value=11)
    classes = class_map.encode(np.array([[0, 11, 10]], dtype=np.uint8))
    assert classes.tolist() == [[0, IGNORE_INDEX, 10]]


def test_class_map_refuses_unexpected_values_and_lists_them():
    class_map = ClassMap.from_values([0, 255])
    with pytest.raises(ValueError) as info:
        class_map.encode(np.array([[0, 7, 255, 9]], dtype=np.uint8))
    assert "7" in str(info.value) and "9" in str(info.value)


def test_class_map_needs_two_distinct_classes():
    with pytest.raises(ValueError):
        ClassMap.from_values([1])
    with pytest.raises(ValueError):
        ClassMap.from_values([0, 0])


# ---- io -------------------------------------------------------------------------------------------
def test_read_image_of_a_zero_byte_file_names_it(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_image(path)


def test_read_image_of_a_truncated_png_names_it(tmp_path):
    data = (ISBI / "train" / "images" / "00.png").read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated.png"):
        read_image(path)
    with pytest.raises(DataError, match="truncated.png"):
        read_mask(path)


@pytest.mark.parametrize("compression", ["tiff_lzw", "jpeg", "group4"])
def test_tiffs_in_codecs_tifffile_lacks_are_read_through_pillow(tmp_path, compression):
    picture = Image.open(Path(__file__).parents[1] / "data" / "isbi2012" / "test" / "images" / "00.png")
    picture = picture.convert("1") if compression == "group4" else picture
    path = tmp_path / "slice.tif"
    picture.save(path, compression=compression)  # LZW is the default of many microscopes' exporters
    with Image.open(path) as expected:
        assert np.array_equal(read_image(path)[..., 0], np.asarray(expected.convert("L")))


def test_read_image_of_a_text_file_named_png_names_it(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(DataError, match="notes.png"):
        read_image(path)


def test_read_image_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="ghost.png"):
        read_image(tmp_path / "ghost.png")


def test_read_image_gives_height_width_channels(isbi_dir):
    image = read_image(isbi_dir / "train" / "images" / "00.png")
    assert image.shape == (512, 512, 1) and image.dtype == np.uint8
    mask = read_mask(isbi_dir / "train" / "masks" / "00.png")
    assert mask.shape == (512, 512) and set(np.unique(mask).tolist()) == {0, 255}


def test_write_mask_8_bit_png_reads_back_identically(tmp_path):
    mask = isbi_mask("03", size=40)
    path = write_mask(tmp_path / "out" / "m.png", mask)
    with Image.open(path) as image:
        assert image.mode == "L"
    back = read_mask(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.png"]  # no temp file left behind


def test_write_mask_16_bit_png_reads_back_identically(tmp_path):
    mask = (np.arange(30 * 20, dtype=np.int64).reshape(30, 20) * 97) % 60000
    assert mask.max() > 255
    path = write_mask(tmp_path / "m16.png", mask)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    np.testing.assert_array_equal(read_mask(path), mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m16.png"]


def test_write_mask_replaces_atomically_and_a_failed_write_leaves_the_old_file(tmp_path):
    path = write_mask(tmp_path / "m.png", np.zeros((8, 8), np.uint8))
    write_mask(path, np.full((8, 8), 255, np.uint8))
    assert read_mask(path).min() == 255
    with pytest.raises(SeglabError, match="m.png"):
        write_mask(path, np.full((8, 8), 70000, np.int64))  # does not fit a PNG
    assert read_mask(path).min() == 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.bool_, np.int32])
def test_value_counts_is_what_np_unique_counts(dtype):
    from seglab.data.classmap import value_counts

    mask = (np.random.default_rng(1).integers(0, 3, (37, 29)) * (1 if dtype == np.bool_ else 300 if dtype != np.uint8
                                                                  else 100)).astype(dtype)
    values, counts = value_counts(mask)
    expected = np.unique(mask, return_counts=True)
    assert values.dtype == expected[0].dtype
    np.testing.assert_array_equal(values, expected[0])
    np.testing.assert_array_equal(counts, expected[1])


@pytest.mark.parametrize("mode, bits", [("1", None), ("L", None), ("P", None), ("P", 4), ("P", 1), ("RGB", None),
                                        ("LA", None), ("RGBA", None), ("I;16", None)])
def test_a_png_header_is_read_as_pillow_reads_it(tmp_path, monkeypatch, mode, bits):
    from seglab.data import io

    path = tmp_path / "image.png"
    Image.new(mode, (37, 21)).save(path, **({"bits": bits} if bits else {}))
    from_ihdr = io.image_info(path)
    assert (io._png_header(path) is not None) == (mode != "I;16")  # 16-bit samples: Pillow reads the header
    monkeypatch.setattr(io, "_png_header", lambda path: None)
    assert from_ihdr == io.image_info(path) and from_ihdr[:2] == (21, 37)


def test_a_damaged_or_oversized_png_header_is_refused_as_before(tmp_path, monkeypatch):
    from seglab.data import io

    path = tmp_path / "image.png"
    Image.new("L", (40, 30)).save(path)
    data = bytearray(path.read_bytes())
    data[20] ^= 1  # the width, under the IHDR checksum
    path.write_bytes(bytes(data))
    assert io._png_header(path) is None
    with pytest.raises(DataError, match="image.png"):
        io.image_info(path)
    Image.new("L", (40, 30)).save(path)
    monkeypatch.setenv("SEGLAB_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match="1200"):
        io.image_info(path)
