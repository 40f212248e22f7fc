"""k-fold cross-validation: K runs under one parent folder, their scores over folds, their ensemble.

    seglab train DATA --folds 5 --out runs/cv          # fold-1 ... fold-5, folds.json, ensemble.json
    seglab train DATA --folds 5 --fold 2 --out runs/cv # one fold (one per GPU or machine)

Each fold validates on its own fifth of the images (`data.splits.fold_split`); the parent collects
whatever folds have a best.pt: their best rows' scores (mean and standard deviation) in folds.json,
and an ensemble.json that `seglab predict -m`, `evaluate -m`, `export -m` and `seglab.load` take.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from seglab.api.run_hooks import run_with_callbacks
from seglab.api.run_results import Run
from seglab.data.writing import atomic_output
from seglab.engine import runs
from seglab.engine.callbacks import Callbacks
from seglab.engine.recipe import Recipe
from seglab.engine.run_folder import default_run_dir
from seglab.inference.ensemble import write_ensemble
from seglab.runtime.run_files import best_row

ENSEMBLE_FILE = "ensemble.json"
FOLDS_FILE = "folds.json"
SCORES = ("val_dice", "val_miou", "val_pixel_error", "val_loss")


@dataclass
class CrossValidation:
    """The parent folder of a cross-validation: its fold runs, their scores, their ensemble."""

    parent: Path
    folds: int
    runs: list[Run] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # folds.json

    @property
    def ensemble(self) -> Path:
        return self.parent / ENSEMBLE_FILE

    def load(self, **options):
        """A Predictor averaging the folds' probabilities; options as `seglab.load`."""
        from seglab.api.predicting import load

        return load(self.ensemble, **options)


def fold_folder(parent: Path, fold: int) -> Path:
    return parent / f"fold-{fold}"


def train_folds(recipe: Recipe, progress: bool = True, log=print,
                callbacks: Callbacks | None = None) -> CrossValidation:
    """Train the folds of `recipe` (all K, or only data.fold) under its out folder; `callbacks`
    see each fold as a run of its own."""
    config = recipe.config
    parent = Path(config.out) if config.out else default_run_dir(config)
    folds = config.data.folds
    for fold in [config.data.fold] if config.data.fold else range(1, folds + 1):
        fold_recipe = recipe.with_updates({"data.fold": fold, "out": str(fold_folder(parent, fold))})
        log(f"fold {fold} of {folds}: {fold_folder(parent, fold)}")
        callbacks = callbacks or Callbacks()
        _, history = run_with_callbacks(
            lambda: runs.fit(fold_recipe, progress=progress, log=log, callbacks=callbacks), callbacks, log)
        if not history.is_main:
            return CrossValidation(parent, folds)
    return collect_folds(parent, folds, log)


def _best_row(run: Run) -> dict:
    """The fold's best row by its monitor; its last row when it never scored one."""
    return best_row(run.rows, run.monitor) or (run.rows[-1] if run.rows else {})


def collect_folds(parent: Path, folds: int, log=print) -> CrossValidation:
    """The folds of `parent` that have a best.pt: folds.json (each fold's best-row scores, their
    mean and standard deviation) and ensemble.json naming their best.pt files."""
    done = [fold for fold in range(1, folds + 1) if (fold_folder(parent, fold) / "best.pt").is_file()]
    fold_runs = [Run.open(fold_folder(parent, fold)) for fold in done]
    rows = {fold: _best_row(run) for fold, run in zip(done, fold_runs)}
    summary = {"folds": folds, "done": done, "per_fold": {str(f): {k: r.get(k) for k in SCORES if k in r}
                                                          for f, r in rows.items()}}
    for key in SCORES:
        values = [r[key] for r in rows.values() if isinstance(r.get(key), (int, float))]
        if values:
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            summary[key] = {"mean": mean, "std": std}
    os.makedirs(parent, exist_ok=True)
    with atomic_output(parent / FOLDS_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    if done:
        write_ensemble(parent / ENSEMBLE_FILE, [fold_folder(parent, f) / "best.pt" for f in done],
                       {"folds": folds, "done": done})
    scores = ", ".join(f"{key} {summary[key]['mean']:.4f} +- {summary[key]['std']:.4f}" for key in SCORES
                       if key in summary)
    log(f"{len(done)} of {folds} folds done in {parent}: {scores}")
    if done:
        log(f"ensemble: {parent / ENSEMBLE_FILE} (seglab predict -m {parent / ENSEMBLE_FILE} ...)")
    return CrossValidation(parent, folds, fold_runs, summary)
