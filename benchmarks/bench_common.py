"""Helpers the benchmark scripts share: the device, its name, timing synchronisation, the CamVid folder."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """"NVIDIA H100 80GB HBM3" on CUDA; "x86_64 CPU (2 cores, 2 torch threads)" on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from seglab.inference.fastest import cpu_model_name

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model_name()} ({platform.machine()}, {cores} cores, {torch.get_num_threads()} torch threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_device(choice: str) -> torch.device:
    """--device: "auto" is CUDA where there is one, else the CPU; anything else as torch names it."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def require_camvid(folder: Path) -> None:
    """Exit with one line unless `folder` holds CamVid in seglab's layout (train/ and val/)."""
    if not (folder / "train" / "images").is_dir() or not (folder / "val" / "images").is_dir():
        sys.exit(f"no CamVid at {folder}: give --data a folder with train/ and val/ (images/ + masks/)")
