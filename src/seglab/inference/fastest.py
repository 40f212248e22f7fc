"""Which way of running a checkpoint is fastest on this CPU: what `seglab export` measured, read back.

An ONNX export records the checkpoint it came from (file name and SHA-256), the CPU it was timed
on, and the seconds one image took through PyTorch (at the checkpoint's "auto" precision) and
through the exported file (ONNX Runtime, float32 or int8). It exists only if it passed its parity
check (and, for int8, the Dice check on the run's validation images). Given a checkpoint on the
CPU, the Predictor takes the fastest such export lying beside it, and says which.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from seglab.inference.exported import json_entries

PYTORCH = "pytorch"
# An export replaces PyTorch only when it measured at least this much faster (seconds ratio): one
# image's timing on a shared machine varies by 10-20% between runs, and a near tie is not worth
# leaving the checkpoint's own precision for.
REQUIRED_SPEEDUP = 1.15


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's model name ("AMD EPYC 9R14", "Intel(R) Xeon(R) Platinum 8488C"): exports timed on
    another CPU do not decide the path on this one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_record(checkpoint: str | Path) -> dict:
    """What an export stores of its checkpoint: {"checkpoint": file name, "size": bytes, "sha256": hex}."""
    path = Path(checkpoint)
    return {"checkpoint": path.name, "size": path.stat().st_size, "sha256": file_digest(path)}


def onnx_metadata(path: Path) -> dict:
    """The seglab metadata of an ONNX file (JSON values), {} for a file that is not one."""
    try:
        import onnx
    except ImportError:
        return {}
    try:
        graph = onnx.load(str(path), load_external_data=False)
        return json_entries({entry.key: entry.value for entry in graph.metadata_props})
    except Exception:  # noqa: BLE001 - a foreign or damaged file is simply not a candidate
        return {}


def faster_export(checkpoint: str | Path) -> tuple[Path, dict] | None:
    """The export beside `checkpoint` (its folder, `<stem>*.onnx`) made from exactly this file that
    beat PyTorch by the widest margin (and by REQUIRED_SPEEDUP at least) on this CPU when it was
    exported: (path, its metadata)."""
    checkpoint = Path(checkpoint)
    candidates = sorted(checkpoint.parent.glob(f"{checkpoint.stem}*.onnx"))
    if not candidates:
        return None
    size, digest, best = checkpoint.stat().st_size, None, None
    for path in candidates:
        metadata = onnx_metadata(path)
        source, speed = metadata.get("source") or {}, metadata.get("speed") or {}
        seconds = speed.get("seconds") or {}
        if source.get("size") != size or speed.get("cpu") != cpu_model_name():
            continue
        own, pytorch = seconds.get(speed.get("runtime")), seconds.get(PYTORCH)
        if not own or not pytorch or own * REQUIRED_SPEEDUP > pytorch:
            continue
        digest = digest or file_digest(checkpoint)
        if source.get("sha256") != digest:
            continue
        # Each file was timed against PyTorch in its own run: compare the ratios, which a busy
        # machine at one export skews less than the seconds.
        if best is None or own / pytorch < best[2]:
            best = (path, metadata, own / pytorch)
    return None if best is None else (best[0], best[1])


def describe_choice(path: Path, metadata: dict) -> str:
    """One line for the log: which file runs, how much faster it measured, and its parity."""
    speed = metadata["speed"]
    seconds = speed["seconds"]
    line = (f"using {path.name} ({speed['runtime']}: {seconds[PYTORCH] / seconds[speed['runtime']]:.1f}x "
            f"{speed.get('pytorch_path', PYTORCH)} on this CPU at export")
    parity = (metadata.get("quantization") or {}).get("parity")
    if parity:
        line += f"; mean Dice {parity['dice_int8']:.4f} vs {parity['dice_float']:.4f} float"
    return line + "); --runtime pytorch runs the checkpoint itself"


def set_onnx_metadata(path: Path, values: dict) -> None:
    """Set (replace) seglab metadata entries of an ONNX file, JSON-encoded, in place."""
    import onnx

    graph = onnx.load(str(path))
    kept = [(entry.key, entry.value) for entry in graph.metadata_props if entry.key not in values]
    del graph.metadata_props[:]
    for key, value in kept + [(key, json.dumps(value)) for key, value in values.items()]:
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
