"""Learning-rate schedules driven by training progress (warm-up, cosine, poly) or by a metric (plateau)."""
from __future__ import annotations

import math

import torch

from seglab.config import SCHEDULERS
from seglab.errors import SeglabError


class LearningRateSchedule:
    """Warm-up then cosine or polynomial decay driven by training progress in [0, 1], or
    reduce-on-plateau driven by the monitored validation metric. Progress is max(step fraction,
    time fraction), so time-budgeted runs anneal to the end of their budget."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, monitor_mode: str = "max",
                 patience: int = 5, factor: float = 0.1, warmup: float = 0.02):
        if kind not in SCHEDULERS:
            raise SeglabError(f"unknown scheduler {kind!r}; choose one of: {', '.join(SCHEDULERS)}")
        self.optimizer = optimizer
        self.kind = kind
        self.warmup = warmup
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=monitor_mode, factor=factor, patience=patience) if kind == "plateau" else None)

    def factor(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        ramp = min(1.0, progress / self.warmup) if self.warmup > 0 and self.kind != "none" else 1.0
        if self.kind == "cosine":
            return ramp * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "poly":
            return ramp * (1 - progress) ** 0.9
        return 1.0

    def step_progress(self, progress: float) -> None:
        if self.plateau is not None:
            return
        scale = self.factor(progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale

    def step_metric(self, value: float) -> None:
        if self.plateau is not None and value is not None and math.isfinite(value):
            self.plateau.step(value)

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict() if self.plateau else None, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = list(state["base_lrs"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
