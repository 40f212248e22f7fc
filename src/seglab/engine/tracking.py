"""Experiment trackers (`--track mlflow,wandb`): callbacks that send a run's params, metrics rows and files.

Each is an ordinary callback (engine.callbacks), so it runs on rank 0 only. Neither package is
imported before a run asks for it (`import seglab` stays fast): a missing one is one line naming
the extra to install. Both read their own environment variables: MLflow's MLFLOW_TRACKING_URI and
MLFLOW_EXPERIMENT_NAME (or _ID), W&B's WANDB_MODE, WANDB_PROJECT, WANDB_DIR, WANDB_API_KEY.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

from seglab.config import config_to_dict, flatten
from seglab.engine.callbacks import TrainingRun
from seglab.engine.recipe import RECIPE_FILE
from seglab.errors import SeglabError
from seglab.runtime.run_files import CONFIG_FILE, PLAN_FILE, SUMMARY_FILE

# What a finished run sends besides its metrics: the best weights, the report and what it trained.
RUN_FILES = ("best.pt", "report.html", PLAN_FILE, RECIPE_FILE, CONFIG_FILE, SUMMARY_FILE)
ROW_POSITION = ("epoch", "step")  # a metrics row's coordinates, not metrics
MAX_PARAM = 500  # characters of one param value (MLflow keeps 6000; a plan's reasons are a sentence)


def run_params(run: TrainingRun) -> dict[str, str]:
    """The resolved config ("train.batch_size": "4", ...) and the plan's choices with their reasons
    ("plan.train.batch_size": "4: the largest that fit ..."), as short strings."""
    params = {key: value for key, value in flatten(config_to_dict(run.config)).items()}
    plan = run.recipe.plan or {}
    for key, choice in (plan.get("choices") or {}).items():
        if not choice.get("given"):
            params[f"plan.{key}"] = f"{choice.get('value')}: {choice.get('reason')}"
    device = plan.get("device") or {}
    params.update({f"plan.device.{key}": value for key, value in device.items()})
    return {key: str(value)[:MAX_PARAM] for key, value in params.items()}


def row_metrics(row: dict) -> dict[str, float]:
    """The finite numbers of a metrics row, its epoch and step left out."""
    return {key: float(value) for key, value in row.items()
            if key not in ROW_POSITION and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def run_files(run: TrainingRun) -> list[Path]:
    return [run.run_dir / name for name in RUN_FILES if (run.run_dir / name).is_file()]


def _require(module: str, extra: str, tracker: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise SeglabError(f"--track {tracker} needs the {module} package: pip install 'seglab[{extra}]'")


class MLflowTracker:
    """One MLflow run per training run, on the server MLflow's own variables name (a nested run
    when the caller already has one active, as in a notebook)."""

    name = "mlflow"

    def __init__(self):
        _require("mlflow", "mlflow", "mlflow")
        self._run = None

    def on_train_start(self, run: TrainingRun) -> None:
        import mlflow

        self._run = mlflow.start_run(run_name=run.run_dir.name, nested=mlflow.active_run() is not None)
        mlflow.set_tags({"seglab.run_dir": str(run.run_dir.resolve()), "seglab.model": run.config.model.name})
        params = run_params(run)
        keys = sorted(params)
        for start in range(0, len(keys), 100):  # MLflow takes at most 100 params per request
            mlflow.log_params({key: params[key] for key in keys[start:start + 100]})

    def on_evaluation(self, run: TrainingRun, row: dict) -> None:
        import mlflow

        mlflow.log_metrics(row_metrics(row) | {"epoch": float(row["epoch"])}, step=int(row["step"]))

    def on_train_end(self, run: TrainingRun) -> None:
        import mlflow

        for path in run_files(run):
            mlflow.log_artifact(str(path))
        mlflow.set_tags({"seglab.stopped_by": run.stopped_by or "", "seglab.monitor": run.monitor})
        mlflow.end_run("FINISHED")
        self._run = None

    def on_exception(self, run: TrainingRun, error: BaseException) -> None:
        import mlflow

        if self._run is not None:
            if (run.run_dir / SUMMARY_FILE).is_file():
                mlflow.log_artifact(str(run.run_dir / SUMMARY_FILE))
            mlflow.set_tag("seglab.error", f"{type(error).__name__}: {error}"[:MAX_PARAM])
            mlflow.end_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            self._run = None


class WandbTracker:
    """One W&B run per training run (project: WANDB_PROJECT, else "seglab"); the run's files are
    saved into it (offline: its folder under WANDB_DIR, for `wandb sync`)."""

    name = "wandb"

    def __init__(self):
        _require("wandb", "wandb", "wandb")
        self._run = None

    def on_train_start(self, run: TrainingRun) -> None:
        import wandb

        # console "off": the command's own output stays as it is (no wrapped stdout, no bar captured)
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "seglab", name=run.run_dir.name,
                               config=run_params(run), reinit="create_new", settings=wandb.Settings(console="off"))

    def on_evaluation(self, run: TrainingRun, row: dict) -> None:
        self._run.log(row_metrics(row) | {"epoch": row["epoch"]}, step=int(row["step"]))

    def on_train_end(self, run: TrainingRun) -> None:
        for path in run_files(run):
            self._run.save(str(path), base_path=str(run.run_dir), policy="now")
        best = run.best_row
        if best is not None:
            self._run.summary.update({f"best_{run.monitor}": best[run.monitor], "best_step": best["step"]})
        self._run.summary["stopped_by"] = run.stopped_by
        self._run.finish()
        self._run = None

    def on_exception(self, run: TrainingRun, error: BaseException) -> None:
        if self._run is not None:
            self._run.summary["error"] = f"{type(error).__name__}: {error}"[:MAX_PARAM]
            self._run.finish(exit_code=1)
            self._run = None


TRACKER_CLASSES = {"mlflow": MLflowTracker, "wandb": WandbTracker}


def require_trackers(names) -> None:
    """SeglabError naming the extra when a tracker of `names` (a name or names, as given) is not
    installed: checked before a run reads its data (an unknown name is the config's to refuse)."""
    for name in [names] if isinstance(names, str) else names or ():
        if name in TRACKER_CLASSES:
            _require(name, name, name)


def trackers(names: list[str] | None) -> list:
    """The tracker callbacks `train.track` names (SeglabError naming the extra for a missing package)."""
    return [TRACKER_CLASSES[name]() for name in dict.fromkeys(names or ())]
