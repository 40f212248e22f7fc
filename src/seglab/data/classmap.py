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
    rgb: bool = False  # values are packed colours (r << 16 | g << 8 | b) of RGB colour masks
    colors: tuple[tuple[int, int, int], ...] | None = None  # each class's display colour (a palette's)

    def __post_init__(self):
        if len(self.values) < 2:
            raise ValueError("a class map needs at least two classes")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"mask values repeat in the class map: {self.values}")
        if len(self.names) != len(self.values):
            raise ValueError(f"{len(self.names)} class names for {len(self.values)} classes")
        if self.colors is not None and len(self.colors) != len(self.values):
            raise ValueError(f"{len(self.colors)} class colours for {len(self.values)} classes")

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
        """Class indices (H, W) -> the user's mask values: (H, W) uint8 when they fit, else uint16;
        (H, W, 3) uint8 colours for colour masks."""
        index = np.clip(classes, 0, self.num_classes - 1)
        if self.rgb:
            return unpack_rgb(np.asarray(self.values, dtype=np.int64)[index])
        dtype = np.uint8 if max(self.values) <= 255 and min(self.values) >= 0 else np.uint16
        return np.asarray(self.values, dtype=dtype)[index]

    def to_dict(self) -> dict:
        colors = {"colors": [list(c) for c in self.colors]} if self.colors is not None else {}
        return {"values": list(self.values), "names": list(self.names), "ignore_value": self.ignore_value,
                "rgb": self.rgb, **colors}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassMap":
        colors = data.get("colors")
        return cls(tuple(int(v) for v in data["values"]), tuple(str(n) for n in data["names"]),
                   None if data.get("ignore_value") is None else int(data["ignore_value"]), bool(data.get("rgb")),
                   None if colors is None else tuple(tuple(int(c) for c in colour) for colour in colors))

    def _show(self, value: int) -> str:
        return "rgb(%d,%d,%d)" % tuple(unpack_rgb(np.asarray(value))) if self.rgb else str(value)

    def describe(self) -> str:
        pairs = ", ".join(f"{self._show(v)} -> {k} ({n})" for k, (v, n) in enumerate(zip(self.values, self.names)))
        extra = f"; {self._show(self.ignore_value)} -> ignored" if self.ignore_value is not None else ""
        return pairs + extra


@dataclass(frozen=True)
class MaskRules:
    """What the user said about their masks, before any mask is read: explicit values in class
    order, a class count, class names, an ignored value, and whether values are packed RGB colours
    (from a --mask-colors table). `infer_class_map` combines them with the values it finds."""

    mask_values: tuple[int, ...] | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    ignore_value: int | None = None
    rgb: bool = False

    @classmethod
    def from_options(cls, mask_values=None, num_classes=None, class_names=None, ignore_value=None,
                     mask_colors=None) -> "MaskRules":
        """The rules of the --mask-values/--num-classes/--class-names/--ignore-index/--mask-colors
        options; a colour table file gives the values (packed colours), names and ignored colour."""
        if mask_colors:
            codes, names, ignore = load_color_table(mask_colors)
            return cls(tuple(codes), None, tuple(class_names or names), ignore, True)
        return cls(tuple(mask_values) if mask_values else None, num_classes,
                   tuple(class_names) if class_names else None, ignore_value, False)

    def as_kwargs(self) -> dict:
        """Keyword arguments of `infer_class_map` and `run_preflight`."""
        return {"mask_values": list(self.mask_values) if self.mask_values else None, "num_classes": self.num_classes,
                "class_names": list(self.class_names) if self.class_names else None,
                "ignore_value": self.ignore_value, "rgb": self.rgb}


def value_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values of `mask`, ascending, in its dtype; how many pixels hold each): what
    np.unique(mask, return_counts=True) gives, by a bincount for 8- and 16-bit masks (10x faster on
    512x512 masks, which every check and survey counts)."""
    if mask.dtype in (np.uint8, np.uint16, np.bool_):
        counts = np.bincount(mask.ravel().view(np.uint8) if mask.dtype == np.bool_ else mask.ravel())
        values = np.flatnonzero(counts)
        return values.astype(mask.dtype), counts[values]
    return np.unique(mask, return_counts=True)


def pack_rgb(mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours -> (H, W) int64 codes r << 16 | g << 8 | b, so colours map like values."""
    mask = mask.astype(np.int64)
    return (mask[..., 0] << 16) | (mask[..., 1] << 8) | mask[..., 2]


def unpack_rgb(codes: np.ndarray) -> np.ndarray:
    """(...) codes -> (..., 3) uint8 colours."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)


def load_color_table(path) -> tuple[list[int], list[str], int | None]:
    """A JSON colour table -> (packed colour codes in class order, names, ignored colour code).

    Accepted: {"classes": [{"name": "sky", "color": [128, 128, 128]}, ...], "ignore": [0, 0, 0]}
    or {"sky": [128, 128, 128], ...} (class order = file order; a class named "void" or
    "ignore" is the ignored colour).
    """
    import json
    from pathlib import Path

    from seglab.errors import SeglabError

    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SeglabError(f"cannot read the colour table '{path}' ({error}): give a JSON file") from None
    ignore = None
    if isinstance(table, dict) and "classes" in table:
        entries = [(entry["name"], entry["color"]) for entry in table["classes"]]
        ignore = table.get("ignore")
    elif isinstance(table, dict):
        entries = [(name, color) for name, color in table.items() if name.lower() not in ("void", "ignore")]
        ignore = next((color for name, color in table.items() if name.lower() in ("void", "ignore")), None)
    else:
        raise SeglabError(f"colour table '{path}' must map class names to [r, g, b] colours")
    try:
        codes = [int(pack_rgb(np.asarray(color, dtype=np.int64).reshape(1, 3))[0]) for _, color in entries]
        ignore_code = None if ignore is None else int(pack_rgb(np.asarray(ignore).reshape(1, 3))[0])
    except (ValueError, TypeError):
        raise SeglabError(f"colour table '{path}': every colour must be three integers [r, g, b]") from None
    return codes, [str(name) for name, _ in entries], ignore_code
