"""The monitored metric of a run: its best value so far, and when early stopping ends the run."""
from __future__ import annotations

import math

from seglab.config import monitor_mode


class Monitor:
    """What "best" means: the monitored metric (maximised or minimised, as config.MONITORS declares),
    its best value, and the evaluations since it last improved (for early stopping)."""

    def __init__(self, metric: str, early_stop: int | None = None):
        self.metric, self.early_stop = metric, early_stop
        self.mode = monitor_mode(metric)
        self.best: float | None = None
        self.evals_since_best = 0

    def judge(self, value: float | None) -> bool:
        """Count one metrics row; True when `value` improves on the best (None: not evaluated)."""
        if value is None:
            return False
        better = math.isfinite(value) and (self.best is None or (
            value > self.best if self.mode == "max" else value < self.best))
        if better:
            self.best, self.evals_since_best = value, 0
        else:
            self.evals_since_best += 1
        return better

    @property
    def should_stop(self) -> bool:
        return bool(self.early_stop and self.evals_since_best >= self.early_stop)
