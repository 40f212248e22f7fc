"""The explicit map between a user's mask values and class indices, stored in every checkpoint."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Class index of pixels that count nowhere (void, padding from augmentation). Matches PyTorch's
# cross-entropy default, so no loss needs to be told.
IGNORE_INDEX = -100
# Labels a multi-label mask holds at most: one bit each of a 16-bit PNG.
MAX_LABELS = 16


@dataclass(frozen=True)
class ClassMap:
    """Mask value `values[k]` is class k; `ignore_value` (if any) becomes IGNORE_INDEX.

    Two classes train a single-logit model (sigmoid, class 1 = positive); more train K logits.
    A `multilabel` map holds K overlapping labels instead: a mask value is a set of labels, bit k
    (`values[k]` = 2**k) set where label k is, and the model has one sigmoid per label. Its "class
    indices" are those bit sets ((H, W) int64, IGNORE_INDEX where ignored).
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    ignore_value: int | None = None
    rgb: bool = False  # values are packed colours (r << 16 | g << 8 | b) of RGB colour masks
    colors: tuple[tuple[int, int, int], ...] | None = None  # each class's display colour (a palette's)
    multilabel: bool = False  # overlapping labels, one bit each (see the class docstring)

    def __post_init__(self):
        if len(self.values) < 2:
            raise ValueError("a class map needs at least two classes")
        if self.multilabel and self.values != tuple(1 << k for k in range(len(self.values))):
            raise ValueError(f"a multi-label map's values are the labels' bits 1, 2, 4, ...; not {self.values}")
        if self.multilabel and len(self.values) > MAX_LABELS:
            raise ValueError(f"{len(self.values)} labels; a multi-label map holds at most {MAX_LABELS}")
        if self.multilabel and self.ignore_value is not None and 0 <= self.ignore_value < 1 << len(self.values):
            raise ValueError(f"the ignored value {self.ignore_value} is a set of labels of a {len(self.values)}-label "
                             f"map: ignore a value from {1 << len(self.values)} up")
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

    @classmethod
    def of_labels(cls, names, ignore_value: int | None = None) -> "ClassMap":
        """A multi-label map of the labels `names`, label k in bit k."""
        return cls(tuple(1 << k for k in range(len(names))), tuple(names), ignore_value, multilabel=True)

    @property
    def num_classes(self) -> int:
        return len(self.values)

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2 and not self.multilabel

    @property
    def num_outputs(self) -> int:
        """Model output channels: 1 logit for binary masks, K for K classes or K labels."""
        return 1 if self.is_binary else self.num_classes

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """Raw mask values (H, W) -> class indices (H, W) int64 (a multi-label map: the label bits,
        checked); ignore value -> IGNORE_INDEX.

        Raises ValueError listing the unexpected values (the caller adds the file name).
        """
        if self.multilabel:
            return self._encode_labels(mask)
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

    def _encode_labels(self, mask: np.ndarray) -> np.ndarray:
        flat = mask.astype(np.int64, copy=False)
        ignored = flat == self.ignore_value if self.ignore_value is not None else np.zeros(flat.shape, bool)
        outside = ((flat < 0) | (flat >= 1 << self.num_classes)) & ~ignored
        if outside.any():
            unexpected = np.unique(flat[outside])
            shown = ", ".join(str(v) for v in unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
            raise ValueError(f"unexpected mask values {shown} (the {self.num_classes} labels are bits 0.."
                             f"{self.num_classes - 1}: values 0..{(1 << self.num_classes) - 1})")
        return np.where(ignored, IGNORE_INDEX, flat)

    def decode(self, classes: np.ndarray) -> np.ndarray:
        """Class indices (H, W) -> the user's mask values: (H, W) uint8 when they fit, else uint16;
        (H, W, 3) uint8 colours for colour masks; a multi-label map's bit sets as they are (uint8
        for up to 8 labels, else uint16; ignored pixels 0)."""
        if self.multilabel:
            return np.clip(classes, 0, None).astype(np.uint8 if self.num_classes <= 8 else np.uint16)
        index = np.clip(classes, 0, self.num_classes - 1)
        if self.rgb:
            return unpack_rgb(np.asarray(self.values, dtype=np.int64)[index])
        dtype = np.uint8 if max(self.values) <= 255 and min(self.values) >= 0 else np.uint16
        return np.asarray(self.values, dtype=dtype)[index]

    def holds(self, value: int, k: int) -> bool:
        """Whether raw mask value `value` is class k (for a multi-label map: holds label k's bit)."""
        if self.multilabel:
            return value != self.ignore_value and value >= 0 and bool(value & self.values[k])
        return value == self.values[k]

    def pixel_counts(self, value_counts: dict[int, int]) -> list[int]:
        """Pixels of each class from pixels per raw mask value (a survey's)."""
        if not self.multilabel:
            return [int(value_counts.get(value, 0)) for value in self.values]
        return [sum(int(count) for value, count in value_counts.items() if self.holds(value, k))
                for k in range(self.num_classes)]

    def to_dict(self) -> dict:
        colors = {"colors": [list(c) for c in self.colors]} if self.colors is not None else {}
        labels = {"multilabel": True} if self.multilabel else {}  # files of single-label maps stay as 0.2 wrote them
        return {"values": list(self.values), "names": list(self.names), "ignore_value": self.ignore_value,
                "rgb": self.rgb, **colors, **labels}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassMap":
        colors = data.get("colors")
        return cls(tuple(int(v) for v in data["values"]), tuple(str(n) for n in data["names"]),
                   None if data.get("ignore_value") is None else int(data["ignore_value"]), bool(data.get("rgb")),
                   None if colors is None else tuple(tuple(int(c) for c in colour) for colour in colors),
                   bool(data.get("multilabel")))

    def _show(self, value: int) -> str:
        return "rgb(%d,%d,%d)" % tuple(unpack_rgb(np.asarray(value))) if self.rgb else str(value)

    def describe(self) -> str:
        if self.multilabel:
            labels = ", ".join(f"bit {k} -> {name}" for k, name in enumerate(self.names))
            extra = f"; {self.ignore_value} -> ignored" if self.ignore_value is not None else ""
            return f"{self.num_classes} overlapping labels: {labels}{extra}"
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
    multilabel: bool = False  # overlapping labels (--multilabel, or found in the folder's layout)

    @classmethod
    def from_options(cls, mask_values=None, num_classes=None, class_names=None, ignore_value=None,
                     mask_colors=None, multilabel: bool = False) -> "MaskRules":
        """The rules of the --mask-values/--num-classes/--class-names/--ignore-index/--mask-colors/
        --multilabel options; a colour table file gives the values (packed colours), names and
        ignored colour."""
        from seglab.errors import SeglabError

        if multilabel and (mask_colors or mask_values):
            raise SeglabError(f"--{'mask-colors' if mask_colors else 'mask-values'} maps one class to each pixel; "
                              "multi-label masks hold a bit per label: give --class-names (one per label) instead")
        if mask_colors:
            codes, names, ignore = load_color_table(mask_colors)
            return cls(tuple(codes), None, tuple(class_names or names), ignore, True)
        return cls(tuple(mask_values) if mask_values else None, num_classes,
                   tuple(class_names) if class_names else None, ignore_value, False, bool(multilabel))

    def as_kwargs(self) -> dict:
        """Keyword arguments of `infer_class_map` and `run_preflight`."""
        return {"mask_values": list(self.mask_values) if self.mask_values else None, "num_classes": self.num_classes,
                "class_names": list(self.class_names) if self.class_names else None,
                "ignore_value": self.ignore_value, "rgb": self.rgb, "multilabel": self.multilabel}


def class_masks(truth: np.ndarray, class_map: ClassMap) -> np.ndarray:
    """(K, H, W) bool: where each class of `class_map` is in `truth` ((H, W) class indices, or a
    multi-label map's bit sets); ignored pixels are in none."""
    classes = np.arange(class_map.num_classes).reshape(-1, 1, 1)
    if class_map.multilabel:
        return ((np.where(truth >= 0, truth, 0)[None] >> classes) & 1).astype(bool)
    return truth[None] == classes


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
