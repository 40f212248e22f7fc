"""The run folders under `--runs DIR`: what the /runs page lists (last metrics, best value, curves, report).

Nothing outside DIR is listed, read or served: folders and files are resolved (symlinks
followed) and kept only when they land inside DIR, and a served file is checked again on the
descriptor it is read from. Only regular files are read (a FIFO named metrics.jsonl would block).
"""
from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from seglab.errors import SeglabError
from seglab.runtime.run_files import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_run

MAX_DEPTH = 3          # runs/<group>/<name>/config.yaml is found; deeper folders are not searched
SHOWN_METRICS = ("train_loss", "val_loss", "val_dice", "val_miou", "val_pixel_error", "time")
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, "curves.png", "report.html")
CHUNK = 1 << 20


def _real(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None


def confined(root: Path, path: Path) -> Path | None:
    """`path` resolved, when it exists inside `root` (itself resolved); else None."""
    real = _real(path)
    return real if real is not None and real.is_relative_to(root) else None


def confined_file(root: Path, path: Path) -> Path | None:
    """`path` resolved, when it is a regular file inside `root`; else None."""
    real = confined(root, path)
    return real if real is not None and real.is_file() else None


def find_runs(root: Path) -> dict[str, Path]:
    """{name relative to root: folder} of every folder inside root holding config.yaml, newest first."""
    root = root.resolve()
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if confined_file(root, folder / "config.yaml"):
            found.append(folder)
            return
        if depth == MAX_DEPTH:
            return
        try:
            children = sorted(child for child in folder.iterdir() if not child.name.startswith("."))
        except OSError:
            return
        for child in children:
            if (real := confined(root, child)) is not None and real.is_dir():
                walk(real, depth + 1)

    walk(root, 0)
    found.sort(key=lambda folder: _modified(folder), reverse=True)
    return {(folder.relative_to(root).as_posix() if folder != root else root.name): folder for folder in found}


def leaving_files(root: Path, folder: Path) -> list[str]:
    """The files of a run that exist but are not regular files inside root (links out, FIFOs, ...)."""
    root = root.resolve()
    return [name for name in RUN_FILES if os.path.lexists(folder / name) and confined_file(root, folder / name) is None]


def _modified(folder: Path) -> float:
    try:
        return max((folder / name).stat().st_mtime for name in (METRICS_FILE, CONFIG_FILE)
                   if (folder / name).exists())
    except (OSError, ValueError):
        return 0.0


def _plain(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def describe_run(root: Path, name: str, folder: Path) -> dict:
    """One entry of GET /v1/runs: the last metrics row, the best monitored value, what ended the run."""
    entry = {"name": name, "curves": confined_file(root.resolve(), folder / "curves.png") is not None,
             "report": confined_file(root.resolve(), folder / "report.html") is not None,
             "modified": _modified(folder)}
    outside = leaving_files(root, folder)
    if outside:
        return {**entry, "error": f"{', '.join(outside)} of this run is not a file inside the runs folder (a link "
                                  "out of it?); the run is not shown"}
    try:
        record = read_run(folder)
    except SeglabError as error:
        return {**entry, "error": str(error).replace(str(folder), name)}
    last = record.rows[-1] if record.rows else {}
    best = record.best_row() or {}
    monitor = record.config.train.monitor
    return {**entry, "model": record.config.model.name, "unit": record.unit, "evaluations": len(record.rows),
            "last": {key: _plain(last[key]) for key in ("epoch", "step", *SHOWN_METRICS) if key in last},
            "best": {"monitor": monitor, "value": _plain(best.get(monitor)), "epoch": best.get("epoch")},
            "stopped_by": record.summary.get("stopped_by")}


def open_confined(root: Path, path: Path) -> BinaryIO | None:
    """`path` opened for reading when it is a regular file inside root, checked on the open
    descriptor itself (so a link swapped in after the check is caught); else None."""
    real = confined_file(root.resolve(), path)
    if real is None:
        return None
    try:
        descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    handle = os.fdopen(descriptor, "rb")
    opened = Path(f"/proc/self/fd/{descriptor}")
    where = _real(opened) if opened.exists() else real
    if not stat.S_ISREG(os.fstat(descriptor).st_mode) or where is None or not where.is_relative_to(root.resolve()):
        handle.close()
        return None
    return handle


def chunks(handle: BinaryIO) -> Iterator[bytes]:
    """The file's bytes a megabyte at a time; closes it at the end."""
    with handle:
        while block := handle.read(CHUNK):
            yield block
