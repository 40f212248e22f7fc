"""How a folder's mask values become classes when its labels say more than the values: the names of
annotation categories, a palette's colours, VOC's border value 255 in palette masks."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from seglab.data.classmap import ClassMap, MaskRules
from seglab.data.discover import DataLayout, MaskSurvey, infer_class_map

CLASSES_FILE = "classes.json"
VOC_BORDER = 255  # Pascal VOC's palette masks draw object borders (and "difficult" areas) in index 255


def palette_colours(mask: Path | None, palette_of: Callable[[Path], np.ndarray | None]) -> np.ndarray | None:
    """(256, 3) uint8: the palette of a palette PNG mask, else None; `palette_of(mask)`: its (N, 3)
    colours or None (`DecodedFiles.palette`, kept from the mask's decode: no second read)."""
    if mask is None or mask.suffix.lower() not in (".png", ".gif", ".bmp"):
        return None
    colours = palette_of(mask)
    return np.resize(colours, (256, 3)) if colours is not None and len(colours) else None


def classes_file(root: Path) -> dict[int, str] | None:
    """Mask value -> name from the classes.json `seglab data convert` writes beside images/ and
    masks/ (None without one; a classes.json of another shape is not seglab's, and not read)."""
    import json

    try:
        data = json.loads((root / CLASSES_FILE).read_text(encoding="utf-8"))
        return {int(entry["index"]): str(entry["name"]) for entry in data["classes"]} | (
            {} if data.get("ignore") is None else {int(data["ignore"]): None})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def label_rules(layout: DataLayout | None, user: MaskRules, seen: set[int], palette: np.ndarray | None) -> MaskRules:
    """The user's rules completed by what the labels say, unless the user gave the values: an
    annotation set's values and category names, or those of a converted folder's classes.json;
    and for palette masks (`palette`: the first mask's palette_colours) holding 255 among other
    classes, 255 ignored (unless the user chose an ignored value)."""
    told_values = user.mask_values is not None or user.rgb
    sources = layout.label_sources() if layout is not None else []
    labels = next((source for source in sources if source.multilabel), None)
    if labels is not None:  # label folders or mask channels, packed into bit sets: their names
        return MaskRules(None, user.num_classes or len(labels.names), user.class_names or labels.names,
                         user.ignore_value, False, True)
    classes = {value: name for source in sources for value, name in zip(source.values, source.names)}
    ignore = next((s.ignore_value for s in sources if s.ignore_value is not None), None)
    if not sources and layout is not None:
        classes = classes_file(layout.root) or {}
        ignore = next((value for value, name in classes.items() if name is None), None)
        classes = {value: name for value, name in classes.items() if name is not None}
    if classes and not told_values and user.num_classes is None:
        values = tuple(sorted(classes))
        return MaskRules(values, None, user.class_names or tuple(classes[v] for v in values),
                         ignore if user.ignore_value is None else user.ignore_value)
    if not told_values and _voc_border(user, seen, palette):
        return dataclasses.replace(user, ignore_value=VOC_BORDER)
    return user


def _voc_border(user: MaskRules, seen: set[int], palette: np.ndarray | None) -> bool:
    """Palette masks holding 255 besides other classes (not a binary {0, 255} palette mask), no
    ignored value given and no --num-classes that would make 255 a class: VOC's border."""
    return (user.ignore_value is None and VOC_BORDER in seen and not seen - {VOC_BORDER} <= {0}
            and (user.num_classes is None or user.num_classes <= VOC_BORDER)
            and palette is not None)


def with_colours(class_map: ClassMap, palette: np.ndarray | None) -> ClassMap:
    """The class map with each class's colour in `palette` (the first mask's palette_colours),
    when the masks are palette PNGs."""
    if (palette is None or class_map.rgb or class_map.multilabel or max(class_map.values) > 255
            or min(class_map.values) < 0):
        return class_map
    colours = tuple(tuple(int(c) for c in palette[value]) for value in class_map.values)
    return dataclasses.replace(class_map, colors=colours)


def class_map_for(survey: MaskSurvey, layout: DataLayout | None, user: MaskRules,
                  palette_of: Callable[[Path], np.ndarray | None]) -> ClassMap:
    """infer_class_map under `label_rules`, with palette colours: what a run's masks mean.
    `palette_of`: as palette_colours takes it."""
    palette = palette_colours(next(iter(survey.distinct_per_file), None), palette_of)
    rules = label_rules(layout, user, set(survey.values), palette)
    return with_colours(infer_class_map(survey, **rules.as_kwargs()), palette)
