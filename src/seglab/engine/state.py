"""Run bookkeeping: precision, run-folder names, RNG states in checkpoint-safe form."""
from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from seglab.config import RunConfig
from seglab.errors import SeglabError

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_precision(precision: str | None, amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = float32). `--amp` picks bf16 where the GPU supports it, else fp16."""
    if precision is None:
        if not amp or device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in PRECISIONS:
        raise SeglabError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise SeglabError("--precision fp16 needs a GPU: use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SeglabError("this GPU has no bf16: use --precision fp16 (or --amp, which picks it)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast_factory(device: torch.device, dtype: torch.dtype | None):
    """A zero-argument callable returning the autocast context (a no-op for float32)."""
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def default_run_dir(config: RunConfig) -> Path:
    """runs/<data>-<model>-<time>; under torchrun the elastic run id replaces the time, so a
    restarted job finds its own folder again."""
    if config.out:
        return Path(config.out)
    tag = os.environ.get("TORCHELASTIC_RUN_ID")
    if not tag or tag == "none":
        tag = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(config.data.root).resolve().name}-{config.model.name}-{tag}"


def restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def free_memory(device: torch.device) -> int:
    """Bytes free on the device (CUDA) or in RAM (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**30


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states as plain values and tensors."""
    state = np.random.get_state(legacy=False)
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"bit_generator": state["bit_generator"],
                      "key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
                      "pos": int(state["state"]["pos"]), "has_gauss": int(state["has_gauss"]),
                      "gauss": float(state["gauss"])},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def epoch_line(row: dict, epochs: int, improved: bool, by_step: bool = False) -> str:
    where = f"step {row['step']} (epoch {row['epoch']}/{epochs})" if by_step else f"epoch {row['epoch']}/{epochs}"
    parts = [where, f"train_loss {row['train_loss']:.4f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"dice {row['val_dice']:.4f}", f"iou {row['val_iou']:.4f}",
                  f"pixel_error {row['val_pixel_error']:.4f}"]
    parts += [f"lr {row['lr']:.2e}", f"{row['images_per_s']:.1f} img/s", f"{row['time']:.1f}s"]
    return "  ".join(parts) + ("  *best*" if improved else "")
