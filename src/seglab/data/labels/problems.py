"""Problems found while reading an annotation file: each one line naming the file and the entry,
raised together as one DataError (the first, and how many more)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from seglab.errors import DataError

# Coordinates may pass the image's edge by this many pixels (exporters round outward); further out
# a point is a mistake: a polygon drawn for another image size, or normalised twice.
EDGE_SLACK_PIXELS = 1.0


class Problems:
    """Collects one-line problems of one annotation source; `raise_any` ends the reading."""

    def __init__(self, source: Path):
        self.source = source
        self.lines: list[str] = []

    def add(self, entry: str, what: str) -> None:
        self.lines.append(f"{self.source}: {entry}: {what}")

    def raise_any(self, advice: str) -> None:
        if self.lines:
            more = len(self.lines) - 1
            also = f" (and {more} more problems in this file)" if more else ""
            raise DataError(f"{self.lines[0]}: {advice}{also}")


def inside_folder(folder: Path, name: str) -> Path | None:
    """folder/name when `name` is a relative path that stays inside `folder` (no '..' out, not
    absolute), else None: an annotation file never makes seglab read outside its data folder."""
    name = name.replace("\\", "/")  # Windows exporters write images\a.jpg
    if not name or os.path.isabs(name):
        return None
    joined = os.path.normpath(os.path.join(folder, name))
    base = os.path.normpath(folder)
    return Path(joined) if joined.startswith(base + os.sep) else None


def outside_point(points, width: int, height: int) -> tuple[float, float] | None:
    """The first (x, y) of `points` outside the W x H image (beyond EDGE_SLACK_PIXELS), or None."""
    for x, y in points:
        if not (-EDGE_SLACK_PIXELS <= x <= width + EDGE_SLACK_PIXELS
                and -EDGE_SLACK_PIXELS <= y <= height + EDGE_SLACK_PIXELS):
            return float(x), float(y)
    return None


def finite_numbers(values) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
