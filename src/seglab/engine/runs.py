"""fit(recipe) and resume(run_dir): one training run from start to end, its Trainer opened and closed."""
from __future__ import annotations

from pathlib import Path

from seglab.config import RunConfig, load_config, override
from seglab.engine.callbacks import Callbacks
from seglab.engine.history import History
from seglab.engine.recipe import RECIPE_FILE, Recipe
from seglab.engine.trainer import Trainer
from seglab.errors import SeglabError


def fit(recipe: Recipe | RunConfig, progress: bool = True, log=print, callbacks: Callbacks | None = None) -> History:
    """Train what `recipe` says; returns the per-epoch history and the run folder. A RunConfig is a
    whole recipe whose data folder is split here, with no plan (the demo's, the benchmarks')."""
    if isinstance(recipe, RunConfig):
        recipe = Recipe.from_data(recipe)
    with Trainer(recipe, progress=progress, log=log, callbacks=callbacks) as trainer:
        return trainer.fit()


def resume(run_dir: str | Path, updates: dict | None = None, progress: bool = True, log=print,
           callbacks: Callbacks | None = None) -> History:
    """Continue the run in `run_dir` from its last.pt, with its own recipe.yaml (plus `updates`); a
    run folder of seglab 0.2 has none: its config.yaml is split again, as 0.2 did."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "last.pt").is_file():
        raise SeglabError(f"'{run_dir}' is not a run folder with config.yaml and last.pt: nothing to resume")
    updates = dict(updates or {})
    if (run_dir / RECIPE_FILE).is_file():
        recipe = Recipe.load(run_dir / RECIPE_FILE).with_updates(updates)
    else:
        recipe = Recipe.from_data(override(load_config(run_dir / "config.yaml"), updates))
    with Trainer(recipe, resume_from=run_dir, progress=progress, log=log, callbacks=callbacks) as trainer:
        return trainer.fit()
