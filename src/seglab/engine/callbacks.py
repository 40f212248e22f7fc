"""Callbacks: user objects called at a run's few hook points, on rank 0 unless they ask for every rank.

A callback is any object with some of these methods (all optional):

    on_train_start(run)            the run folder holds recipe.yaml, config.yaml, split.json, plan.json
    on_epoch_end(run)              an epoch trained (its metrics row, if it closed one, is in run.rows)
    on_evaluation(run, row)        a metrics row was written to metrics.jsonl (validated or not)
    on_checkpoint(run, path)       best.pt or last.pt was written whole to `path`
    on_train_end(run)              the run ended and report.html is drawn (run.stopped_by, run.report)
    on_exception(run, error)       the run failed with `error` (a callback's error included); then nothing more

`run.stop("reason")` inside a hook ends the run as a time budget would: the period's metrics
row, last.pt, summary.json (stopped_by "callback", stop_reason naming the callback) and
report.html. An exception raised by a hook stops the run the same way, then raises one
SeglabError naming the callback and the hook (summary.json: stopped_by "callback_error").
Under DDP callbacks run on rank 0 only; a callback with `all_ranks = True` runs on every rank.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

from seglab.engine import distributed
from seglab.errors import SeglabError
from seglab.runtime.run_files import RunFolderView

HOOKS = ("on_train_start", "on_epoch_end", "on_evaluation", "on_checkpoint", "on_train_end", "on_exception")


class TrainingRun(RunFolderView):
    """What a callback sees of a run: the same object at every hook, updated before each call.

    run_dir, recipe (config, split, class map, plan), rows (the metrics rows so far), epoch
    (epochs finished), step (optimizer steps), best_value (the monitored metric's best), model
    (the weights validation scores: the average with --ema), rank, stopped_by and report (set
    for on_train_end).
    """

    def __init__(self, run_dir: Path, recipe, rows: list[dict], rank: int = 0):
        self.run_dir, self.recipe, self.rows, self.rank = Path(run_dir), recipe, rows, rank
        self.epoch = self.step = 0
        self.best_value: float | None = None
        self.model = None
        self.stopped_by: str | None = None
        self.report: Path | None = None
        self.stop_reason: str | None = None  # "<callback>: <reason>" once a callback asked to stop
        self._caller: str | None = None  # the callback whose hook runs now

    @property
    def config(self):
        return self.recipe.config

    def stop(self, reason: str = "") -> None:
        """End the run cleanly at the end of this hook's period (as a time budget does)."""
        if self.stop_reason is None:
            self.stop_reason = f"{self._caller or 'a callback'}: {reason or 'asked to stop'}"

    def __repr__(self) -> str:
        return f"<TrainingRun {self.run_dir}: epoch {self.epoch}, step {self.step}, {len(self.rows)} rows>"


def callback_name(callback: Any) -> str:
    return getattr(callback, "name", None) or type(callback).__name__


def check_callback(callback: Any) -> None:
    """SeglabError for an object with no hook, or a method named like a misspelt one."""
    name = callback_name(callback)
    for attribute in dir(callback):
        if attribute.startswith("on_") and attribute not in HOOKS and callable(getattr(callback, attribute)):
            close = difflib.get_close_matches(attribute, HOOKS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"hooks are: {', '.join(HOOKS)}"
            raise SeglabError(f"callback {name} has a method {attribute!r} that no hook calls: {hint}")
    if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
        raise SeglabError(f"callback {name} has none of the hooks {', '.join(HOOKS)}: give it one of them")


class Callbacks:
    """The callbacks of one run and their dispatch: `dispatch(hook, ...)` calls each callback that
    has the hook (on rank 0, or every rank with `all_ranks`); a hook that raises is recorded, its
    callback called no more, and the run asked to stop; `raise_failure()` then raises it as one line."""

    def __init__(self, callbacks: Iterable[Any] | None = ()):
        self.callbacks = list(callbacks or ())
        for callback in self.callbacks:
            check_callback(callback)
        self.run: TrainingRun | None = None
        self.failure: tuple[str, str, BaseException] | None = None  # (callback, hook, error)
        self.stopping = False  # every rank agreed that a callback stopped the run (or failed)
        self._failed: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def bind(self, run: TrainingRun) -> None:
        """The run the hooks are about (one per Trainer; folds bind each fold's run in turn)."""
        self.run, self.failure, self._failed, self.stopping = run, None, set(), False

    def call(self, hook: str, *args, step: int, best: float | None, model, device, epoch: int | None = None,
             agree: bool = True) -> bool:
        """Tell the run where training stands (step, best value, the scored model, epoch), call
        `hook`; True once a callback asked to stop or failed, agreed by all ranks (`agree`: every
        rank is at this call; on_checkpoint, rank 0's alone, is not)."""
        if not self.callbacks:
            return False
        run = self.run
        if epoch is not None:
            run.epoch = epoch
        run.step, run.best_value, run.model = step, best, model
        self.dispatch(hook, *args)
        if agree:
            self.stopping = self.stopping or distributed.any_rank(self.stop_requested, device)
        return self.stopping

    def dispatch(self, hook: str, *args) -> None:
        run = self.run
        if run is None:
            return
        for index, callback in enumerate(self.callbacks):
            method = getattr(callback, hook, None)
            if method is None or index in self._failed:
                continue
            if run.rank != 0 and not getattr(callback, "all_ranks", False):
                continue
            run._caller = callback_name(callback)
            try:
                method(run, *args)
            except Exception as error:  # KeyboardInterrupt and SystemExit end the process as always
                self._failed.add(index)
                if self.failure is None:
                    self.failure = (callback_name(callback), hook, error)
            finally:
                run._caller = None

    @property
    def stop_requested(self) -> bool:
        """Whether a callback asked this rank to stop, or failed (the trainer agrees it across ranks)."""
        return self.run is not None and (self.run.stop_reason is not None or self.failure is not None)

    @property
    def stopped_by(self) -> tuple[str, str]:
        """(summary.json's stopped_by, its stop_reason) for a run a callback stopped."""
        if self.failure is not None:
            return "callback_error", self.failure_message()
        if self.run is not None and self.run.stop_reason is not None:
            return "callback", self.run.stop_reason
        return "callback", "another rank's callback asked to stop"

    def failure_message(self) -> str:
        name, hook, error = self.failure
        detail = (str(error).strip().splitlines() or [""])[0][:300]
        return f"callback {name}.{hook} raised {type(error).__name__}" + (f": {detail}" if detail else "")

    def raise_failure(self, what_now: str = "") -> None:
        """SeglabError for a callback that failed (after the run folder was made whole)."""
        if self.failure is not None:
            raise SeglabError(self.failure_message() + (f"; {what_now}" if what_now else "")) from self.failure[2]
