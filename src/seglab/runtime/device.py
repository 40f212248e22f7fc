"""Devices and numeric precision: which device a name means, what autocast dtype a run uses, free memory."""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from seglab.config import DEVICE_PATTERN, PRECISIONS
from seglab.errors import SeglabError


def resolve_device(name: str) -> torch.device:
    """"auto" (a GPU when one is visible), "cpu", "cuda" or "cuda:N" -> torch.device."""
    if not DEVICE_PATTERN.match(str(name)):
        raise SeglabError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeglabError(f"--device {name} was asked for but no CUDA GPU is visible: use --device cpu")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise SeglabError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"numbered 0..{torch.cuda.device_count() - 1}")
    return device


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


def free_memory(device: torch.device) -> int:
    """Bytes free on the device (CUDA) or in RAM (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**30
