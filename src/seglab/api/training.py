"""seglab.fit, seglab.train and seglab.resume: the run `seglab train` makes, from Python, and the Run it returns."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from seglab.api.keywords import with_run_options
from seglab.api.preparing import config_updates, prepare_updates
from seglab.api.run_hooks import resumed_config, run_callbacks, run_with_callbacks
from seglab.api.run_results import Run
from seglab.config import RunConfig
from seglab.engine import runs
from seglab.engine.callbacks import Callbacks
from seglab.engine.recipe import Recipe
from seglab.engine.tracking import require_trackers


@with_run_options
def fit(recipe: Recipe | str | os.PathLike, *, progress: bool = True, log=print, callbacks: list | None = None,
        **overrides):
    """Train `recipe` (a Recipe, or a recipe.yaml file) exactly: its config, its listed split and
    class map; the data folder is not searched again. Keywords override its config as they do a
    config file's (options that would change the split are refused); returns the Run (with
    --folds, the CrossValidation). `callbacks`: objects with hooks, as `seglab.train` takes.

    >>> seglab.fit("recipe.yaml", epochs=20, out="runs/longer")
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    updates = config_updates(overrides)
    if updates:
        recipe = recipe.with_updates(updates)
    hooks = run_callbacks(recipe.config, callbacks)
    if recipe.config.data.folds:
        from seglab.api.folds import train_folds

        return train_folds(recipe, progress=progress, log=log, callbacks=hooks)
    return run_with_callbacks(lambda: runs.fit(recipe, progress=progress, log=log, callbacks=hooks), hooks, log)[0]


@with_run_options
def train(data: str | os.PathLike | Any = None, *, config: RunConfig | str | os.PathLike | None = None,
          val_data: Any = None, progress: bool = True, log=print, callbacks: list | None = None,
          **overrides) -> Run:
    """Train a model as `seglab train` does: `seglab.prepare`, then `seglab.fit` of its recipe (the
    same preflight, config resolution and outputs; the run folder keeps the recipe).

    `config` is a RunConfig or a YAML file; keywords override it: data and train options by name,
    `model=` a registered model and its options by name, `out=` the run folder. `data` (and
    `val_data`, the images that validate) may be held in memory: a tuple (images, masks), a list of
    (image, mask) pairs or a Dataset yielding them, as arrays, PIL images, tensors or paths
    (`data.in_memory`: written once into a cached folder, then trained on as a folder).

    >>> run = seglab.train("data/isbi2012", model="unet", base_channels=16, crop=256, time_budget=120,
    ...                    val_files=["25", "26", "27", "28", "29"], out="runs/isbi")
    >>> run.best_value, run.best_checkpoint      # (0.78..., PosixPath('runs/isbi/best.pt'))

    `callbacks`: objects with any of on_train_start(run), on_epoch_end(run), on_evaluation(run,
    row), on_checkpoint(run, path), on_train_end(run), on_exception(run, error); `run.stop(reason)`
    ends the run cleanly (engine.callbacks says when each is called; rank 0 only under DDP).
    `track=["mlflow"]` (or "wandb") adds the experiment trackers, built on the same hooks.

    Raises SeglabError subclasses (one-line messages) for bad folders, options and files.
    """
    updates = config_updates(overrides)
    # refused before the data is read: a callback without hooks or with a misspelt one, a missing tracker
    Callbacks(callbacks)
    require_trackers(updates.get("train.track"))
    return fit(prepare_updates(data, config, updates, log, val_data), progress=progress, log=log, callbacks=callbacks)


@with_run_options
def resume(run_dir: str | os.PathLike, *, progress: bool = True, log=print, callbacks: list | None = None,
           **overrides) -> Run:
    """Continue the run in `run_dir` from its last.pt with its own config.yaml (keywords override
    it, e.g. epochs=100 to train longer); returns the finished Run. `callbacks` as `seglab.train`."""
    updates = config_updates(overrides)
    hooks = run_callbacks(resumed_config(Path(run_dir), updates), callbacks)
    run, history = run_with_callbacks(
        lambda: runs.resume(Path(run_dir), updates, progress=progress, log=log, callbacks=hooks), hooks, log)
    if history.config.data.folds and history.is_main:  # a fold of a cross-validation: refresh the parent
        from seglab.api.folds import collect_folds

        collect_folds(Path(run_dir).resolve().parent, history.config.data.folds, log)
    return run
