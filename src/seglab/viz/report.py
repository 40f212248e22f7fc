"""report.html for a run folder: one self-contained page (inline CSS, images as data URIs, no scripts)
with the config, the environment, the curves, per-class scores, speed and the best/worst predictions."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.data.io import atomic_output
from seglab.errors import SeglabError

PANEL_WIDTH = 300       # pixels of each picture in the overlay rows
MAX_SCORED = 64         # validation images predicted to find the best and worst (evenly spread)
SHOWN_PER_END = 3       # best and worst images shown
MAX_EPOCH_ROWS = 60

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1240px;
       color: #1d2330; background: #fff; padding: 0 16px; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 2px solid #e3e7ef;
     padding-bottom: 4px; }
.sub { color: #5b6475; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: #f3f6fb; border: 1px solid #dfe5ef; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.card b { display: block; font-size: 22px; color: #1f4fa0; } .card span { color: #5b6475; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #dfe5ef; padding: 5px 10px; text-align: right; }
th { background: #f3f6fb; } td:first-child, th:first-child { text-align: left; }
tr.mean td { font-weight: bold; background: #fafbfd; }
.bar { display: inline-block; height: 10px; background: #3d7be0; border-radius: 2px; vertical-align: middle; }
img { max-width: 100%; } img.curves { border: 1px solid #dfe5ef; border-radius: 6px; }
.example { margin: 14px 0 22px; } .example h3 { font-size: 15px; margin: 0 0 6px; }
.panels { display: flex; gap: 8px; flex-wrap: wrap; }
figure { margin: 0; } figcaption { font-size: 12px; color: #5b6475; text-align: center; }
.panels img { width: 290px; image-rendering: pixelated; border: 1px solid #dfe5ef; }
pre { background: #f6f8fa; border: 1px solid #dfe5ef; border-radius: 6px; padding: 12px; font-size: 13px;
      overflow-x: auto; }
.note { color: #8a5a00; background: #fff7e0; border: 1px solid #f0d890; padding: 8px 12px; border-radius: 6px; }
.legend span { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin: 0 4px 0 12px; }
"""


@dataclass
class Example:
    name: str
    score: float
    pictures: list[tuple[str, np.ndarray]]  # (caption, (H, W, 3) uint8)


def _png_data_uri(picture: np.ndarray, width: int | None = PANEL_WIDTH) -> str:
    image = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8))
    if width and image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _file_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl (one JSON object per epoch); a broken line is named in the error."""
    rows = []
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise SeglabError(f"'{path}' line {number} is not JSON: the run folder is damaged; "
                              "remove the line or retrain") from None
    return rows


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _resolve(path_text: str | None, run_dir: Path) -> str | None:
    """A path from config.yaml as written (relative to where training ran), else beside the run folder."""
    if not path_text:
        return path_text
    path = Path(path_text)
    if path.is_absolute() or path.exists():
        return path_text
    for base in (run_dir.parent, run_dir.parent.parent):
        if (base / path).exists():
            return str(base / path)
    return path_text


def _curves_uri(run_dir: Path, rows: list[dict], unit: str) -> str | None:
    if (run_dir / "curves.png").is_file():
        return _file_data_uri(run_dir / "curves.png")
    if not rows or not all("train_loss" in r for r in rows):
        return None
    from seglab.viz.plots import plot_curves

    with tempfile.TemporaryDirectory() as folder:
        return _file_data_uri(plot_curves(rows, Path(folder) / "curves.png", x=unit))


def _mean_dice(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the classes present in the truth or the prediction (ignored pixels skipped)."""
    import torch

    from seglab.metrics import ConfusionMatrix

    confusion = ConfusionMatrix(num_classes)
    confusion.update(torch.from_numpy(pred), torch.from_numpy(truth))
    return float(confusion.scores()["mdice"])


def _validation_examples(run_dir: Path, config, device: str) -> tuple[list[Example], int, str]:
    """Predict the validation images with best.pt; (examples sorted best first, images scored, note)."""
    import dataclasses

    from seglab.data.classmap import IGNORE_INDEX, pack_rgb
    from seglab.data.io import read_image, read_mask
    from seglab.engine.data_plan import plan_data
    from seglab.inference.predictor import Predictor
    from seglab.data.overlay import error_map, overlay, to_display

    checkpoint = run_dir / "best.pt"
    if not checkpoint.is_file():
        return [], 0, "no best.pt in the run folder: no predictions to show"
    data = dataclasses.replace(config.data, root=_resolve(config.data.root, run_dir),
                               val_dir=_resolve(config.data.val_dir, run_dir),
                               mask_colors=_resolve(config.data.mask_colors, run_dir))
    plan = plan_data(dataclasses.replace(config, data=data))
    pairs = plan.val_pairs
    if not pairs:
        return [], 0, "the run held out no validation images (--validation 0): no predictions to show"
    note = ""
    if len(pairs) > MAX_SCORED:
        picks = np.linspace(0, len(pairs) - 1, MAX_SCORED).round().astype(int)
        note = f"best and worst of {MAX_SCORED} of the {len(pairs)} validation images (evenly spread)"
        pairs = [pairs[i] for i in sorted(set(picks.tolist()))]
    predictor = Predictor.from_checkpoint(checkpoint, device, log=lambda *args, **kwargs: None)
    class_map = predictor.class_map
    examples = []
    for pair in pairs:
        image = read_image(pair.image)
        raw = read_mask(pair.mask)
        truth = class_map.encode(pack_rgb(raw) if raw.ndim == 3 else raw)
        pred = predictor.predict(image, name=str(pair.image)).classes
        ignored = truth == IGNORE_INDEX
        shown_truth = np.where(ignored, 0, truth)
        examples.append(Example(pair.image.name, _mean_dice(truth, pred, class_map.num_classes), [
            ("image", to_display(image)), ("truth", overlay(image, shown_truth)),
            ("prediction", overlay(image, pred)), ("errors", error_map(truth, pred, ignored))]))
    examples.sort(key=lambda e: -e.score if math.isfinite(e.score) else math.inf)
    return examples, len(pairs), note


def _metrics_table(row: dict | None) -> str:
    if row is None or not row.get("val_dice_per_class"):
        return "<p class='note'>No validation scores in metrics.jsonl (the run validated on no images).</p>"
    dice, iou = row["val_dice_per_class"], row.get("val_iou_per_class", {})
    lines = ["<table id='metrics-table'><thead><tr><th>class</th><th>Dice</th><th>IoU</th><th></th></tr></thead>"
             "<tbody>"]
    for name, value in dice.items():
        score = iou.get(name)
        bar = f"<span class='bar' style='width:{round(120 * score)}px'></span>" if score is not None else "absent"
        lines.append(f"<tr><td>{html.escape(str(name))}</td><td>{_number(value)}</td><td>{_number(score)}</td>"
                     f"<td style='text-align:left'>{bar}</td></tr>")
    lines.append(f"<tr class='mean'><td>mean</td><td>{_number(row.get('val_dice'))}</td>"
                 f"<td>{_number(row.get('val_iou'))}</td><td></td></tr></tbody></table>")
    lines.append(f"<p class='sub'>epoch {row.get('epoch')}, step {row.get('step')}; pixel error {_number(row.get('val_pixel_error'))}</p>")
    return "\n".join(lines)


def _epochs_table(rows: list[dict]) -> str:
    if len(rows) > MAX_EPOCH_ROWS:
        picks = sorted(set(np.linspace(0, len(rows) - 1, MAX_EPOCH_ROWS).round().astype(int).tolist()))
        rows = [rows[i] for i in picks]
    columns = [("epoch", 0), ("step", 0), ("train_loss", 4), ("val_loss", 4), ("val_dice", 4), ("val_iou", 4),
               ("val_pixel_error", 4), ("lr", None), ("images_per_s", 1), ("time", 1)]
    head = "".join(f"<th>{name}</th>" for name, _ in columns)
    body = []
    for row in rows:
        cells = []
        for name, digits in columns:
            value = row.get(name)
            if name == "lr" and value is not None:
                cells.append(f"<td>{value:.2e}</td>")
            else:
                cells.append(f"<td>{_number(value, digits) if digits else _number(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _examples_html(examples: list[Example], scored: int, note: str) -> str:
    if not examples:
        return f"<p class='note'>{html.escape(note)}</p>"
    if len(examples) == 1:
        chosen = [("the only validation image", examples[0])]
    else:
        count = max(1, min(SHOWN_PER_END, len(examples) // 2))
        chosen = ([(f"best #{k + 1}", e) for k, e in enumerate(examples[:count])]
                  + [(f"worst #{k + 1}", e) for k, e in enumerate(reversed(examples[-count:]))])
    parts = [f"<p class='sub'>best.pt on {scored} validation images, ranked by mean Dice"
             f"{'; ' + html.escape(note) if note else ''}. Truth and prediction: classes coloured over the image; "
             "errors: <span class='legend'><span style='background:#c8c8c8'></span>right"
             "<span style='background:#dc1e1e'></span>wrong<span style='background:#000'></span>ignored</span></p>"]
    for label, example in chosen:
        figures = "".join(f"<figure><img alt='{caption} of {html.escape(example.name)}' "
                          f"src='{_png_data_uri(picture)}'><figcaption>{caption}</figcaption></figure>"
                          for caption, picture in example.pictures)
        parts.append(f"<div class='example'><h3>{label}: {html.escape(example.name)} — Dice "
                     f"{_number(example.score, 3)}</h3><div class='panels'>{figures}</div></div>")
    return "\n".join(parts)


def _environment(device: str) -> list[tuple[str, str]]:
    import torch

    from seglab import __version__

    rows = [("seglab", __version__), ("torch", torch.__version__), ("python", platform.python_version()),
            ("device", str(device)), ("platform", platform.platform())]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        rows.append(("GPU", torch.cuda.get_device_name(torch.device(device))))
    return rows


def build_report(run_dir: Path, device: str = "cpu") -> str:
    """The report page of `run_dir` as one HTML string."""
    from seglab.config import load_config, parse_eval_every

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise SeglabError(f"run folder '{run_dir}' does not exist: give the folder `seglab train --out` wrote")
    if not config_file.is_file():
        raise SeglabError(f"'{run_dir}' is not a run folder (no config.yaml): give the folder `seglab train --out` "
                          "wrote")
    config = load_config(config_file)
    try:
        eval_count, unit = parse_eval_every(config.train.eval_every)
    except SeglabError:
        eval_count, unit = 1, "epoch"
    rows = read_metrics(run_dir / "metrics.jsonl")
    val_rows = [r for r in rows if r.get("val_dice_per_class")]
    last_val = val_rows[-1] if val_rows else None
    monitor = config.train.monitor
    scored_rows = [r for r in rows if isinstance(r.get(monitor), (int, float)) and math.isfinite(r[monitor])]
    best_row = None
    if scored_rows:
        pick = min if monitor.endswith(("loss", "error")) else max
        best_row = pick(scored_rows, key=lambda r: r[monitor])
    notes = []
    try:
        examples, scored, example_note = _validation_examples(run_dir, config, device)
    except SeglabError as error:  # data moved or checkpoint unreadable: the rest of the report still helps
        examples, scored, example_note = [], 0, f"no predictions shown: {error}"
    curves = _curves_uri(run_dir, rows, unit)
    speeds = [r["images_per_s"] for r in rows if isinstance(r.get("images_per_s"), (int, float))]
    total_time = rows[-1].get("time") if rows else None

    cards = [("epochs", f"{rows[-1]['epoch']} / {config.train.epochs}" if rows else "0")]
    if best_row is not None:
        cards.append((f"best {monitor} ({unit} {best_row[unit]})", _number(best_row[monitor])))
    if last_val is not None:
        cards.append(("last val Dice / IoU", f"{_number(last_val.get('val_dice'), 3)} / "
                                             f"{_number(last_val.get('val_iou'), 3)}"))
    if speeds:
        cards.append((f"images / s (median {'epoch' if unit == 'epoch' else 'period'})",
                      f"{float(np.median(speeds)):.1f}"))
    if total_time is not None:
        cards.append(("training time", _duration(total_time)))
    if not rows:
        notes.append("metrics.jsonl holds no epochs yet: the run has not finished an epoch")

    e = html.escape
    body = [f"<h1>seglab run: {e(run_dir.name)}</h1>",
            f"<p class='sub'>{e(str(run_dir.resolve()))} · data: {e(str(config.data.root))} · "
            f"model: {e(config.model.name)} · "
            f"report written {time.strftime('%Y-%m-%d %H:%M')}</p>",
            "<div class='cards'>" + "".join(f"<div class='card'><b>{e(value)}</b><span>{e(label)}</span></div>"
                                            for label, value in cards) + "</div>"]
    body += [f"<p class='note'>{e(n)}</p>" for n in notes]
    body.append("<h2 id='curves'>Loss and metric curves</h2>")
    body.append(f"<img class='curves' alt='loss and metric curves' src='{curves}'>" if curves
                else "<p class='note'>No curves: metrics.jsonl holds no epochs.</p>")
    body.append("<h2>Per-class scores (last validation)</h2>")
    body.append(_metrics_table(last_val))
    body.append("<h2 id='overlays'>Best and worst validation images</h2>")
    body.append(_examples_html(examples, scored, example_note))
    body.append("<h2>Training speed</h2>")
    if speeds:
        periods = "epochs" if unit == "epoch" else f"periods of {eval_count} steps"
        body.append(f"<p>{len(speeds)} {periods}, median {float(np.median(speeds)):.1f} images/s (last "
                    f"{speeds[-1]:.1f}, fastest {max(speeds):.1f}); total training time "
                    f"{_duration(total_time or 0)}; batch size {config.train.batch_size}"
                    f"{', accumulate ' + str(config.train.accumulate) if config.train.accumulate > 1 else ''}.</p>")
    if rows:
        body.append(_epochs_table(rows))
    body.append("<h2>Environment</h2><table>" + "".join(f"<tr><td>{e(k)}</td><td style='text-align:left'>{e(v)}</td>"
                                                        "</tr>" for k, v in _environment(device)) + "</table>")
    body.append("<h2>Configuration (config.yaml)</h2>")
    body.append(f"<pre>{e(config_file.read_text())}</pre>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>seglab report: {e(run_dir.name)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: Path, device: str = "cpu") -> Path:
    """Write `run_dir/report.html` (atomically) and return its path."""
    run_dir = Path(run_dir)
    page = build_report(run_dir, device)
    path = run_dir / "report.html"
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
