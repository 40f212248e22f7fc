"""Masks rasterised from annotations, cached in the labelled folder's `.seglab-cache/`: keyed by the
content of the annotation files, so a second run reads them and a changed file rebuilds them.

A cache folder is written whole under a temporary name and renamed into place, so a killed run
leaves no half cache: only a temporary that the next build removes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seglab.data.writing import atomic_output, write_mask
from seglab.errors import SeglabError

CACHE_DIR_NAME = ".seglab-cache"
# Bump when rasterisation changes, so caches of an older seglab are rebuilt, not read.
CACHE_VERSION = "2"
MANIFEST = "labels.json"


@dataclass(frozen=True)
class CachedMasks:
    """A cache folder's contents: (image, mask) paths, and mask value -> class name."""

    folder: Path
    pairs: list[tuple[Path, Path]]
    classes: dict[int, str]
    reused: bool
    unlabelled: bool = True  # some pixel of some mask is 0: nothing labelled it


def content_key(files: list[Path], *extra: str) -> str:
    """A hex digest of the files' names and bytes (and `extra` strings): what the cache is keyed by."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for text in extra:
        digest.update(b"\0" + text.encode())
    for path in files:
        digest.update(b"\0" + path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def cache_folder(labelled: Path, kind: str, key: str) -> Path:
    """Where the masks of `labelled` (the folder holding the labels) are cached for `key`: its
    `.seglab-cache/`, or when the folder is read-only, the user's cache (~/.cache/seglab/labels/)."""
    name = f"{kind.lower().replace(' ', '-')}-{key}"
    if os.access(labelled, os.W_OK) or os.access(labelled / CACHE_DIR_NAME, os.W_OK):
        return labelled / CACHE_DIR_NAME / name
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = hashlib.sha256(str(labelled.resolve()).encode()).hexdigest()[:12]
    return user_cache / "seglab" / "labels" / where / name


def load_cache(folder: Path, data_folder: Path) -> CachedMasks | None:
    """The cache in `folder` if it is whole and its images are still there, else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        pairs = [(data_folder / image, folder / mask) for image, mask in manifest["pairs"]]
        classes = {int(value): str(name) for value, name in manifest["classes"]}
        unlabelled = bool(manifest["unlabelled"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(image.is_file() and mask.is_file() for image, mask in pairs):
        return None
    return CachedMasks(folder, pairs, classes, reused=True, unlabelled=unlabelled)


def mask_name(image: Path, data_folder: Path) -> str:
    """The cached mask's file name: the image's path in the data folder, '/' as '__', as a PNG."""
    relative = image.relative_to(data_folder).with_suffix(".png")
    return "__".join(relative.parts)


def build_cache(folder: Path, data_folder: Path, images: list[Path], classes: dict[int, str],
                draw: Callable[[int], np.ndarray]) -> CachedMasks:
    """Write `draw(i)` ((H, W) class mask of images[i]) for every image into `folder`, atomically."""
    staging = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(folder.parent)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as error:
        raise SeglabError(f"cannot write the label cache '{folder.parent}' ({error.strerror or error}): free space "
                          "or make the data folder writable") from None
    try:
        pairs, unlabelled = [], False
        for index, image in enumerate(images):
            name = mask_name(image, data_folder)
            mask = draw(index)
            unlabelled = unlabelled or not mask.all()
            write_mask(staging / name, mask)
            pairs.append([str(image.relative_to(data_folder)), name])
        manifest = {"version": CACHE_VERSION, "pairs": pairs, "classes": [[v, n] for v, n in classes.items()],
                    "unlabelled": unlabelled}
        with atomic_output(staging / MANIFEST) as temporary:  # a failed write is one line, as for masks
            Path(temporary).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        try:
            os.rename(staging, folder)
        except OSError:  # another run built the same cache first: theirs is as good
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in folder.parent.iterdir():  # caches of earlier versions of the same labels
        if old != folder and old.name.startswith(folder.name.rsplit("-", 1)[0] + "-") and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    built = load_cache(folder, data_folder)
    return CachedMasks(folder, built.pairs if built else [], classes, reused=False, unlabelled=unlabelled)


def _remove_stale_builds(parent: Path) -> None:
    """Temporaries left by killed builds (their process is gone)."""
    for path in parent.glob(".*.tmp"):
        try:
            pid = int(path.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except (ValueError, IndexError):
            continue
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue
