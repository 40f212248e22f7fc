"""Loss/metric curves and the side-by-side --viz figure, drawn on matplotlib Figure objects.

No pyplot: a Figure with its own Agg canvas changes no global state, so calling seglab from a
notebook leaves the notebook's backend and open figures alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from seglab.data.overlay import to_display
from seglab.data.writing import atomic_output


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def plot_curves(rows: list[dict], path: str | Path, x: str = "epoch") -> Path:
    """Loss curves (train, val) and validation metric curves against `x`: "epoch", or "step" for
    runs evaluated every N optimizer steps (several rows may fall in one epoch)."""
    positions = [r[x] for r in rows]
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_metric = fig.subplots(1, 2)
    ax_loss.plot(positions, [r["train_loss"] for r in rows], label="train loss")
    val_rows = [r for r in rows if "val_loss" in r]
    if val_rows:
        val_positions = [r[x] for r in val_rows]
        ax_loss.plot(val_positions, [r["val_loss"] for r in val_rows], label="val loss")
        for key, label in (("val_dice", "Dice"), ("val_iou", "IoU"), ("val_pixel_error", "pixel error")):
            ax_metric.plot(val_positions, [r[key] for r in val_rows], marker=".", label=label)
        ax_metric.legend()
    ax_metric.set(xlabel=x, title="validation")
    ax_loss.set(xlabel=x, title="loss", yscale="log" if min(r["train_loss"] for r in rows) > 0 else "linear")
    ax_loss.legend()
    for axis in (ax_loss, ax_metric):
        axis.grid(alpha=0.3)
    return _save(fig, path)


def save_side_by_side(image: np.ndarray, pred: np.ndarray, path: str | Path, title: str = "",
                      truth: np.ndarray | None = None, probability: np.ndarray | None = None) -> Path:
    """Image | (truth) | prediction | (probability) panels in one PNG (the --viz figure)."""
    panels = [("image", to_display(image), None)]
    if truth is not None:
        panels.append(("truth", truth, "tab20"))
    panels.append(("prediction", pred, "tab20"))
    if probability is not None:
        panels.append(("probability", probability, "magma"))
    fig = Figure(figsize=(4 * len(panels), 4.3))
    axes = fig.subplots(1, len(panels))
    for axis, (name, data, cmap) in zip(np.atleast_1d(axes), panels):
        axis.imshow(data, cmap=cmap, interpolation="nearest")
        axis.set_title(name)
        axis.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
