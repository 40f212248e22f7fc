"""report.html for a run folder: one self-contained page (inline CSS, images as data URIs, no scripts)
with the config, the environment, the curves, per-class scores, speed and the best/worst predictions."""
from __future__ import annotations

import base64
import html
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seglab.data.samples import evenly_spread
from seglab.data.writing import atomic_output, png_data_uri
from seglab.errors import SeglabError
from seglab.runtime.run_files import RunRecord, read_best_images, read_run, read_split, stop_words

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
    return png_data_uri(picture, width)


def _file_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


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


def _curves_uri(run_dir: Path, rows: list[dict], unit: str) -> str | None:
    if (run_dir / "curves.png").is_file():
        return _file_data_uri(run_dir / "curves.png")
    if not rows or not all("train_loss" in r for r in rows):
        return None
    from seglab.viz.plots import plot_curves

    with tempfile.TemporaryDirectory() as folder:
        return _file_data_uri(plot_curves(rows, Path(folder) / "curves.png", x=unit))


def _shrink(array: np.ndarray, width: int) -> np.ndarray:
    """(H, W[, C]) sampled (nearest) to at most `width` columns, for the pictures of the page."""
    if array.shape[1] <= width:
        return array
    height = max(1, round(array.shape[0] * width / array.shape[1]))
    rows = np.linspace(0, array.shape[0] - 1, height).round().astype(int)
    cols = np.linspace(0, array.shape[1] - 1, width).round().astype(int)
    return array[rows][:, cols]


def _validation_examples(run_dir: Path, device: str) -> tuple[list[Example], int, str]:
    """The best and worst validation images of best.pt, drawn from its predictions: ranked by the
    validation that made best.pt (best_images.json) when the run wrote it, so only the shown images
    are predicted again, else by predicting an evenly spread sample (split.json), all scored by the
    one evaluation path; (examples sorted best first by mean Dice, images ranked, note)."""
    from seglab.inference.predictor import Predictor

    checkpoint = run_dir / "best.pt"
    if not checkpoint.is_file():
        return [], 0, "no best.pt in the run folder: no predictions to show"
    pairs = read_split(run_dir)["val"]
    if not pairs:
        return [], 0, "the run held out no validation images (--validation 0): no predictions to show"
    predictor = Predictor.from_file(checkpoint, device, log=lambda *args, **kwargs: None)
    ranked = _ranked_by_training(run_dir, pairs, predictor.info.get("step"))
    if ranked is not None:
        shown = ranked[:SHOWN_PER_END] + ranked[max(SHOWN_PER_END, len(ranked) - SHOWN_PER_END):]
        subset = f", {len(ranked)} of the {len(pairs)} held-out images" if len(ranked) < len(pairs) else ""
        return _drawn_examples(predictor, shown), len(ranked), f"scored by the validation that made best.pt{subset}"
    sample = evenly_spread(pairs, MAX_SCORED)
    note = (f"best and worst of {len(sample)} of the {len(pairs)} validation images (evenly spread)"
            if len(sample) < len(pairs) else "")
    return _drawn_examples(predictor, sample), len(sample), note


def _ranked_by_training(run_dir: Path, pairs: list, step: int | None) -> list | None:
    """The validation pairs best.pt was scored on during training, best first by mean Dice (images
    without a score last), or None when best_images.json does not score this best.pt."""
    rows = read_best_images(run_dir, step)
    by_image = {str(pair.image): pair for pair in pairs}
    if not rows or any(row["image"] not in by_image for row in rows):
        return None
    scored = sorted(rows, key=lambda row: -row["mdice"] if isinstance(row.get("mdice"), (int, float)) else math.inf)
    return [by_image[row["image"]] for row in scored]


def _drawn_examples(predictor, pairs: list) -> list[Example]:
    """`pairs` predicted and drawn at panel size (image, truth, prediction, errors), sorted best
    first by mean Dice."""
    from seglab.data.classmap import IGNORE_INDEX
    from seglab.data.overlay import error_map, overlay, to_display
    from seglab.inference.scoring import evaluate_predictor

    kept: dict[str, tuple] = {}

    def keep(pair, image, prediction, truth):
        kept[str(pair.image)] = tuple(_shrink(a, PANEL_WIDTH) for a in (image, prediction.classes, truth))

    evaluation = evaluate_predictor(predictor, pairs, keep=keep)
    labels = predictor.class_map.num_classes if predictor.class_map.multilabel else 0  # bit sets to draw
    examples = []
    for row in evaluation.images:
        image, pred, truth = kept[row["image"]]
        ignored = truth == IGNORE_INDEX
        score = row["mdice"] if row["mdice"] is not None else math.nan
        examples.append(Example(Path(row["image"]).name, score, [
            ("image", to_display(image)), ("truth", overlay(image, np.where(ignored, 0, truth), labels=labels)),
            ("prediction", overlay(image, pred, labels=labels)), ("errors", error_map(truth, pred, ignored))]))
    examples.sort(key=lambda e: -e.score if math.isfinite(e.score) else math.inf)
    return examples


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
    lines.append(f"<p class='sub'>epoch {row.get('epoch')}, step {row.get('step')}; "
                 f"pixel error {_number(row.get('val_pixel_error'))}</p>")
    return "\n".join(lines)


def _epochs_table(rows: list[dict]) -> str:
    """Every evaluated row (the best among them), and at most MAX_EPOCH_ROWS of the others, evenly spread."""
    plain = [k for k, r in enumerate(rows) if "val_dice" not in r]
    if len(plain) > MAX_EPOCH_ROWS:
        kept = {plain[i] for i in np.linspace(0, len(plain) - 1, MAX_EPOCH_ROWS).round().astype(int).tolist()}
        rows = [r for k, r in enumerate(rows) if "val_dice" in r or k in kept]
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

    from seglab.version import __version__

    rows = [("seglab", __version__), ("torch", torch.__version__), ("python", platform.python_version()),
            ("device", str(device)), ("platform", platform.platform())]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        rows.append(("GPU", torch.cuda.get_device_name(torch.device(device))))
    return rows


def _epochs_card(run: RunRecord) -> tuple[str, str]:
    """("epochs", "82 / 10000") with what bounded the run in the label."""
    t = run.config.train
    if not run.rows:
        return "epochs", "0"
    return f"epochs ({stop_words(run.summary, run.config)})", f"{run.rows[-1]['epoch']} / {t.epochs}"


def _cards(run: RunRecord) -> list[tuple[str, str]]:
    cards = [_epochs_card(run)]
    best, monitor = run.best_row(), run.config.train.monitor
    if best is not None:
        cards.append((f"best {monitor} ({run.unit} {best[run.unit]})", _number(best[monitor])))
    if run.val_rows:
        last = run.val_rows[-1]
        cards.append(("last val Dice / IoU", f"{_number(last.get('val_dice'), 3)} / {_number(last.get('val_iou'), 3)}"))
    speeds = _speeds(run)
    if speeds:
        cards.append((f"images / s (median {'epoch' if run.unit == 'epoch' else 'period'})",
                      f"{float(np.median(speeds)):.1f}"))
    if run.rows:
        cards.append(("training time", _duration(run.rows[-1].get("time") or 0)))
    return cards


def _speeds(run: RunRecord) -> list[float]:
    return [r["images_per_s"] for r in run.rows if isinstance(r.get("images_per_s"), (int, float))]


def _speed_html(run: RunRecord) -> str:
    speeds, t = _speeds(run), run.config.train
    if not speeds:
        return ""
    periods = "epochs" if run.unit == "epoch" else f"periods of {run.eval_count} steps"
    accumulate = f", accumulate {t.accumulate}" if t.accumulate > 1 else ""
    return (f"<p>{len(speeds)} {periods}, median {float(np.median(speeds)):.1f} images/s (last {speeds[-1]:.1f}, "
            f"fastest {max(speeds):.1f}); total training time {_duration(run.rows[-1].get('time') or 0)}; "
            f"batch size {t.batch_size}{accumulate}.</p>")


def build_report(run_dir: Path, device: str = "cpu") -> str:
    """The report page of `run_dir` as one HTML string."""
    run = read_run(run_dir)
    try:
        examples, scored, example_note = _validation_examples(run.run_dir, device)
    except SeglabError as error:  # data moved or checkpoint unreadable: the rest of the report still helps
        examples, scored, example_note = [], 0, f"no predictions shown: {error}"
    curves = _curves_uri(run.run_dir, run.rows, run.unit)
    e = html.escape
    body = [f"<h1>seglab run: {e(run.run_dir.name)}</h1>",
            f"<p class='sub'>{e(str(run.run_dir.resolve()))} · data: {e(str(run.config.data.root))} · "
            f"model: {e(run.config.model.name)} · report written {time.strftime('%Y-%m-%d %H:%M')}</p>",
            "<div class='cards'>" + "".join(f"<div class='card'><b>{e(value)}</b><span>{e(label)}</span></div>"
                                            for label, value in _cards(run)) + "</div>"]
    if not run.rows:
        body.append("<p class='note'>metrics.jsonl holds no epochs yet: the run has not finished an epoch</p>")
    body.append("<h2 id='curves'>Loss and metric curves</h2>")
    body.append(f"<img class='curves' alt='loss and metric curves' src='{curves}'>" if curves
                else "<p class='note'>No curves: metrics.jsonl holds no epochs.</p>")
    body += ["<h2>Per-class scores (last validation)</h2>", _metrics_table(run.val_rows[-1] if run.val_rows else None),
             "<h2 id='overlays'>Best and worst validation images</h2>", _examples_html(examples, scored, example_note),
             "<h2>Training speed</h2>", _speed_html(run)]
    if run.rows:
        body.append(_epochs_table(run.rows))
    body.append("<h2>Environment</h2><table>" + "".join(f"<tr><td>{e(k)}</td><td style='text-align:left'>{e(v)}</td>"
                                                        "</tr>" for k, v in _environment(device)) + "</table>")
    body += ["<h2>Configuration (config.yaml)</h2>", f"<pre>{e(run.config_text)}</pre>"]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>seglab report: {e(run.run_dir.name)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: Path, device: str = "cpu") -> Path:
    """Write `run_dir/report.html` (atomically) and return its path."""
    run_dir = Path(run_dir)
    page = build_report(run_dir, device)
    path = run_dir / "report.html"
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
