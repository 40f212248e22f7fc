"""What one mask file holds, read once for `seglab check`: its values, its kind (gray, palette,
RGB) and whether its edges look blurred (JPEG, antialiased resizing), and their survey."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglab.data.classmap import pack_rgb, value_counts
from seglab.data.discover import MaskSurvey
from seglab.data.io import read_mask_and_palette

JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclass
class MaskFacts:
    """What one mask file holds: its raw values (packed colours for RGB) and how they look."""

    path: Path
    kind: str                        # "gray", "palette" or "rgb"
    counts: dict[int, int]
    blurred: tuple[int, int] | None  # the two dominant values, when the rest looks like blurred edges
    stray_share: float = 0.0         # pixels that are neither dominant value
    palette: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def values(self) -> list[int]:
        return sorted(self.counts)

    @property
    def convention(self) -> str | None:
        """"{0,1}" or "{0,255}" for binary masks (after blur), else None."""
        values = set(self.blurred or self.values)
        if values <= {0, 1} and 1 in values:
            return "{0,1}"
        if values <= {0, 255} and 255 in values:
            return "{0,255}"
        return None



def _blur(mask: np.ndarray, values: np.ndarray, counts: np.ndarray, jpeg: bool) -> tuple[tuple[int, int] | None, float]:
    """(dominant pair, stray share) when a mask looks like two values with blurred edges between them.

    JPEG and antialiased resizing leave scattered in-between values, each pixel unlike its
    neighbours; real classes form regions whose pixels share the value of their neighbours.
    """
    if len(values) < 3 or mask.ndim != 2 or mask.shape[0] < 2 or mask.shape[1] < 2:
        return None, 0.0
    first = int(values[np.argmax(counts)])
    far = np.abs(values.astype(np.int64) - first) >= max((values.max() - values.min()) / 2, 1)
    if not far.any():
        return None, 0.0
    second = int(values[far][np.argmax(counts[far])])
    dominant = np.isin(mask, (first, second))
    stray_share = 1.0 - dominant.mean()
    if stray_share == 0 or stray_share > 0.5:
        return None, float(stray_share)
    stray = ~dominant[:-1, :-1]
    inner = mask[:-1, :-1]
    like_neighbours = (inner == mask[1:, :-1]) & (inner == mask[:-1, 1:])
    scattered = like_neighbours[stray].mean() < 0.5 if stray.any() else False
    distinct_stray = len(values) - 2
    if scattered and (distinct_stray >= 3 or jpeg):
        return (min(first, second), max(first, second)), float(stray_share)
    return None, float(stray_share)


def mask_facts(path: Path, mask: np.ndarray | None = None, colours: np.ndarray | None = None) -> MaskFacts:
    """Describe one mask, read from `path` unless given with `colours`, its (N, 3) palette when it
    is a palette image (`read_mask_and_palette`); raises DataError naming an unreadable file."""
    if mask is None:
        mask, colours = read_mask_and_palette(path)
    kind, palette = "gray", {}
    if mask.ndim == 3:
        kind, mask = "rgb", pack_rgb(mask)
    elif colours is not None:
        kind = "palette"
        palette = {i: tuple(int(c) for c in colours[i]) for i in range(len(colours))}
    values, counts = value_counts(mask)
    blurred, stray = (None, 0.0) if kind == "rgb" else _blur(mask, values, counts, path.suffix.lower() in JPEG_SUFFIXES)
    used = {int(v) for v in values}
    return MaskFacts(path, kind, dict(zip(values.tolist(), counts.tolist())), blurred, stray,
                     {i: c for i, c in palette.items() if i in used})


def survey_facts(facts: list[MaskFacts], clean: bool = False, unify_binary: bool = False) -> MaskSurvey:
    """The MaskSurvey infer_class_map takes; `clean`: as --fix-to will write the masks (blurred
    edges snapped to the dominant values, {0,1} masks read as {0,255} when conventions are mixed)."""
    survey = MaskSurvey()
    for fact in facts:
        counts = dict(fact.counts)
        if clean and fact.blurred:
            counts = {v: counts[v] for v in fact.blurred}
        if clean and unify_binary and fact.convention == "{0,1}":
            counts = {v * 255: c for v, c in counts.items()}
        survey.files_read += 1
        survey.distinct_per_file[fact.path] = len(counts)
        if fact.kind == "rgb":
            survey.rgb_files.append(fact.path)
        for value, count in counts.items():
            survey.counts[value] += count
            survey.first_file.setdefault(value, fact.path)
    return survey
