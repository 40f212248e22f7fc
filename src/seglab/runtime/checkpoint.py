"""Checkpoints: plain dicts of tensors and Python values, written atomically, loaded with weights_only.

Layout (every key plain, so `torch.load(path, weights_only=True)` reads it):
    format: "seglab-checkpoint", version: 1, seglab_version: str
    model: {"name": str, "kwargs": dict}          -> build_model(name, **kwargs)
    state_dict: the unwrapped model's weights (no "module." or "_orig_mod." prefixes)
    class_map: ClassMap.to_dict()                  -> predictions come back in the user's values
    preprocess: {"channels", "scale", "normalization", "precision"}
    postprocess: {"threshold"}                     (seglab <= 0.2 kept the threshold in preprocess)
    epoch, step: int; metrics: dict of floats
    train_state (last.pt only): optimizer, scheduler, scaler, RNG and data-stream states
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from seglab.data.classmap import ClassMap
from seglab.errors import CheckpointError, SeglabError
from seglab.version import __version__

FORMAT = "seglab-checkpoint"
VERSION = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def make_checkpoint(model: nn.Module, model_name: str, model_kwargs: dict, class_map: ClassMap,
                    preprocess: dict, epoch: int = 0, step: int = 0, metrics: dict | None = None,
                    train_state: dict | None = None, postprocess: dict | None = None) -> dict:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "seglab_version": __version__,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "state_dict": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        "class_map": class_map.to_dict(),
        "preprocess": dict(preprocess),
        "postprocess": dict(postprocess or {}),
        "epoch": int(epoch),
        "step": int(step),
        "metrics": dict(metrics or {}),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    return payload


def postprocess_of(payload: dict) -> dict:
    """{"threshold": float} of a checkpoint payload, from its postprocess section or, in files of
    seglab <= 0.2, its preprocess section; 0.5 when neither has one."""
    threshold = payload.get("postprocess", {}).get("threshold", payload["preprocess"].get("threshold", 0.5))
    return {"threshold": float(threshold)}


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some file systems do not open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(payload: dict, path: str | Path) -> Path:
    """Write atomically: temporary file in the same folder, fsync, os.replace, fsync the folder.

    A crash or a full disk at any moment leaves the previous file at `path` intact. Weights that
    are not finite are never written (a diverged run must not replace a good checkpoint).
    """
    path = Path(path)
    bad = non_finite_tensors(payload.get("state_dict", {}))
    if bad:
        raise SeglabError(f"refused to save '{path}': {len(bad)} weight tensors are not finite (e.g. {bad[0]}); "
                          "training diverged")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        full = getattr(error, "errno", None) == errno.ENOSPC or _nearly_full(path.parent)
        reason = "the disk is full" if full else (getattr(error, "strerror", None) or _first_line(error))
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise SeglabError(f"could not save checkpoint '{path}' ({reason}); {kept}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


REQUIRED_KEYS = ("model", "state_dict", "class_map", "preprocess")


def _torch_file_kind(path: Path) -> str | None:
    """"zip" (torch.save since 1.6), "legacy" (a pickle stream), or None: not a file torch.save writes."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "legacy"
    return None


def load_checkpoint(path: str | Path) -> dict:
    """Read a seglab checkpoint safely (weights_only=True: no code in the file can run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist: pass a .pt file from a run folder "
                              "(e.g. runs/NAME/best.pt)")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint '{path}' is not readable (permissions)")
    if path.stat().st_size == 0 or _torch_file_kind(path) is None:
        raise CheckpointError(f"'{path}' is not a checkpoint (not a file torch.save writes): pass a .pt file "
                              "from a run folder, e.g. runs/NAME/best.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Weights only" not in str(error):
            raise CheckpointError(f"checkpoint '{path}' is corrupt ({_first_line(error)}): use another checkpoint, "
                                  "e.g. last.pt or best.pt of the run") from None
        raise CheckpointError(f"refused to load '{path}': it holds Python objects beyond tensors and plain "
                              "values (it could run code); only seglab checkpoints are accepted") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError,
            TypeError) as error:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({type(error).__name__}); "
                              "use another checkpoint, e.g. last.pt or best.pt of the run") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a seglab checkpoint (a file from another program?): "
                              "train with `seglab train` or export the weights into a seglab run")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"'{path}' was written by a newer seglab ({payload.get('seglab_version')}); "
                              "upgrade seglab to read it")
    missing = [key for key in REQUIRED_KEYS if not isinstance(payload.get(key), dict)]
    model = payload.get("model") if isinstance(payload.get("model"), dict) else {}
    if missing or not isinstance(model.get("name"), str) or not isinstance(model.get("kwargs"), dict):
        raise CheckpointError(f"'{path}' is a damaged seglab checkpoint (no valid {', '.join(missing) or 'model'}): "
                              "use another checkpoint, e.g. last.pt or best.pt of the run")
    return payload


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:120]


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of floating-point tensors in a state dict holding NaN or infinity."""
    return [name for name, tensor in state_dict.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def model_from_checkpoint(payload: dict, path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strictly)."""
    from seglab.models import build_model

    spec = payload["model"]
    try:
        model = build_model(spec["name"], **spec["kwargs"])
    except SeglabError as error:
        raise CheckpointError(f"'{path}' describes a model seglab cannot build ({error})") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"weights in '{path}' do not fit a {spec['name']} with {spec['kwargs']} "
                              f"({first})") from None
    return model
