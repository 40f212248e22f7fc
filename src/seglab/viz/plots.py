"""Loss/metric curves, prediction overlays and side-by-side figures (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from seglab.data.io import atomic_output  # noqa: E402

# Distinct colours for class indices 1..; class 0 is left transparent in overlays.
PALETTE = np.array([
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
], dtype=np.uint8)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_curves(rows: list[dict], path: str | Path, x: str = "epoch") -> Path:
    """Loss curves (train, val) and validation metric curves against `x`: "epoch", or "step" for
    runs evaluated every N optimizer steps (several rows may fall in one epoch)."""
    positions = [r[x] for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
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


def to_display(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) of any dtype -> (H, W, 3) uint8 stretched to its own range."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    low, high = np.percentile(image, (0.5, 99.5))
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    image = (image * 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def overlay(image: np.ndarray, classes: np.ndarray, alpha: float = 0.45,
            highlight: int | None = None) -> np.ndarray:
    """Colour each class (index >= 1, or only `highlight`) over the image: (H, W, 3) uint8."""
    base = to_display(image).astype(np.float32)
    colours = PALETTE[np.clip(classes, 0, len(PALETTE) - 1) % len(PALETTE)].astype(np.float32)
    painted = (classes >= 1) if highlight is None else (classes == highlight)
    if highlight is not None:
        colours[painted] = PALETTE[1]
    base[painted] = (1 - alpha) * base[painted] + alpha * colours[painted]
    return base.astype(np.uint8)


def error_map(truth: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: grey where right, red where wrong, black where ignored."""
    out = np.full(truth.shape + (3,), 200, dtype=np.uint8)
    out[truth != pred] = (220, 30, 30)
    if ignore is not None:
        out[ignore] = 0
    return out


def save_side_by_side(image: np.ndarray, pred: np.ndarray, path: str | Path, title: str = "",
                      truth: np.ndarray | None = None, probability: np.ndarray | None = None) -> Path:
    """Image | (truth) | prediction | (probability) panels in one PNG (the --viz figure)."""
    panels = [("image", to_display(image), None)]
    if truth is not None:
        panels.append(("truth", truth, "tab20"))
    panels.append(("prediction", pred, "tab20"))
    if probability is not None:
        panels.append(("probability", probability, "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for axis, (name, data, cmap) in zip(np.atleast_1d(axes), panels):
        axis.imshow(data, cmap=cmap, interpolation="nearest")
        axis.set_title(name)
        axis.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
