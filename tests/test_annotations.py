"""Labels that are not mask files: COCO and YOLO polygons made from the bundled ISBI masks, palette PNGs
made from CamVid masks, a label table; their cache, their refusals, `seglab data convert`, one training."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from label_formats import coco_folder, expected_classes, near_boundary, rle_string, yolo_folder
from PIL import Image

import seglab
from conftest import TINY_FLAGS, assert_clean_failure, run_cli, run_main
from seglab.api.evaluating import as_pairs
from seglab.data.discover import discover
from seglab.data.labels.shapes import ImageLabels, Shape, decode_rle_string, polygon_bitmap, rasterise

CAMVID = Path("/work/shared/data/camvid")
# Rasterised pixels may differ from the original masks only next to a class boundary, and there in
# at most this share of the pixels (measured: none differ; the contours pass between pixel centres).
BOUNDARY_SHARE = 0.005


@pytest.fixture
def annotated(tmp_path, isbi_subset):
    """Build a COCO (one image as compressed-RLE crowd regions) or YOLO folder from the ISBI crops."""
    def make(kind: str) -> Path:
        if kind == "coco":
            coco_folder(isbi_subset, tmp_path / "coco", rle_stems=("02",))
            return tmp_path / "coco"
        return yolo_folder(isbi_subset, tmp_path / "yolo")
    return make


@pytest.mark.parametrize("kind", ["coco", "yolo"])
def test_polygons_rasterise_to_the_isbi_masks(annotated, isbi_subset, kind):
    layout = discover(annotated(kind))
    scan = layout.splits["all"]
    assert scan.labels.names == ("membrane", "cell") and len(scan.pairs) == 5  # every pixel labelled: no background
    for pair in scan.pairs:
        got = np.asarray(Image.open(pair.mask))
        want = expected_classes(isbi_subset / "masks" / pair.image.name)
        wrong = got != want
        assert not (wrong & ~near_boundary(want)).any(), pair.image.name
        assert wrong.mean() <= BOUNDARY_SHARE, (pair.image.name, wrong.mean())


def test_rle_strings_decode_as_coco_defines_them():
    assert decode_rle_string("0123") == [0, 1, 2, 4]  # from the third run on: a difference to two back
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (7, 5), (40, 33)):
        bitmap = rng.random(shape) < 0.3
        bitmap[0, 0] = True  # a mask starting with foreground begins with an empty run
        runs = decode_rle_string(rle_string(bitmap))
        flags = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(shape[::-1]).T
        assert np.array_equal(flags, bitmap)
    with pytest.raises(ValueError, match="ends inside"):
        decode_rle_string("P")  # a continuation bit with nothing after it


def test_smaller_instances_lie_on_top_and_crowds_underneath():
    square = lambda x0, y0, x1, y1: np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)  # noqa: E731
    labels = ImageLabels(Path("x.png"), 8, 8, "images[0]", [
        Shape(3, "a[0]", polygons=(square(2, 2, 4, 4),)),          # small, first in the file
        Shape(1, "a[1]", polygons=(square(0, 0, 8, 8),)),          # large, later: still underneath
        Shape(2, "a[2]", runs=(0, 64), crowd=True),                # crowd covering all: at the bottom
    ])
    mask = rasterise(labels)
    assert mask[3, 3] == 3 and mask[0, 0] == 1 and mask[7, 7] == 1
    assert polygon_bitmap((square(1, 1, 3, 3),), 5, 5).sum() == 4  # pixel centres inside, no outline


def test_cache_is_read_again_and_rebuilt_when_the_file_changes(annotated):
    folder = annotated("coco")
    first = discover(folder).splits["all"].labels
    again = discover(folder).splits["all"].labels
    assert not first.reused and again.reused and again.cache_dir == first.cache_dir
    stamp = os.stat(next(first.cache_dir.glob("*.png"))).st_mtime_ns
    assert os.stat(next(again.cache_dir.glob("*.png"))).st_mtime_ns == stamp  # read, not rewritten
    data = json.loads((folder / "annotations.json").read_text())
    data["categories"][1]["name"] = "interior"
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == 2 or a["image_id"] != 1]
    (folder / "annotations.json").write_text(json.dumps(data))
    rebuilt = discover(folder).splits["all"].labels
    assert not rebuilt.reused and rebuilt.cache_dir != first.cache_dir
    # 00.png's membrane is no longer labelled: value 0 becomes a class of its own
    assert rebuilt.names == ("background", "membrane", "interior") and rebuilt.values == (0, 1, 2)
    assert not first.cache_dir.exists()  # the stale cache is gone
    assert [p.name for p in rebuilt.cache_dir.parent.iterdir()] == [rebuilt.cache_dir.name]  # no temporaries


def test_a_read_only_folder_is_cached_in_the_users_cache(annotated, tmp_path, monkeypatch):
    from seglab.data.labels import cache

    folder = annotated("coco")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    # The tests run as root, for whom every folder is writable: answer as for a read-only folder.
    readable = os.access
    monkeypatch.setattr(cache.os, "access", lambda path, mode: mode != os.W_OK and readable(path, mode))
    labels = discover(folder).splits["all"].labels
    assert labels.cache_dir.is_relative_to(tmp_path / "home" / "seglab" / "labels")
    assert not (folder / ".seglab-cache").exists() and discover(folder).splits["all"].labels.reused


def _coco_case(folder: Path, case: str) -> str:
    path = folder / "annotations.json"
    data = json.loads(path.read_text())
    first = data["annotations"][0]
    if case == "outside":
        first["segmentation"] = [[0, 0, 500, 0, 500, 20]]
    elif case == "unknown category":
        first["category_id"] = 9
    elif case == "image without annotations":
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]
    elif case == "annotation without image":
        first["image_id"] = 99
    elif case == "escaping file name":
        data["images"][0]["file_name"] = "../../../../etc/passwd"
    elif case == "odd coordinates":
        first["segmentation"] = [[1, 2, 3, 4, 5]]
    elif case == "other size":
        data["images"][1]["width"] = 256
    elif case == "repeated image":
        data["images"][1]["file_name"] = data["images"][0]["file_name"]
    path.write_text("{not json" if case == "not JSON" else json.dumps(data))
    return {"outside": r"annotations\[0\] \(id 1\) polygon 0: point \(500, 0\) lies outside its 128x128 image",
            "unknown category": r"annotations\[0\] \(id 1\): category_id 9 is not in 'categories'",
            "image without annotations": r"images\[0\] \(id 1\): image '00.png' has no annotations",
            "annotation without image": r"annotations\[0\] \(id 1\): image_id 99 is not in 'images'",
            "escaping file name": r"images\[0\] \(id 1\): file_name '../../../../etc/passwd' leads outside",
            "odd coordinates": r"annotations\[0\] \(id 1\) polygon 0: is not a list of at least 3 x, y pairs",
            "other size": r"images\[1\] \(id 2\): image '.*01.png' is 128x128 but its annotations are for 256x128",
            "repeated image": r"images\[1\] \(id 2\): repeats the image '00.png'",
            "not JSON": r"annotations.json: not JSON"}[case]


def _yolo_case(folder: Path, case: str) -> str:
    labels = folder / "labels"
    if case == "label without image":
        shutil.copyfile(labels / "00.txt", labels / "zz.txt")
        return r"labels: zz.txt: a label file without an image"
    if case == "image without label":
        (labels / "01.txt").unlink()
        return r"labels: 01.png: an image without a label file \(01.txt\)"
    lines = {"unknown class": "7 0.1 0.1 0.2 0.1 0.2 0.2", "box": "0 0.5 0.5 0.2 0.2",
             "outside": "0 0.1 0.1 1.5 0.1 0.2 0.2"}[case]
    (labels / "00.txt").write_text(lines + "\n")
    return {"unknown class": r"00.txt: line 1: class 7 is not one of the 2 names",
            "box": r"00.txt: line 1: is a box \(class cx cy w h\), not a polygon",
            "outside": r"00.txt: line 1: point \(1.5, 0.1\) lies outside 0..1"}[case]


@pytest.mark.parametrize("kind,case", [("coco", c) for c in (
    "outside", "unknown category", "image without annotations", "annotation without image", "escaping file name",
    "odd coordinates", "other size", "repeated image", "not JSON")] + [("yolo", c) for c in (
        "label without image", "image without label", "unknown class", "box", "outside")])
def test_malformed_annotations_are_refused_in_one_line(annotated, kind, case):
    import re

    folder = annotated(kind)
    expected = (_coco_case if kind == "coco" else _yolo_case)(folder, case)
    result = run_main("check", folder)
    assert_clean_failure(result)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(expected, errors[0]), result.output
    assert not (folder / ".seglab-cache").exists() or not any((folder / ".seglab-cache").glob("*/*.png"))


def test_coco_folder_trains_through_the_cli_and_converts(tmp_path, annotated):
    folder = annotated("coco")
    run = tmp_path / "run"
    trained = run_cli("train", folder, "-e", 1, "-b", 2, "--crop", 64, "--base-channels", 4, "--depth", 2,
                      "-v", 20, "--out", run, *TINY_FLAGS)
    assert trained.rc == 0, trained.output
    payload = seglab.load(run / "best.pt").class_map
    assert payload.names == ("membrane", "cell") and payload.values == (1, 2)
    converted = run_main("data", "convert", folder, tmp_path / "copy")
    assert converted.rc == 0, converted.output
    classes = json.loads((tmp_path / "copy" / "classes.json").read_text())
    assert [(c["name"], c["value"]) for c in classes["classes"]] == [("membrane", 1), ("cell", 2)]
    assert seglab.check(tmp_path / "copy").class_map.names == ("membrane", "cell")  # read from classes.json
    assert sorted(p.name for p in (tmp_path / "copy" / "masks").iterdir()) == [f"0{i}.png" for i in range(5)]
    cached = discover(folder).splits["all"].pairs[0]  # 00.png as rasterised: category ids 1 and 2
    assert np.array_equal(np.asarray(Image.open(tmp_path / "copy" / "masks" / "00.png")),
                          np.asarray(Image.open(cached.mask)) - 1)  # class indices 0 and 1


@pytest.mark.skipif(not (CAMVID / "train" / "masks").is_dir(), reason="CamVid is not on this machine")
def test_palette_pngs_give_classes_colours_and_voc_ignore(tmp_path):
    """CamVid's class-index masks (read in place) saved as VOC-style palette PNGs: void 11 -> 255."""
    palette = np.zeros((256, 3), np.uint8)
    palette[:11] = np.random.default_rng(1).integers(0, 256, (11, 3))
    palette[255] = (224, 224, 192)  # VOC's border colour
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
    for path in sorted((CAMVID / "train" / "masks").glob("*.png"))[:3]:
        indices = np.asarray(Image.open(path))[::3, ::3].copy()  # 120 x 160, every class kept
        indices[indices == 11] = 255
        picture = Image.fromarray(indices, "L").convert("P")
        picture.putpalette(palette.ravel().tolist())
        picture.save(tmp_path / "masks" / path.name)
        with Image.open(CAMVID / "train" / "images" / f"{path.stem}.jpg") as image:
            image.resize((160, 120)).save(tmp_path / "images" / f"{path.stem}.png")
    report = seglab.check(tmp_path)
    class_map = report.class_map
    assert report.ok, str(report)
    assert class_map.ignore_value == 255 and 255 not in class_map.values
    assert class_map.colors == tuple(tuple(int(c) for c in palette[v]) for v in class_map.values)


def test_label_table_remaps_label_ids(tmp_path, isbi_subset):
    table = tmp_path / "ids.json"
    table.write_text(json.dumps({"map": {"0": 0, "255": 1, "7": 255}, "names": ["membrane", "cell"]}))
    data = tmp_path / "data"
    shutil.copytree(isbi_subset, data)
    report = seglab.check(data, label_map=table)
    assert report.ok and report.class_map.names == ("membrane", "cell") and report.class_map.ignore_value == 255
    scored = as_pairs(data, label_map=table)  # what `seglab evaluate --label-map` scores against
    assert len(scored) == 5 and set(np.unique(np.asarray(Image.open(scored[0].mask)))) == {0, 1}
    table.write_text(json.dumps({"0": 0}))
    refused = run_main("check", data, "--label-map", table)
    assert_clean_failure(refused)
    assert "holds value 255, which the label map" in refused.output


def _move_all(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in list(source.iterdir()):
        shutil.move(str(path), dest / path.name)


def test_roboflow_ultralytics_and_coco_split_layouts(tmp_path, isbi_subset):
    """Roboflow's COCO export: train/ and valid/ each with its images and _annotations.coco.json;
    Ultralytics': images/train, labels/train, images/val, labels/val and data.yaml at the top;
    COCO's own: annotations/instances_train2017.json, instances_val2017.json, train2017/, val2017/."""
    roboflow = tmp_path / "roboflow"
    for split in ("train", "valid"):
        made = coco_folder(isbi_subset, tmp_path / f"coco-{split}")
        _move_all(made.parent / "images", roboflow / split)
        made.rename(roboflow / split / "_annotations.coco.json")
    ultralytics = tmp_path / "ultralytics"
    for split in ("train", "val"):
        made = yolo_folder(isbi_subset, tmp_path / f"yolo-{split}")
        _move_all(made / "images", ultralytics / "images" / split)
        _move_all(made / "labels", ultralytics / "labels" / split)
        shutil.copyfile(made / "data.yaml", ultralytics / "data.yaml")
    coco = tmp_path / "coco2017"
    for split in ("train2017", "val2017"):
        made = coco_folder(isbi_subset, tmp_path / f"coco-{split}")
        _move_all(made.parent / "images", coco / split)
        (coco / "annotations").mkdir(exist_ok=True)
        made.rename(coco / "annotations" / f"instances_{split}.json")
    for root, kind in ((roboflow, "COCO"), (ultralytics, "YOLO"), (coco, "COCO")):
        layout = discover(root)
        assert sorted(layout.splits) == ["train", "val"], root
        assert all(len(layout.labelled(s)) == 5 and layout.splits[s].labels.kind == kind for s in layout.splits)
        report = seglab.check(root)
        assert report.ok and report.class_map.names == ("membrane", "cell"), str(report)
