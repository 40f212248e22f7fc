"""Devices, numeric precision and memory layout: which device a name means, what autocast dtype and
layout a run uses, how much memory is free."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from seglab.config import DEVICE_PATTERN, PRECISIONS
from seglab.errors import SeglabError

# A cgroup limit at or above this means "no limit" (cgroup v1 writes 2**63 rounded to pages).
UNLIMITED_BYTES = 2**60
FALLBACK_FREE_BYTES = 2**30


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


# ---- precision ------------------------------------------------------------------------------------
def native_cpu_bf16() -> str | None:
    """The CPU feature that computes bfloat16 natively ("AMX" or "AVX512_BF16"), as PyTorch's own
    CPU detection (cpuinfo) sees it, or None. oneDNN runs bf16 convolutions and matmuls on these
    units; other CPUs emulate bf16 with fp32 arithmetic and gain nothing from it. Without oneDNN
    (mkldnn) PyTorch has no fast bf16 convolution at all."""
    if not torch.backends.mkldnn.is_available():
        return None
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512_BF16", "_is_avx512_bf16_supported"))
    for feature, probe in probes:
        check = getattr(torch.cpu, probe, None)  # private helpers: absent in some builds
        try:
            if check is not None and check():
                return feature
        except RuntimeError:
            continue
    return None


def resolve_precision(precision: str | None, amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = float32).

    "auto" (the default): bf16 on a GPU that has it (else fp16), bf16 on a CPU that computes it
    natively (`native_cpu_bf16`), float32 elsewhere. None is the setting of configs written before
    "auto" existed: float32, or with `--amp` bf16/fp16 on GPUs; it keeps their runs resuming as
    they trained.
    """
    if precision is None:
        if not amp or device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in PRECISIONS:
        raise SeglabError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_cpu_bf16() else None
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise SeglabError("--precision fp16 needs a GPU: use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SeglabError("this GPU has no bf16: use --precision fp16 (or --amp, which picks it)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def inference_precision(precision: str, trained: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a trained model's forward passes. "auto" predicts in the precision the
    run validated in (a checkpoint's "precision"), so predictions reproduce its scores, where the
    device computes that precision natively; float32 for checkpoints trained in float32 or written
    before seglab recorded it. Any other value is resolved as `resolve_precision` does."""
    if precision != "auto":
        return resolve_precision(precision, False, device)
    if trained == "bf16":
        return resolve_precision("auto", False, device) if device.type == "cpu" or \
            torch.cuda.is_bf16_supported() else None
    if trained == "fp16" and device.type == "cuda":
        return torch.float16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """None -> "fp32", torch.bfloat16 -> "bf16", torch.float16 -> "fp16"."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def describe_precision(dtype: torch.dtype | None, device: torch.device) -> str:
    """Why a run or a predictor computes in `dtype`, in a few words for the log."""
    if dtype is None:
        return "fp32" if device.type != "cpu" or native_cpu_bf16() else "fp32 (this CPU has no native bf16)"
    if device.type == "cpu":
        feature = native_cpu_bf16()
        return f"bf16 autocast ({feature})" if feature else "bf16 autocast (emulated: no native bf16 on this CPU)"
    return f"{precision_name(dtype)} autocast"


def default_channels_last(device: torch.device, dtype: torch.dtype | None) -> bool:
    """The memory layout when neither the user nor a measurement chose one: channels-last on GPUs
    (tensor cores) and under CPU bf16 (oneDNN's bf16 convolutions work in NHWC; measured faster on
    both CPUs of BENCHMARKS.md), the default layout for CPU float32."""
    return device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16)


def autocast_factory(device: torch.device, dtype: torch.dtype | None):
    """A zero-argument callable returning the autocast context (a no-op for float32)."""
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


# ---- memory ---------------------------------------------------------------------------------------
def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def free_memory(device: torch.device) -> int:
    """Bytes free on the device (CUDA) or available in RAM (CPU: `available_ram`)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_ram()


def available_ram(meminfo: str | Path = "/proc/meminfo", cgroup_root: str | Path = "/sys/fs/cgroup",
                  proc_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """Bytes this process can still allocate: the kernel's MemAvailable (free memory plus the page
    cache it can drop; MemFree alone counts a full cache as used memory), lowered to what the
    process's cgroup limit leaves (containers, Slurm jobs). The paths are parameters for tests."""
    available = _meminfo_available(Path(meminfo))
    headroom = cgroup_headroom(Path(cgroup_root), Path(proc_cgroup))
    if available is None:
        return headroom if headroom is not None else FALLBACK_FREE_BYTES
    return min(available, headroom) if headroom is not None else available


def _meminfo_available(path: Path) -> int | None:
    """MemAvailable from /proc/meminfo (kernels before 3.14: MemFree + Cached), in bytes."""
    try:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in path.read_text().splitlines()
                  if ":" in line and len(line.split()) >= 2 and line.split()[1].isdigit()}
    except OSError:
        return None
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    if "MemFree" in fields:
        return fields["MemFree"] + fields.get("Cached", 0)
    return None


def cgroup_headroom(root: Path, proc_cgroup: Path) -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroup and its ancestors (v2:
    memory.max - memory.current; v1: memory.limit_in_bytes - memory.usage_in_bytes), with the
    cgroup's reclaimable page cache (inactive_file) counted as free; None without a limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    tightest = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found = _headroom_along(root, path, "memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            found = _headroom_along(root / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                                    "total_inactive_file")
        else:
            continue
        if found is not None:
            tightest = found if tightest is None else min(tightest, found)
    return tightest


def _headroom_along(mount: Path, path: str, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    """The smallest headroom of the cgroup folders from `path` up to the mount's root. Inside a
    container the cgroup namespace shows the process's own cgroup as the root itself."""
    relative = Path(path.strip().lstrip("/"))
    folders = [mount / relative] + [mount / parent for parent in relative.parents]
    tightest = None
    for folder in dict.fromkeys(folders):
        limit = _read_bytes(folder / limit_file)
        if limit is None or limit >= UNLIMITED_BYTES:
            continue
        usage = _read_bytes(folder / usage_file) or 0
        cache = _stat_value(folder / "memory.stat", cache_key)
        headroom = max(0, limit - max(0, usage - cache))
        tightest = headroom if tightest is None else min(tightest, headroom)
    return tightest


def _read_bytes(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED_BYTES
    return int(text) if text.isdigit() else None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0
