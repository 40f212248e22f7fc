"""RunLog: what a run writes besides checkpoints, when: recipe.yaml, config.yaml, split.json, metrics.jsonl,
TensorBoard events and the log line while it trains; summary.json at the end (the files' formats are
runtime.run_files'). Only rank 0 writes. (curves.png and report.html are drawn by the API after fit
returns: the engine draws nothing.)"""
from __future__ import annotations

import time
from pathlib import Path

from seglab.engine.recipe import RECIPE_FILE, Recipe
from seglab.runtime import run_files
from seglab.version import __version__

OVERLAY_INTERVAL_S = 60.0  # wall seconds between prediction pictures sent to TensorBoard


class RunLog:
    """Rank 0's record of one run in `run_dir`; on other ranks (`enabled` False) every call does nothing.

    `unit` is "epoch" or "step": the x axis of the curves and what each metrics.jsonl row closes.
    """

    def __init__(self, run_dir: Path, enabled: bool, unit: str, log=print):
        self.run_dir, self.enabled, self.unit, self.log = run_dir, enabled, unit, log
        self._writer = None
        self._last_overlays: float | None = None  # monotonic() of the last pictures sent

    def start(self, recipe: Recipe, rows: list[dict]) -> None:
        """Begin (rows empty) or continue a run whose checkpoint holds `rows`. A crashed run may
        have logged periods after its last checkpoint; they are dropped here and trained again.
        recipe.yaml is what the run trains (`seglab train --recipe` retrains it); config.yaml,
        split.json (which files train and which validate) and plan.json repeat parts of it for the
        readers of 0.2 run folders."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_files.write_config(self.run_dir, recipe.config)
        run_files.write_split(self.run_dir, recipe.train_pairs, recipe.val_pairs)
        if recipe.plan is not None:
            run_files.write_plan(self.run_dir, recipe.plan)
        recipe.save(self.run_dir / RECIPE_FILE)
        run_files.start_metrics(self.run_dir, rows)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("note: tensorboard is not installed; no event files are written")
            return
        # purge_step hides the dropped periods' events from TensorBoard too
        self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=rows[-1]["step"] + 1 if rows else None)

    def log_start(self, recipe: Recipe, model, device, setup: list[str]) -> None:
        """The run's first line: its folder, images, classes, parameters, device and `setup` (precision,
        layout, ...)."""
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        self.log(f"run {self.run_dir}: {len(recipe.train_pairs)} train / {len(recipe.val_pairs)} val images, "
                 f"classes {recipe.class_map.describe()}, {parameters:.2f}M parameters, device {device}, "
                 + ", ".join(setup))

    def overlays_due(self) -> bool:
        """Whether this evaluation should draw prediction pictures: at most once a minute, since
        drawn at every evaluation of a 5-minute GPU run on ISBI they took 426 MB of event files."""
        return self._writer is not None and (
            self._last_overlays is None or time.monotonic() - self._last_overlays >= OVERLAY_INTERVAL_S)

    def add_overlays(self, pictures: list, step: int) -> None:
        """pictures: (H, W, 3) uint8 arrays of validation predictions drawn over their images."""
        if self._writer is not None:
            for k, picture in enumerate(pictures):
                self._writer.add_image(f"val/prediction_{k}", picture, step, dataformats="HWC")
            self._last_overlays = time.monotonic()

    def add_row(self, row: dict, epochs: int | None, improved: bool, budget: float | None = None) -> None:
        """Append one row (a finished epoch, or the steps since the last evaluation) to
        metrics.jsonl and TensorBoard, and print its line."""
        if not self.enabled:
            return
        run_files.append_metrics_row(self.run_dir, row)
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step", "time"):
                    self._writer.add_scalar(key.replace("val_", "val/").replace("train_", "train/"), value,
                                            row["step"])
        self.log(epoch_line(row, epochs, improved, by_step=self.unit == "step", budget=budget))

    def finish(self, rows: list[dict], stopped_by: str, compile_seconds: float = 0.0,
               stop_reason: str | None = None) -> None:
        """Close TensorBoard; write summary.json (what ended the run and, for a callback, why; the
        last row's step; the seconds torch.compile took, which the time budget does not count)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.enabled:
            return
        summary = {"stopped_by": stopped_by, "rows": len(rows), "epoch": rows[-1]["epoch"] if rows else 0,
                   "step": rows[-1]["step"] if rows else 0, "compile_seconds": round(compile_seconds, 2),
                   "seglab_version": __version__}
        if stop_reason:
            summary["stop_reason"] = stop_reason
        run_files.write_summary(self.run_dir, summary)


def epoch_line(row: dict, epochs: int | None, improved: bool, by_step: bool = False,
               budget: float | None = None) -> str:
    """One metrics row as a log line. `epochs` None: the plan trains as many as the budget allows,
    so the line counts the epoch alone and the seconds against the `budget`."""
    epoch = f"{row['epoch']}/{epochs}" if epochs else f"{row['epoch']}"
    where = f"step {row['step']} (epoch {epoch})" if by_step else f"epoch {epoch}"
    parts = [where, f"train_loss {row['train_loss']:.4f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"dice {row['val_dice']:.4f}", f"iou {row['val_iou']:.4f}",
                  f"pixel_error {row['val_pixel_error']:.4f}"]
    seconds = f"{row['time']:.1f}/{budget:g} s" if budget and not epochs else f"{row['time']:.1f}s"
    parts += [f"lr {row['lr']:.2e}", f"{row['images_per_s']:.1f} img/s", seconds]
    return "  ".join(parts) + ("  *best*" if improved else "")
