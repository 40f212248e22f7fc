"""seglab.train and seglab.resume: the run `seglab train` makes, from Python, and the Run it returns."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglab.config import (
    DataConfig,
    RunConfig,
    TrainConfig,
    flatten,
    load_config,
    override,
    parse_eval_every,
    read_yaml,
)
from seglab.data.preflight import Preflight, run_preflight
from seglab.data.splits import read_split
from seglab.engine import runs
from seglab.engine.plan import Plan, make_plan
from seglab.engine.tallies import History
from seglab.errors import DataError, SeglabError
from seglab.models.registry import list_models, model_spec
from seglab.options import refuse_unknown

_DATA_FIELDS = [f.name for f in dataclasses.fields(DataConfig) if f.name != "root"]
_TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


@dataclass
class Run:
    """A run folder and what its training wrote.

    >>> run = seglab.train("data/isbi2012", epochs=2, base_channels=8, crop=128, out="runs/try")
    >>> run.best_value, run.best_epoch           # (0.71..., 2): best val_dice and its epoch
    >>> run.load().predict("data/isbi2012/test/images/00.png").mask.shape   # (512, 512)
    """

    run_dir: Path
    config: RunConfig
    rows: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    stopped_by: str | None = None

    @property
    def monitor(self) -> str:
        return self.config.train.monitor

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def validation_pairs(self) -> list:
        """The (image, mask) Pairs the run validated on (split.json)."""
        return read_split(self.run_dir)["val"]

    @property
    def training_pairs(self) -> list:
        return read_split(self.run_dir)["train"]

    def load(self, checkpoint: str = "best", **options):
        """A Predictor of best.pt (or "last"); options as `seglab.load`."""
        from seglab.api.predicting import load

        return load(self.run_dir / f"{checkpoint}.pt", **options)

    def evaluate(self, data=None, checkpoint: str = "best", **options):
        """Scores of best.pt (or "last") on `data` (a folder or pairs), by default the run's own
        validation images; options as `seglab.evaluate`."""
        from seglab.api.evaluating import evaluate

        return evaluate(self.run_dir / f"{checkpoint}.pt", self.validation_pairs if data is None else data, **options)

    def report(self, device: str = "cpu") -> Path:
        """Write (again) the run's report.html; returns its path."""
        from seglab.api.tools import report

        return report(self.run_dir, device)

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> "Run":
        """The Run of an existing run folder (config.yaml, metrics.jsonl, summary.json)."""
        from seglab.viz.report import read_run

        record = read_run(Path(run_dir))
        best = record.best_row()
        return cls(record.run_dir, record.config, record.rows, best.get(record.config.train.monitor) if best else None,
                   best.get("epoch") if best else None, record.summary.get("stopped_by"))

    @classmethod
    def from_history(cls, history: History) -> "Run":
        return cls(history.run_dir, history.config, history.epochs, history.best_metric, history.best_epoch,
                   history.stopped_by)


def config_updates(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keywords of seglab.train -> dotted config updates: data and train options by name
    (epochs=5 -> train.epochs), model= the model's name, any other name an option of a model
    (base_channels=32 -> model.base_channels), "section.name" as it is."""
    model_options = {f.name for name in list_models() for f in model_spec(name).option_fields()}
    known = set(_DATA_FIELDS) | set(_TRAIN_FIELDS) | model_options | {"model", "out", "time_budget"}
    updates = {}
    for key, value in overrides.items():
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if "." in key:
            updates[key] = value
            continue
        refuse_unknown([key], known, "the keywords of seglab.train")
        if key == "time_budget":
            updates["train.max_time"] = value
        elif key == "out":
            updates["out"] = value
        elif key == "model":
            updates["model.name"] = value
        elif key in _DATA_FIELDS:
            updates[f"data.{key}"] = value
        elif key in _TRAIN_FIELDS:
            updates[f"train.{key}"] = value
        else:
            updates[f"model.{key}"] = value
    return updates


def base_config(config: RunConfig | str | os.PathLike | None) -> tuple[RunConfig, dict | None]:
    """(the config to start from, the dotted values it sets explicitly): the defaults and {}; a YAML
    file and the keys it sets; a RunConfig and None (a whole recipe, which no plan changes)."""
    if config is None:
        return RunConfig(), {}
    if isinstance(config, RunConfig):
        return config, None
    base = load_config(config)
    return base, flatten(read_yaml(config))


def resolve_config(data: str | os.PathLike | None = None, config: RunConfig | str | os.PathLike | None = None,
                   updates: dict[str, Any] | None = None) -> RunConfig:
    """The run's config without a plan: a RunConfig or YAML file (or the defaults), the data folder,
    then the dotted updates. Values are checked as each section is built."""
    base, _ = base_config(config)
    updates = dict(updates or {})
    if data is not None:
        updates["data.root"] = os.fspath(data)
    resolved = override(base, updates)
    if not resolved.data.root:
        raise SeglabError("no data folder: seglab train DATA_DIR (or data.root in --config)")
    return resolved


def config_value(config: RunConfig, key: str) -> Any:
    """The value of a dotted key ("train.epochs", "model.base_channels", "out") in a config."""
    if key == "out":
        return config.out
    section, _, name = key.partition(".")
    if section == "model":
        return config.model.name if name == "name" else config.model.resolved().get(name)
    return getattr(getattr(config, section), name)


def planned_config(data, config, updates: dict[str, Any], log=print) -> tuple[RunConfig, Plan | None]:
    """The run's config with the training plan filling in what neither the config file nor the
    updates set (no plan for a RunConfig given as a whole recipe); the folder is checked first."""
    resolved = resolve_config(data, config, updates)
    check_training_data(resolved, log)
    base, explicit = base_config(config)
    if explicit is None:
        return resolved, None
    # The values the user gave, as checked (crop=256 is [256]): what the plan must leave alone.
    given = {key: config_value(resolved, key) for key in {**explicit, **updates, "data.root": None}}
    plan = make_plan(given, log)
    for line in plan.lines():
        log(line)
    return override(override(base, plan.updates()), given), plan


def check_training_data(config: RunConfig, log=print) -> Preflight:
    """The preflight `seglab check` runs, refusing folders that cannot train (DataError: the first
    problem, and how many more there are); warnings are logged."""
    report = run_preflight(config.data.root, **config.data.mask_rules().as_kwargs())
    if report.errors:
        more = len(report.errors) - 1
        raise DataError(report.errors[0] + (f" (and {more} more problems: run `seglab check {config.data.root}`)"
                                            if more else ""))
    for warning in report.warnings:
        log(f"warning: {warning}")
    return report


def finish_run(history: History, log=print) -> Run:
    """curves.png and report.html of a finished run (rank 0 only; a report that cannot be drawn
    never fails the run), and its Run."""
    config = history.config
    if history.is_main and history.epochs:
        from seglab.viz.plots import plot_curves
        from seglab.viz.report import write_report

        plot_curves(history.epochs, history.run_dir / "curves.png", x=parse_eval_every(config.train.eval_every)[1])
        try:
            log(f"report: {write_report(history.run_dir, device='cpu')}")
        except SeglabError as error:
            log(f"note: no report.html ({error})")
    return Run.from_history(history)


def train(data: str | os.PathLike | None = None, *, config: RunConfig | str | os.PathLike | None = None,
          progress: bool = True, log=print, **overrides) -> Run:
    """Train a model as `seglab train` does: the same preflight, config resolution and outputs.

    `config` is a RunConfig or a YAML file; keywords override it: data and train options by name,
    `model=` a registered model and its options by name, `out=` the run folder.

    >>> run = seglab.train("data/isbi2012", model="unet", base_channels=16, crop=256, max_time=120,
    ...                    val_files=["25", "26", "27", "28", "29"], out="runs/isbi")
    >>> run.best_value, run.best_checkpoint      # (0.78..., PosixPath('runs/isbi/best.pt'))

    Raises SeglabError subclasses (one-line messages) for bad folders, options and files.
    """
    resolved, plan = planned_config(data, config, config_updates(overrides), log)
    if resolved.data.folds:
        from seglab.api.folds import train_folds

        return train_folds(resolved, plan, progress=progress, log=log)
    return finish_run(runs.fit(resolved, progress=progress, log=log, plan=plan.to_json() if plan else None), log)


def resume(run_dir: str | os.PathLike, *, progress: bool = True, log=print, **overrides) -> Run:
    """Continue the run in `run_dir` from its last.pt with its own config.yaml (keywords override
    it, e.g. epochs=100 to train longer); returns the finished Run."""
    history = runs.resume(Path(run_dir), config_updates(overrides), progress=progress, log=log)
    run = finish_run(history, log)
    if history.config.data.folds and history.is_main:  # a fold of a cross-validation: refresh the parent
        from seglab.api.folds import collect_folds

        collect_folds(Path(run_dir).resolve().parent, history.config.data.folds, log)
    return run
