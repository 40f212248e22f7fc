"""What a Predictor takes (a path, a NumPy array or a PIL image) and what it gives back (a Prediction)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from seglab.data.io import read_image
from seglab.data.overlay import overlay
from seglab.data.writing import png_data_uri
from seglab.errors import DataError

ImageInput = Union[str, Path, np.ndarray, "PIL.Image.Image"]  # noqa: F821 (PIL only when given)


@dataclass(repr=False)
class Prediction:
    probabilities: np.ndarray          # (K, H, W) float32; K = 1 (sigmoid, P(class 1)) for binary models
    classes: np.ndarray                # (H, W) int64 class indices; a multi-label model's: label k in bit k
    mask: np.ndarray                   # (H, W) the user's mask values (uint8 / uint16), (H, W, 3) colours
    instances: np.ndarray | None = None  # (H, W) int32 cell labels 1..N (0 = boundary), when asked for
    name: str = "image"
    image: np.ndarray | None = None    # (H, W, C) the input as predicted (a reference, for pictures)
    class_names: tuple[str, ...] = ()
    multilabel: bool = False           # K overlapping labels (sigmoids), `classes` and `mask` their bit sets

    @property
    def pixel_counts(self) -> np.ndarray:
        """(K,) pixels of each class (of each label: they may overlap)."""
        classes = max(len(self.class_names), self.probabilities.shape[0], 1)
        if self.multilabel:
            return np.array([int(((self.classes >> k) & 1).sum()) for k in range(classes)], dtype=np.int64)
        return np.bincount(self.classes.ravel(), minlength=classes)

    def __repr__(self) -> str:
        height, width = self.classes.shape
        counts = self.pixel_counts
        names = self.class_names or tuple(str(k) for k in range(len(counts)))
        shares = ", ".join(f"{name} {count / self.classes.size:.1%}" for name, count in zip(names, counts))
        cells = f"; {int(self.instances.max())} instances" if self.instances is not None else ""
        return f"Prediction('{self.name}', {width}x{height}: {shares}{cells})"

    def overlay(self, alpha: float = 0.45) -> np.ndarray:
        """(H, W, 3) uint8: the classes (index >= 1; every label of a multi-label model) coloured over
        the image (over grey without one)."""
        image = self.image if self.image is not None else np.full(self.classes.shape, 128, np.uint8)
        return overlay(image, self.classes, alpha, labels=self.probabilities.shape[0] if self.multilabel else 0)

    def _repr_html_(self) -> str:
        """In Jupyter: the overlay, and the one-line summary under it."""
        return (f"<figure style='margin:0'><img src='{png_data_uri(self.overlay())}' style='max-width:512px'>"
                f"<figcaption><code>{html.escape(repr(self))}</code></figcaption></figure>")


def as_array(image: ImageInput) -> tuple[np.ndarray, str]:
    """A path, a NumPy array (H, W) or (H, W, C), or a PIL image -> ((H, W, C) array, a name for messages)."""
    if isinstance(image, (str, Path)):
        return read_image(image), str(image)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise DataError(f"an image array must be (H, W) or (H, W, C), not shape {image.shape}")
        return (image[..., None] if image.ndim == 2 else image), "array"
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image, without importing Pillow here
        if image.mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        elif image.mode in ("1", "LA"):
            image = image.convert("L")
        array = np.asarray(image)
        return (array[..., None] if array.ndim == 2 else array), "PIL image"
    raise DataError(f"cannot predict a {type(image).__name__}: give a file path, a NumPy array or a PIL image")
