"""fit(config) and resume(run_dir): one training run from start to end, its Trainer opened and closed."""
from __future__ import annotations

from pathlib import Path

from seglab.config import RunConfig, load_config, override
from seglab.engine.tallies import History
from seglab.engine.trainer import Trainer
from seglab.errors import SeglabError


def fit(config: RunConfig, progress: bool = True, log=print, stop_after_epoch: int | None = None,
        plan: dict | None = None) -> History:
    """Train a model as `config` says; returns the per-epoch history and the run folder. `plan`
    (the training plan's record) is written to the run folder as plan.json."""
    with Trainer(config, progress=progress, log=log) as trainer:
        return trainer.fit(stop_after_epoch, plan)


def resume(run_dir: str | Path, updates: dict | None = None, progress: bool = True, log=print,
           stop_after_epoch: int | None = None) -> History:
    """Continue the run in `run_dir` from its last.pt, with its own config.yaml (plus `updates`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "last.pt").is_file():
        raise SeglabError(f"'{run_dir}' is not a run folder with config.yaml and last.pt: nothing to resume")
    config = override(load_config(run_dir / "config.yaml"), dict(updates or {}))
    with Trainer(config, resume_from=run_dir, progress=progress, log=log) as trainer:
        return trainer.fit(stop_after_epoch)
