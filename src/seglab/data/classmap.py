"""The explicit map between a user's mask values and class indices, stored in every checkpoint."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Class index of pixels that count nowhere (void, padding from augmentation). Matches PyTorch's
# cross-entropy default, so no loss needs to be told.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ClassMap:
    """Mask value `values[k]` is class k; `ignore_value` (if any) becomes IGNORE_INDEX.

    Two classes train a single-logit model (sigmoid, class 1 = positive); more train K logits.
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    ignore_value: int | None = None

    def __post_init__(self):
        if len(self.values) < 2:
            raise ValueError("a class map needs at least two classes")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"mask values repeat in the class map: {self.values}")
        if len(self.names) != len(self.values):
            raise ValueError(f"{len(self.names)} class names for {len(self.values)} classes")

    @classmethod
    def from_values(cls, values, names=None, ignore_value: int | None = None) -> "ClassMap":
        values = tuple(int(v) for v in values)
        names = tuple(names) if names else tuple(str(v) for v in values)
        return cls(values, names, ignore_value)

    @property
    def num_classes(self) -> int:
        return len(self.values)

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2

    @property
    def num_outputs(self) -> int:
        """Model output channels: 1 logit for binary masks, K for K classes."""
        return 1 if self.is_binary else self.num_classes

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """Raw mask values (H, W) -> class indices (H, W) int64; ignore value -> IGNORE_INDEX.

        Raises ValueError listing the unexpected values (the caller adds the file name).
        """
        lookup_values = np.asarray(self.values, dtype=np.int64)
        flat = mask.astype(np.int64, copy=False)
        out = np.full(flat.shape, IGNORE_INDEX, dtype=np.int64)
        known = np.zeros(flat.shape, dtype=bool)
        for index, value in enumerate(lookup_values):
            hit = flat == value
            out[hit] = index
            known |= hit
        if self.ignore_value is not None:
            known |= flat == self.ignore_value
        if not known.all():
            unexpected = np.unique(flat[~known])
            shown = ", ".join(str(v) for v in unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
            raise ValueError(f"unexpected mask values {shown} (the class map has {list(self.values)})")
        return out

    def decode(self, classes: np.ndarray) -> np.ndarray:
        """Class indices (H, W) -> the user's mask values (H, W), uint8 when they fit, else uint16."""
        dtype = np.uint8 if max(self.values) <= 255 and min(self.values) >= 0 else np.uint16
        table = np.asarray(self.values, dtype=dtype)
        return table[np.clip(classes, 0, self.num_classes - 1)]

    def to_dict(self) -> dict:
        return {"values": list(self.values), "names": list(self.names), "ignore_value": self.ignore_value}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassMap":
        return cls(tuple(int(v) for v in data["values"]), tuple(str(n) for n in data["names"]),
                   None if data.get("ignore_value") is None else int(data["ignore_value"]))

    def describe(self) -> str:
        pairs = ", ".join(f"{v} -> {k} ({n})" for k, (v, n) in enumerate(zip(self.values, self.names)))
        extra = f"; {self.ignore_value} -> ignored" if self.ignore_value is not None else ""
        return pairs + extra
