"""`seglab data convert SRC DST`: any layout seglab reads (mask folders, palette PNGs, COCO, YOLO, a
label table) written as images/ + class-index PNG masks/ + classes.json, for those who want files."""
from __future__ import annotations

import json
from pathlib import Path

from seglab.data.labels.class_rules import CLASSES_FILE
from seglab.data.mask_repair import fix_and_recheck, require_empty_folder
from seglab.data.preflight import format_preflight, run_preflight
from seglab.data.writing import atomic_output


def convert_folder(source: str | Path, dest: str | Path, label_map: str | None = None, **rules) -> tuple[str, bool]:
    """Check `source` as `seglab check` does (with `rules`: the mask options), then write the copy:
    (text to print, the copy passes the check). A source that fails its check writes nothing."""
    require_empty_folder(dest)
    report = run_preflight(source, **rules, label_map=label_map)
    if report.errors or report.fix is None:
        return format_preflight(report) + f"\nnothing written: fix the problems above, then convert {source}", False
    if report.fix.class_map.multilabel:
        return (format_preflight(report) + "\nnothing written: `seglab data convert` writes one class per pixel and "
                f"these masks hold overlapping labels; train on {source} itself (its labels are packed into bit "
                "sets in its .seglab-cache/)"), False
    text, ok = fix_and_recheck(report, dest)
    class_map = report.class_map or report.fix.class_map
    ignore = None  # as write_fixed_copy writes it: the value itself when it fits after the classes, else 255
    if class_map.ignore_value is not None:
        fits = class_map.num_classes <= class_map.ignore_value <= 255 and not class_map.rgb
        ignore = class_map.ignore_value if fits else 255
    entries = [{"index": index, "name": name, "value": value}
               | ({"color": list(class_map.colors[index])} if class_map.colors else {})
               for index, (name, value) in enumerate(zip(class_map.names, class_map.values))]
    with atomic_output(Path(dest) / CLASSES_FILE) as temporary:
        Path(temporary).write_text(json.dumps({"classes": entries, "ignore": ignore}, indent=1) + "\n")
    return f"{text}\nclasses: {Path(dest) / CLASSES_FILE}", ok
