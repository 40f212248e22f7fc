"""The GPU paths: augmentation presets training through the CLI, and a training step that never
waits for the host. Skipped where no CUDA device is visible (CI has none; run them on a GPU machine
with `python -m pytest tests/test_cuda.py`)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import seglab.engine.builders as setup_module
from seglab.config import config_from_dict
from seglab.data.augment import BatchAugmenter
from seglab.data.augment_config import augment_preset
from seglab.data.classmap import IGNORE_INDEX
from seglab.engine.history import DeviceLossTally
from seglab.engine.recipe import Recipe
from seglab.engine.trainer import LOG_EVERY, Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
QUIET = lambda *args, **kwargs: None  # noqa: E731


@pytest.mark.parametrize("preset, extra", [("light", []), ("paper", []), ("strong", []),
                                           ("paper", ["--border-weight", "10,5"])])
def test_each_augmentation_preset_trains_on_the_gpu_through_the_cli(tmp_path, isbi_dir, run_seglab, preset, extra):
    run = tmp_path / "run"
    result = run_seglab("train", isbi_dir, "--device", "cuda", "--amp", "--augment", preset, *extra,
                        "--epochs", 3, "--eval-every", 1, "--base-channels", 16, "--crop", 256,
                        "--batch-size", 4, "--no-progress", "--out", run)
    assert result.rc == 0, result.output
    assert "resident on cuda" in result.output  # 30 slices: the training set lives on the GPU
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns, not only runs
    # A checkpoint trained on the GPU predicts on a machine without one.
    out = tmp_path / "pred"
    predicted = run_seglab("predict", "-m", run / "last.pt", "-i", isbi_dir / "test" / "images" / "00.png",
                           "-o", out, "--device", "cpu")
    assert predicted.rc == 0, predicted.output
    assert (out / "00_mask.png").is_file()


@pytest.mark.parametrize("precision, resident", [("bf16", True), ("fp16", True), ("bf16", False)])
def test_a_gpu_training_epoch_synchronises_only_to_read_the_loss_tally(tmp_path, isbi_dir, monkeypatch,
                                                                      precision, resident):
    """torch.cuda.set_sync_debug_mode("error") turns every blocking device->host read or pageable
    copy into an exception. Augmentation, channels_last forward, loss, backward, GradScaler (fp16),
    fused AdamW and the schedule run under it for a whole epoch; only the end of the epoch may sync
    (the training clock waits for the queued steps, then the loss tally is read)."""
    if not resident:  # force the DataLoader path: pinned batches copied without blocking
        monkeypatch.setattr(setup_module, "free_memory", lambda device: 0)
    config = {"out": str(tmp_path / "run"), "data": {"root": str(isbi_dir), "validation": 20, "crop": [256, 256],
                       "workers": 2},
              "model": {"base_channels": 16, "depth": 4},
              "train": {"epochs": 1, "batch_size": 2, "device": "cuda", "augment": "strong", "loss": "auto",
                        "precision": precision, "channels_last": True, "border_weight": [10.0, 5.0]}}
    trainer = Trainer(Recipe.from_data(config_from_dict(config)), progress=False, log=QUIET)
    real_read, reads = DeviceLossTally.read, []

    def read_allowed(self):
        torch.cuda.set_sync_debug_mode(0)
        try:
            reads.append(trainer.step)
            return real_read(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(DeviceLossTally, "read", read_allowed)
    real_stop_clock = Trainer._stop_clock

    def stop_clock_allowed(self):  # the epoch's end: waits for the queued steps, then reads the tally
        torch.cuda.set_sync_debug_mode(0)
        try:
            return real_stop_clock(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(Trainer, "_stop_clock", stop_clock_allowed)
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer._train_epoch(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.step == 12 > LOG_EVERY  # 24 training slices at batch 2
    assert reads == [LOG_EVERY, 12]


def test_gpu_augmentation_moves_images_and_masks_together_and_keeps_the_class_set():
    """The same checks as the CPU tests, on CUDA kernels: an image equal to its mask comes out equal
    to the augmented mask wherever the mask is not ignore (flips and rot90 are exact permutations;
    the elastic field moves both through the same grid, nearest for masks)."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (8, 96, 96), generator=generator).cuda()
    images = masks[:, None].float()
    flips = BatchAugmenter(augment_preset("light"), seed=1)
    out_images, out_masks, _ = flips(images, masks, None, out_size=(96, 96))
    # light = flips and rot90 only: whole-pixel moves, exact up to the sampling grid's rounding
    torch.testing.assert_close(out_images[:, 0], out_masks.float(), atol=1e-4, rtol=0)
    paper = BatchAugmenter(augment_preset("paper"), seed=2)
    _, warped, _ = paper(images, masks, None, out_size=(80, 80))
    assert set(warped.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    again = BatchAugmenter(augment_preset("paper"), seed=2)(images, masks, None, out_size=(80, 80))
    assert torch.equal(again[1], warped)  # same seed, same stream on the GPU
    other = BatchAugmenter(augment_preset("paper"), seed=3)(images, masks, None, out_size=(80, 80))
    assert not torch.equal(other[1], warped)
