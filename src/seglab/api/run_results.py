"""Run: a finished run folder and what its training wrote; finish_run draws its curves and report.

seglab.train, seglab.fit and the folds of a cross-validation all end in finish_run.
"""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from seglab.config import RunConfig
from seglab.engine.history import History
from seglab.errors import SeglabError
from seglab.runtime.run_files import RunFolderView, read_run, read_split, stop_words


@dataclass
class Run(RunFolderView):
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
    stop_reason: str | None = None  # a callback's words, when one stopped the run

    def __repr__(self) -> str:
        return self.describe()

    def _repr_html_(self) -> str:
        """In Jupyter: what the run made (as repr) and its curves (curves.png, when drawn)."""
        text = f"<pre>{html.escape(self.describe())}</pre>"
        curves = self.run_dir / "curves.png"
        if curves.is_file():
            encoded = base64.b64encode(curves.read_bytes()).decode("ascii")
            text += f"<img src='data:image/png;base64,{encoded}' style='max-width:900px'>"
        return text

    @property
    def report_file(self) -> Path | None:
        report = self.run_dir / "report.html"
        return report if report.is_file() else None

    def describe(self, next_commands: bool = True) -> str:
        """What the run made, in a few lines: its best score (epoch and step), what stopped it, its
        files, and the commands that use them (the end of `seglab train`, and repr(run))."""
        best = self.best_row
        score = (f"best {self.monitor} {best[self.monitor]:.4f} at epoch {best['epoch']}, step {best['step']}"
                 if best is not None else f"no {self.monitor} scored")
        stopped = stop_words({"stopped_by": self.stopped_by, "stop_reason": self.stop_reason}, self.config)
        lines = [f"run {self.run_dir}: {score}; {stopped}"]
        files = [("best.pt", self.best_checkpoint), ("last.pt", self.last_checkpoint),
                 ("report", self.report_file)]
        lines += [f"  {label:<8} {path}" for label, path in files if path is not None and path.is_file()]
        if next_commands and self.best_checkpoint.is_file():
            lines += [f"  next:    seglab predict -m {self.best_checkpoint} -i IMAGES -o OUT",
                      f"           seglab serve -m {self.best_checkpoint}"]
        return "\n".join(lines)

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
        record = read_run(Path(run_dir))
        best = record.best_row()
        return cls(record.run_dir, record.config, record.rows, best.get(record.config.train.monitor) if best else None,
                   best.get("epoch") if best else None, record.summary.get("stopped_by"),
                   record.summary.get("stop_reason"))

    @classmethod
    def from_history(cls, history: History) -> "Run":
        return cls(history.run_dir, history.config, history.epochs, history.best_metric, history.best_epoch,
                   history.stopped_by, history.stop_reason)


def finish_run(history: History, log=print) -> Run:
    """curves.png and report.html of a finished run (rank 0 only; a report that cannot be drawn
    never fails the run), and its Run."""
    config = history.config
    if history.is_main and history.epochs:
        from seglab.viz.plots import plot_curves
        from seglab.viz.report import write_report

        plot_curves(history.epochs, history.run_dir / "curves.png", x=config.train.evaluation.unit)
        try:
            log(f"report: {write_report(history.run_dir, device='cpu')}")
        except SeglabError as error:
            log(f"note: no report.html ({error})")
    return Run.from_history(history)
