"""The run folders under `--runs DIR`: what the /runs page lists (last metrics, best value, curves, report)."""
from __future__ import annotations

import math
from pathlib import Path

from seglab.errors import SeglabError
from seglab.viz.report import read_run

MAX_DEPTH = 3          # runs/<group>/<name>/config.yaml is found; deeper folders are not searched
SHOWN_METRICS = ("train_loss", "val_loss", "val_dice", "val_miou", "val_pixel_error", "time")


def find_runs(root: Path) -> dict[str, Path]:
    """{name relative to root: folder} of every folder holding config.yaml, newest first."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / "config.yaml").is_file():
            found.append(folder)
            return
        if depth == MAX_DEPTH:
            return
        try:
            children = sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))
        except OSError:
            return
        for child in children:
            walk(child, depth + 1)

    walk(root, 0)
    found.sort(key=lambda folder: _modified(folder), reverse=True)
    return {(folder.relative_to(root).as_posix() if folder != root else root.name): folder for folder in found}


def _modified(folder: Path) -> float:
    try:
        return max((folder / name).stat().st_mtime for name in ("metrics.jsonl", "config.yaml")
                   if (folder / name).exists())
    except (OSError, ValueError):
        return 0.0


def _plain(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def describe_run(name: str, folder: Path) -> dict:
    """One entry of GET /v1/runs: the last metrics row, the best monitored value, what ended the run."""
    entry = {"name": name, "curves": (folder / "curves.png").is_file(), "report": (folder / "report.html").is_file(),
             "modified": _modified(folder)}
    try:
        record = read_run(folder)
    except SeglabError as error:
        return {**entry, "error": str(error)}
    last = record.rows[-1] if record.rows else {}
    best = record.best_row() or {}
    monitor = record.config.train.monitor
    return {**entry, "model": record.config.model.name, "unit": record.unit, "evaluations": len(record.rows),
            "last": {key: _plain(last[key]) for key in ("epoch", "step", *SHOWN_METRICS) if key in last},
            "best": {"monitor": monitor, "value": _plain(best.get(monitor)), "epoch": best.get("epoch")},
            "stopped_by": record.summary.get("stopped_by")}
