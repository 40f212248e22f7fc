"""What a training run has done so far: the losses summed on the device, the tally since the last metrics
row, the seconds of training, and the History a finished run returns. (What "best" means is monitor.py's.)"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seglab.config import RunConfig


@dataclass
class History:
    """What a finished fit() returns: the run folder, its metrics rows and the best monitored value."""

    run_dir: Path
    epochs: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    stopped_by: str = "epochs"   # epochs | time_budget | early_stop | callback | callback_error (0.2: max_time,
                                 # interrupted)
    is_main: bool = True         # rank 0, the process that wrote the run folder
    config: "RunConfig | None" = None
    stop_reason: str | None = None  # a callback's words when one stopped the run


@dataclass
class EpochTally:
    """Running sums since the last metrics row (an epoch, or the steps since the last evaluation);
    saved in mid-epoch checkpoints so a resumed run reports right."""

    loss_sum: float = 0.0
    steps: int = 0
    images: int = 0
    seconds: float = 0.0


class DeviceLossTally:
    """Sums of training losses kept on the device, so a training step never waits for the host.

    add() takes each micro-batch's loss (a 0-dim tensor); read() brings the sums to the host (one
    synchronisation) and restarts them, except the count of consecutive non-finite losses, which
    spans reads.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._bad_run = self._zero(torch.int64)
        self._restart()

    def _zero(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros((), dtype=dtype, device=self.device)

    def _restart(self) -> None:
        self._loss_sum, self._finite = self._zero(torch.float64), self._zero(torch.int64)
        self._bad_total = self._zero(torch.int64)

    def add(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss)
        self._loss_sum += torch.where(finite, loss.float(), 0.0)
        self._finite += finite
        self._bad_run = (self._bad_run + 1) * (~finite)
        self._bad_total += ~finite

    def read(self) -> tuple[float, int, int, int]:
        """(sum of finite losses, their count, non-finite losses in a row, non-finite since last read)."""
        values = (self._loss_sum.item(), int(self._finite.item()), int(self._bad_run.item()),
                  int(self._bad_total.item()))
        self._restart()
        return values


class TrainingClock:
    """Seconds of training: the trainer stops it for validation and checkpoint writing.

    On CUDA, stop() first waits for the GPU: the host runs ahead of it, and the steps still
    queued are training time too (the loss read that follows every stop waits for them anyway).
    """

    def __init__(self, device: torch.device, elapsed: float = 0.0):
        self.device, self.elapsed = device, elapsed
        self._started = time.perf_counter()

    def start(self) -> None:
        self._started = time.perf_counter()

    def running(self) -> float:
        """Seconds since the last start."""
        return time.perf_counter() - self._started

    def total(self) -> float:
        """All training seconds so far, the running stretch included."""
        return self.elapsed + self.running()

    def stop(self) -> float:
        """End the running stretch; returns its seconds (added to `elapsed`)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = self.running()
        self.elapsed += seconds
        return seconds
