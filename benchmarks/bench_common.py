"""Helpers the benchmark scripts share: the device's name and timing synchronisation."""
from __future__ import annotations

import os
import platform

import torch


def device_name(device: torch.device) -> str:
    """"NVIDIA H100 80GB HBM3" on CUDA; "x86_64 CPU (2 cores, 2 torch threads)" on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    processor = platform.processor() or platform.machine()
    return f"{processor} CPU ({cores} cores, {torch.get_num_threads()} torch threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
