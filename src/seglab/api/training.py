"""seglab.fit, seglab.train and seglab.resume: the run `seglab train` makes, from Python, and the Run it returns."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from seglab.api.preparing import config_updates, prepare_updates
from seglab.config import RunConfig, parse_eval_every
from seglab.data.splits import read_split
from seglab.engine import runs
from seglab.engine.recipe import Recipe
from seglab.engine.tallies import History
from seglab.errors import SeglabError


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


def fit(recipe: Recipe | str | os.PathLike, *, progress: bool = True, log=print, **overrides):
    """Train `recipe` (a Recipe, or a recipe.yaml file) exactly: its config, its listed split and
    class map; the data folder is not searched again. Keywords override its config as they do a
    config file's (options that would change the split are refused); returns the Run (with
    --folds, the CrossValidation).

    >>> seglab.fit("recipe.yaml", epochs=20, out="runs/longer")
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    updates = config_updates(overrides)
    if updates:
        recipe = recipe.with_updates(updates)
    if recipe.config.data.folds:
        from seglab.api.folds import train_folds

        return train_folds(recipe, progress=progress, log=log)
    return finish_run(runs.fit(recipe, progress=progress, log=log), log)


def train(data: str | os.PathLike | None = None, *, config: RunConfig | str | os.PathLike | None = None,
          progress: bool = True, log=print, **overrides) -> Run:
    """Train a model as `seglab train` does: `seglab.prepare`, then `seglab.fit` of its recipe (the
    same preflight, config resolution and outputs; the run folder keeps the recipe).

    `config` is a RunConfig or a YAML file; keywords override it: data and train options by name,
    `model=` a registered model and its options by name, `out=` the run folder.

    >>> run = seglab.train("data/isbi2012", model="unet", base_channels=16, crop=256, max_time=120,
    ...                    val_files=["25", "26", "27", "28", "29"], out="runs/isbi")
    >>> run.best_value, run.best_checkpoint      # (0.78..., PosixPath('runs/isbi/best.pt'))

    Raises SeglabError subclasses (one-line messages) for bad folders, options and files.
    """
    return fit(prepare_updates(data, config, config_updates(overrides), log), progress=progress, log=log)


def resume(run_dir: str | os.PathLike, *, progress: bool = True, log=print, **overrides) -> Run:
    """Continue the run in `run_dir` from its last.pt with its own config.yaml (keywords override
    it, e.g. epochs=100 to train longer); returns the finished Run."""
    history = runs.resume(Path(run_dir), config_updates(overrides), progress=progress, log=log)
    run = finish_run(history, log)
    if history.config.data.folds and history.is_main:  # a fold of a cross-validation: refresh the parent
        from seglab.api.folds import collect_folds

        collect_folds(Path(run_dir).resolve().parent, history.config.data.folds, log)
    return run
