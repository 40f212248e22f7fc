"""The files of a run folder and the one place that writes and reads them.

    config.yaml     the resolved RunConfig             write_config / read_run
    split.json      which files train and validate     write_split / read_split
    plan.json       the plan's choices and reasons     write_plan
    metrics.jsonl   one JSON row per evaluation        start_metrics, append_metrics_row / read_metrics
    summary.json    what ended the run                 write_summary / read_summary
    best_images.json  best.pt's score on each validation image    write_best_images / read_best_images

recipe.yaml belongs to `engine.recipe.Recipe` (save/load); checkpoints to `runtime.checkpoint`. The
best row of a run is chosen by `best_row`, with the direction the monitored metric declares
(`config.MONITORS`). Every write is atomic, or (metrics rows) whole lines or nothing.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from seglab.config import RunConfig, dump_config, load_config, monitor_mode
from seglab.data.discover import Pair
from seglab.data.writing import atomic_output, write_error
from seglab.errors import SeglabError

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
PLAN_FILE = "plan.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
BEST_IMAGES_FILE = "best_images.json"


def resume_hint(run_dir: Path, how: str = "") -> str:
    """What to do after a failed run, true to what is on disk (`how`: words after the command)."""
    if (run_dir / "last.pt").is_file():
        return f"`seglab train --resume {run_dir}`{how} continues from its last.pt"
    return "train again (there is no last.pt to resume from)"


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_config(run_dir: Path, config: RunConfig) -> None:
    _write_text(Path(run_dir) / CONFIG_FILE, dump_config(config))


def write_plan(run_dir: Path, plan: dict) -> None:
    """plan.json: the plan's choices and their reasons (the recipe repeats them)."""
    _write_text(Path(run_dir) / PLAN_FILE, json.dumps(plan, indent=1))


def write_split(run_dir: Path, train: list[Pair], val: list[Pair]) -> Path:
    """split.json: {"train": [[image, mask], ...], "val": [...]}, absolute paths."""
    record = {name: [pair.absolute() for pair in pairs]
              for name, pairs in (("train", train), ("val", val))}
    path = Path(run_dir) / SPLIT_FILE
    _write_text(path, json.dumps(record, indent=1))
    return path


def read_split(run_dir: Path) -> dict[str, list[Pair]]:
    """{"train": pairs, "val": pairs} as the run wrote them in split.json."""
    path = Path(run_dir) / SPLIT_FILE
    try:
        record = json.loads(path.read_text())
        return {name: [Pair(Path(image), Path(mask)) for image, mask in record[name]] for name in ("train", "val")}
    except FileNotFoundError:
        raise SeglabError(f"'{path}' does not exist: the run was trained by an older seglab, or elsewhere") from None
    except (ValueError, KeyError, TypeError):
        raise SeglabError(f"'{path}' is damaged (not the split a run writes): retrain, or evaluate with "
                          "`seglab evaluate -m best.pt DATA`") from None


def start_metrics(run_dir: Path, rows: list[dict]) -> None:
    """metrics.jsonl holding `rows` (none for a new run; a resumed run's checkpointed rows)."""
    _write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows))


def append_metrics_row(run_dir: Path, row: dict) -> None:
    """One more row of metrics.jsonl, whole or not at all (see append_line)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        append_line(path, json.dumps(row))
    except OSError as error:  # opening it failed
        raise write_error(path, error) from None


def append_line(path: Path, line: str) -> None:
    """Append `line` to `path` whole, or not at all: a failed write (a full disk) is cut back to the
    file's previous end, so the file never holds half a row, and raised as one line. Synced, so a
    checkpoint written after it never holds a row the file lacks."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        end = os.lseek(descriptor, 0, os.SEEK_END)
        data = line.encode() + b"\n"
        try:
            while data:
                data = data[os.write(descriptor, data):]
            os.fsync(descriptor)
        except OSError as error:
            os.ftruncate(descriptor, end)
            raise SeglabError(f"{write_error(path, error)}; then {resume_hint(path.parent)}") from None
    finally:
        os.close(descriptor)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl (one JSON object per evaluation); a broken line is named in the error."""
    path = Path(run_dir) / METRICS_FILE
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


def write_best_images(run_dir: Path, step: int, rows: list[dict]) -> None:
    """best_images.json: the validation that made best.pt (at optimizer step `step`) image by image,
    {"step": S, "images": [{"image": path, "mdice": ..., "miou": ..., "pixel_error": ...}, ...]},
    so the report ranks the images without predicting them again. `rows`: JSON-safe rows
    (`Evaluation.to_json()["images"]`: None for a score without a value); images are recorded as
    absolute paths, as split.json records them."""
    scores = ("mdice", "miou", "pixel_error")
    images = [{"image": os.path.abspath(row["image"]), **{key: row.get(key) for key in scores}} for row in rows]
    record = {"step": int(step), "images": images}
    _write_text(Path(run_dir) / BEST_IMAGES_FILE, json.dumps(record, indent=1))


def read_best_images(run_dir: Path, step: int | None) -> list[dict] | None:
    """The rows of best_images.json when they score the checkpoint of optimizer step `step`; None
    when the file is missing, damaged or of another checkpoint (the report then predicts again)."""
    try:
        record = json.loads((Path(run_dir) / BEST_IMAGES_FILE).read_text())
        rows = record["images"]
        if record["step"] != step or not all(isinstance(row["image"], str) for row in rows):
            return None
        return rows
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_summary(run_dir: Path, summary: dict) -> None:
    _write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=1))


STOPPED_BY = {"epochs": "all {epochs} epochs trained",
              "time_budget": "stopped by the {time_budget:g} s time budget",
              "max_time": "stopped by the {time_budget:g} s time budget",  # summary.json of seglab 0.2
              "early_stop": "stopped early: {monitor} did not improve in {early_stop} evaluations",
              "callback": "stopped by a callback ({stop_reason})",
              "callback_error": "stopped by a failed callback ({stop_reason})",
              "interrupted": "stopped before the end of the schedule"}


def stop_words(summary: dict, config: RunConfig) -> str:
    """What ended a run, in words, from its summary.json: 'stopped by the 120 s time budget', ..."""
    t = config.train
    words = STOPPED_BY.get(summary.get("stopped_by"), "the run has not finished")
    return words.format(epochs=t.epochs, time_budget=t.time_budget or 0, monitor=t.monitor, early_stop=t.early_stop,
                        stop_reason=summary.get("stop_reason"))


def read_summary(run_dir: Path) -> dict:
    """summary.json, or {} while the run has not finished (or the file is unreadable)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The row with the best finite value of `metric`, in the direction the metric declares
    (config.MONITORS); the first of equal rows; None when no row scored it."""
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not scored:
        return None
    return (max if monitor_mode(metric) == "max" else min)(scored, key=lambda r: r[metric])


class RunFolderView:
    """What every view of a run folder derives the same way from its `run_dir`, `config` and `rows`:
    the monitored metric, the best row by the one rule, and the checkpoints' paths (Run, a callback's
    TrainingRun)."""

    @property
    def monitor(self) -> str:
        return self.config.train.monitor

    @property
    def best_row(self) -> dict | None:
        """The metrics row that scored best (None before one did)."""
        return best_row(self.rows, self.monitor)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"


@dataclass
class RunRecord:
    """What a run folder says about its run (config.yaml, metrics.jsonl, summary.json), read once."""

    run_dir: Path
    config: RunConfig
    config_text: str
    rows: list[dict]
    unit: str                # "epoch" or "step"
    eval_count: int
    summary: dict            # summary.json, {} while the run has not finished

    @property
    def val_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("val_dice_per_class")]

    def best_row(self) -> dict | None:
        return best_row(self.rows, self.config.train.monitor)


def read_run(run_dir: Path) -> RunRecord:
    run_dir = Path(run_dir)
    config_file = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise SeglabError(f"run folder '{run_dir}' does not exist: give the folder `seglab train --out` wrote")
    if not config_file.is_file():
        raise SeglabError(f"'{run_dir}' is not a run folder (no config.yaml): give the folder `seglab train --out` "
                          "wrote")
    config = load_config(config_file)
    eval_count, unit = config.train.evaluation
    return RunRecord(run_dir, config, config_file.read_text(), read_metrics(run_dir), unit, eval_count,
                     read_summary(run_dir))
