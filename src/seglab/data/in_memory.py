"""Data held in memory, as a data folder: arrays, PIL images, tensors or file paths written once into
a folder of images/ and masks/ that everything downstream reads as any folder (the check, the split,
the recipe, the report).

The folder is keyed by the content (pixels, dtypes and shapes; a path's name, size and time), under
the user's cache (~/.cache/seglab/arrays/KEY, or $XDG_CACHE_HOME), written under a temporary name
and renamed whole, so the same data trains from the same files again and a killed write leaves
nothing half-made.

    (images, masks)          a tuple of two equal-length sequences
    [(image, mask), ...]     a list of pairs
    a Dataset                anything with __len__ and __getitem__ yielding (image, mask)

Each image or mask is a NumPy array ((H, W) or (H, W, C); a torch tensor may be (C, H, W)), a PIL
image or a path to an image file. Masks hold integers (their values map to classes as a folder's do).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.folder_lock import remove_stale_temporaries
from seglab.data.writing import write_mask
from seglab.errors import DataError, SeglabError

ACCEPTED = ("a data folder, a tuple (images, masks) of equal-length sequences, a list of (image, mask) pairs, "
            "or a Dataset yielding (image, mask); each a NumPy array, a PIL image, a torch tensor or a file path")
COMPLETE = ".complete"   # written last: a folder without it is not used


def is_in_memory(data: Any) -> bool:
    """Whether `data` is something other than a folder path (or None)."""
    return data is not None and not isinstance(data, (str, os.PathLike))


def as_items(data: Any, what: str = "data") -> list[tuple[Any, Any]]:
    """The (image, mask) items of `data` (see the module's forms); DataError naming what was given."""
    if isinstance(data, tuple) and len(data) == 2 and all(_is_sequence(part) for part in data):
        images, masks = data
        if len(images) != len(masks):
            raise DataError(f"{what}: {len(images)} images but {len(masks)} masks; give one mask per image")
        items = list(zip(images, masks))
    elif isinstance(data, list) and all(isinstance(item, (tuple, list)) and len(item) == 2 for item in data):
        items = [tuple(item) for item in data]
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (list, tuple, dict)):
        items = [_pair(data[index], what, index) for index in range(len(data))]
    else:
        raise DataError(f"{what} is a {type(data).__name__}; seglab takes {ACCEPTED}")
    if not items:
        raise DataError(f"{what} holds no images; seglab takes {ACCEPTED}")
    return items


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim >= 3)


def _pair(item: Any, what: str, index: int) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise DataError(f"{what}[{index}] is a {type(item).__name__}, not an (image, mask) pair")


def as_array(value: Any, role: str, where: str) -> np.ndarray | Path:
    """An image or mask as an (H, W) or (H, W, C) array, or the Path of a file; DataError otherwise."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise DataError(f"{where}: the {role} file '{path}' does not exist")
        return path
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
        if value.ndim == 3 and value.shape[0] in (1, 3, 4) and value.shape[-1] not in (1, 3, 4):
            value = np.moveaxis(value, 0, -1)  # (C, H, W) -> (H, W, C)
    elif hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise DataError(f"{where}: the {role} is a {type(value).__name__}; give a NumPy array, a PIL image, a "
                        "torch tensor or a file path")
    if value.ndim == 3 and value.shape[-1] == 1:
        value = value[..., 0]
    if value.ndim not in (2, 3) or value.size == 0:
        raise DataError(f"{where}: the {role} has shape {value.shape}; expected (H, W) or (H, W, C)")
    return value


def materialise(train: Any, val: Any = None, cache: Path | None = None) -> Path:
    """The folder holding `train` (and `val`) as train/ and val/ images and masks; made once per
    content. Raises DataError for items seglab cannot take."""
    splits = {"train": as_items(train, "data")}
    if val is not None:
        splits["val"] = as_items(val, "val_data")
    prepared = {split: [(as_array(image, "image", f"{split}[{k}]"), as_array(mask, "mask", f"{split}[{k}]"))
                        for k, (image, mask) in enumerate(items)] for split, items in splits.items()}
    root = (cache or _cache_root()) / _content_key(prepared)
    if (root / COMPLETE).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root.parent, root.name)
    temporary = root.parent / f".{root.name}.{os.getpid()}.tmp"
    try:
        for split, pairs in prepared.items():
            for index, (image, mask) in enumerate(pairs):
                _write(image, temporary / split / "images", f"{index:06d}", "image", f"{split}[{index}]")
                _write(mask, temporary / split / "masks", f"{index:06d}", "mask", f"{split}[{index}]")
        (temporary / COMPLETE).write_text("")
        os.replace(temporary, root)
    except OSError as error:
        if not (root / COMPLETE).is_file():  # another process wrote the same data first: theirs is as good
            raise SeglabError(f"cannot write the in-memory data to '{root.parent}' ({error.strerror or error}): "
                              "free space, or set XDG_CACHE_HOME to a writable folder") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return root


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seglab" / "arrays"


def _content_key(prepared: dict[str, list[tuple[Any, Any]]]) -> str:
    digest = hashlib.sha256()
    for split, pairs in prepared.items():
        digest.update(split.encode())
        for value in (value for pair in pairs for value in pair):
            if isinstance(value, Path):
                stat = value.stat()
                digest.update(f"{value.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
            else:
                digest.update(f"{value.dtype.str}{value.shape}".encode())
                digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:24]


def _write(value: np.ndarray | Path, folder: Path, stem: str, role: str, where: str) -> None:
    """A file of `value` in `folder`: a path's bytes copied as they are; an image array as PNG (8 or
    16 bits) or, for other dtypes, as TIFF; a mask array as PNG of its integer values."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(value, Path):
        shutil.copyfile(value, folder / f"{stem}{value.suffix.lower()}")
        return
    if value.dtype == bool:
        value = value.astype(np.uint8) * (255 if role == "image" else 1)
    if role == "mask":
        if not np.issubdtype(value.dtype, np.integer):
            if not np.all(np.isfinite(value)) or not np.all(value == np.round(value)):
                raise DataError(f"{where}: the mask holds non-integer values ({value.dtype}); masks hold class "
                                "values (integers)")
        if value.min() < 0 or value.max() > 65535:
            raise DataError(f"{where}: mask values {value.min()}..{value.max()} are outside 0..65535")
        write_mask(folder / f"{stem}.png", value.astype(np.uint8 if value.max() <= 255 else np.uint16))
        return
    if (value.dtype == np.uint8 and (value.ndim == 2 or value.shape[-1] in (3, 4))) or \
            (value.dtype == np.uint16 and value.ndim == 2):  # what PNG holds
        from PIL import Image

        Image.fromarray(value).save(folder / f"{stem}.png")
        return
    import tifffile

    tifffile.imwrite(folder / f"{stem}.tif", np.ascontiguousarray(value))
