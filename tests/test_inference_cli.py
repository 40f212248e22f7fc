"""Inference features through the CLI: tiles, TTA, instances and ISBI scores, export and ONNX predict."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import assert_clean_failure, run_cli


def _mask(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_tiled_prediction_agrees_with_whole_image_and_tta_composes_with_tiles(checkpoint, isbi_subset, tmp_path):
    image = isbi_subset / "images" / "00.png"
    whole = run_cli("predict", "-m", checkpoint, "-i", image, "-o", tmp_path / "whole.png", "--device", "cpu")
    tiled = run_cli("predict", "-m", checkpoint, "-i", image, "-o", tmp_path / "tiled.png", "--tile", "64",
                    "--overlap", "0.5", "--device", "cpu")
    augmented = run_cli("predict", "-m", checkpoint, "-i", image, "-o", tmp_path / "tta.png", "--tile", "64",
                        "--tta", "d4", "--device", "cpu")
    assert whole.rc == 0 and tiled.rc == 0 and augmented.rc == 0, whole.output + tiled.output + augmented.output
    agreement = (_mask(tmp_path / "whole.png") == _mask(tmp_path / "tiled.png")).mean()
    assert agreement > 0.97
    tta_mask = _mask(tmp_path / "tta.png")
    assert tta_mask.shape == (128, 128) and set(np.unique(tta_mask)) <= {0, 255}


def test_instances_are_written_as_16_bit_labels_and_scored_like_isbi(checkpoint, isbi_subset, tmp_path):
    # the session's tiny model is barely trained: its interiors never reach the default seed level
    done = run_cli("predict", "-m", checkpoint, "-i", isbi_subset / "images" / "01.png", "-o", tmp_path,
                   "--instances", "--seed-threshold", "0.5", "--device", "cpu")
    assert done.rc == 0, done.output
    with Image.open(tmp_path / "01_instances.png") as labels:
        assert labels.mode.startswith("I")
        assert np.asarray(labels).max() >= 1
    scores = run_cli("evaluate", "-m", checkpoint, isbi_subset, "--instances", "--seed-threshold", "0.5", "--json",
                     "--device", "cpu")
    assert scores.rc == 0, scores.output
    mean = json.loads(scores.stdout)["mean"]
    assert 0 <= mean["rand_error"] <= 1 and mean["vi"] >= 0
    assert mean["vi"] == sum((mean["vi_split"], mean["vi_merge"])) or abs(
        mean["vi"] - mean["vi_split"] - mean["vi_merge"]) < 1e-9


def test_export_to_onnx_then_predict_with_it_matches_pytorch(checkpoint, isbi_subset, tmp_path):
    onnx_file = tmp_path / "model.onnx"
    exported = run_cli("export", "-m", checkpoint, "--format", "onnx", "-o", onnx_file,
                       "--parity-images", isbi_subset / "images" / "02.png")
    assert exported.rc == 0, exported.output
    assert "parity" in exported.stdout and onnx_file.is_file()
    image = isbi_subset / "images" / "03.png"
    by_onnx = run_cli("predict", "-m", onnx_file, "-i", image, "-o", tmp_path / "onnx.png", "--device", "cpu")
    by_torch = run_cli("predict", "-m", checkpoint, "-i", image, "-o", tmp_path / "torch.png", "--device", "cpu",
                       "--precision", "fp32")  # as the export computes
    assert by_onnx.rc == 0 and by_torch.rc == 0, by_onnx.output + by_torch.output
    assert (_mask(tmp_path / "onnx.png") == _mask(tmp_path / "torch.png")).mean() > 0.999


def test_export_of_a_corrupt_checkpoint_fails_cleanly_and_writes_nothing(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = run_cli("export", "-m", broken, "-o", tmp_path / "out.onnx")
    assert_clean_failure(result)
    assert "broken.pt" in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_folder_prediction_in_batches_matches_one_image_at_a_time(checkpoint, isbi_subset, tmp_path):
    from conftest import copy_isbi_crop

    folder = tmp_path / "in"
    for stem in ("00", "01", "02"):
        copy_isbi_crop("test", "images", stem, folder, (0, 0, 96, 96))
    copy_isbi_crop("test", "images", "03", folder, (0, 0, 80, 112))  # another size: its own pass
    (folder / "04.png").write_bytes(b"")                               # unreadable: skipped, listed
    batched = run_cli("predict", "-m", checkpoint, "-i", folder, "-o", tmp_path / "batched", "--batch-size", "3",
                      "--device", "cpu")
    single = run_cli("predict", "-m", checkpoint, "-i", folder, "-o", tmp_path / "single", "--batch-size", "1",
                     "--device", "cpu")
    for result in (batched, single):
        assert result.rc == 1 and "04.png" in result.stderr and "Traceback" not in result.output
    for stem in ("00", "01", "02", "03"):
        a, b = _mask(tmp_path / "batched" / f"{stem}_mask.png"), _mask(tmp_path / "single" / f"{stem}_mask.png")
        assert a.shape == b.shape and (a == b).mean() > 0.999  # BN in eval mode: batching changes nothing
