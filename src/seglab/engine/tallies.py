"""Running sums of a training run: the losses kept on the device, the tally since the last metrics row,
and the History a finished run returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class History:
    run_dir: Path
    epochs: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None


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
