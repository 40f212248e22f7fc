"""What a run's checkpoints hold, and how a run resumes from last.pt.

best.pt: the weights that scored best (the averaged ones with --ema), the model's name and
arguments, the class map and the preprocessing. last.pt: the same for the latest weights, plus the
training state: optimizer, schedule, scaler, augmentation stream, RNG states, position in the epoch,
elapsed training time, the monitor and the metrics history (and the raw weights with --ema), so a
resumed run continues to the bit-identical result on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seglab.engine.history import EpochTally
from seglab.engine.rng import rng_state, set_rng_state
from seglab.errors import SeglabError
from seglab.options import shown
from seglab.runtime.checkpoint import load_checkpoint, make_checkpoint
from seglab.runtime.device import precision_name


def checkpoint_payload(trainer, epoch: int, metrics: dict, train_state: dict | None = None) -> dict:
    """A checkpoint of the weights that are scored and predicted with (the average with --ema)."""
    c = trainer.config
    # precision: what validation computed in, so predictions under "auto" equal the run's scores
    preprocess = {"channels": trainer.recipe.channels, "scale": c.data.scale,
                  "normalization": trainer.normalization, "precision": precision_name(trainer.amp_dtype)}
    return make_checkpoint(trainer.scored_model, c.model.name, trainer.model_kwargs, trainer.recipe.class_map,
                           preprocess, epoch, trainer.step, metrics, train_state, {"threshold": c.train.threshold})


def last_payload(trainer, epoch: int, metrics: dict, position: dict) -> dict:
    """last.pt: the weights with everything a resume at `position` needs."""
    state = {"optimizer": trainer.optimizer.state_dict(), "schedule": trainer.schedule.state_dict(),
             "scaler": trainer.scaler.state_dict(), "augmenter": trainer.augmenter.state_dict(),
             "rng": rng_state(), "elapsed": trainer.clock.elapsed, "best": trainer.monitor.best,
             "evals_since_best": trainer.monitor.evals_since_best, "history": trainer.history_rows,
             "position": position}
    if trainer.ema is not None:
        state["ema"] = trainer.ema.state_dict()
        state["raw_weights"] = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    return checkpoint_payload(trainer, epoch, metrics, state)


def model_differences(saved: dict, name: str, kwargs: dict) -> list[str]:
    """What differs between a checkpoint's model ({"name", "kwargs"}) and the model `name`(**kwargs):
    ["base_channels 4 in last.pt, 16 now", ...]; empty when they are the same."""
    if saved["name"] != name:
        return [f"the model {shown(saved['name'])} in last.pt, {name} now"]
    keys = sorted(set(saved["kwargs"]) | set(kwargs))
    return [f"{key} {shown(saved['kwargs'].get(key))} in last.pt, {shown(kwargs.get(key))} now"
            for key in keys if saved["kwargs"].get(key) != kwargs.get(key)]


@dataclass
class TrainState:
    """Where a run stands between two steps: the epoch and the batches of it already trained, the
    optimizer steps and training seconds so far, the monitor's best value and the evaluations since,
    the metrics rows, and the running sums of the period not yet logged. A new run starts at TrainState()."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    elapsed: float = 0.0
    best: float | None = None
    evals_since_best: int = 0
    rows: list[dict] = field(default_factory=list)
    tally: EpochTally = field(default_factory=EpochTally)


def restore(trainer, run_dir: Path) -> TrainState:
    """Load last.pt of `run_dir` into the trainer's model, optimizer, schedule, scaler, augmenter and
    the random generators; returns where the run stood (the trainer continues from it)."""
    path = run_dir / "last.pt"
    payload = load_checkpoint(path)
    state = payload.get("train_state")
    if state is None:
        raise SeglabError(f"'{path}' holds no training state to resume from")
    if (trainer.ema is None) != ("ema" not in state):
        raise SeglabError(f"'{path}' was trained {'with' if 'ema' in state else 'without'} --ema: "
                          "resume it with the same --ema setting")
    differences = model_differences(payload["model"], trainer.config.model.name, trainer.model_kwargs)
    if differences:
        raise SeglabError(f"cannot resume from '{path}': it holds another model than this run's config asks for "
                          f"({'; '.join(differences)}): resume without flags that change the model (or the data), "
                          "or start a new run with another --out")
    try:
        _load_states(trainer, payload, state)
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        why = " ".join(f"{type(error).__name__}: {error}".split())[:160]
        raise SeglabError(f"cannot resume from '{path}': its training state does not fit this run's settings "
                          f"({why}): resume with the optimizer, schedule and "
                          "options it was trained with, or start a new run with another --out") from None
    set_rng_state(state["rng"])
    position = state["position"]
    return TrainState(position["epoch"], position["batch"], payload["step"], state["elapsed"], state["best"],
                      state["evals_since_best"], list(state["history"]), EpochTally(**position["tally"]))


def _load_states(trainer, payload: dict, state: dict) -> None:
    """The weights and the optimizer, schedule, scaler and augmentation states of last.pt."""
    trainer.model.load_state_dict(state["raw_weights"] if trainer.ema is not None else payload["state_dict"])
    if trainer.ema is not None:
        trainer.ema.load_state_dict(state["ema"], payload["state_dict"])
    needed = [set(group) for group in trainer.optimizer.param_groups]
    trainer.optimizer.load_state_dict(state["optimizer"])
    # torch fills in settings newer than the file; a setting still missing is another optimizer's
    missing = sorted(set().union(*(keys - set(group) for keys, group in zip(needed, trainer.optimizer.param_groups))))
    if missing:
        raise ValueError(f"its optimizer has no {', '.join(missing)}: it was another --optimizer")
    trainer.schedule.load_state_dict(state["schedule"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.augmenter.load_state_dict(state["augmenter"])
