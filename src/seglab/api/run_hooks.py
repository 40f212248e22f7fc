"""A run with callbacks: the user's and the trackers `train.track` names, around one fit and its report."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from seglab.api.run_results import Run, finish_run
from seglab.config import RunConfig, load_config, override
from seglab.engine.callbacks import Callbacks
from seglab.engine.history import History
from seglab.engine.tracking import trackers


def run_callbacks(config: RunConfig | None, callbacks: Iterable | None) -> Callbacks:
    """The user's callbacks, then the trackers of `config.train.track` (each checked now, before
    any data is read: a misspelt hook or a missing package is one line)."""
    return Callbacks([*(callbacks or ()), *trackers(config.train.track if config else None)])


def resumed_config(run_dir: Path, updates: dict) -> RunConfig | None:
    """The config a resumed run will train (None where `run_dir` has none: resume says so)."""
    if not (run_dir / "config.yaml").is_file():
        return None
    return override(load_config(run_dir / "config.yaml"), updates)


def run_with_callbacks(train: Callable[[], History], callbacks: Callbacks, log=print) -> tuple[Run, History]:
    """train(), then curves.png and report.html, then on_train_end; on_exception for a run that
    failed (a callback's failure included). A callback that failed raises its one line last."""
    try:
        history = train()
        run = finish_run(history, log)
        if callbacks.run is not None:
            report = history.run_dir / "report.html"
            callbacks.run.report = report if report.is_file() else None
        callbacks.dispatch("on_train_end")
    except BaseException as error:
        callbacks.dispatch("on_exception", error)
        raise
    callbacks.raise_failure("the run had finished: its folder is whole")
    return run, history
