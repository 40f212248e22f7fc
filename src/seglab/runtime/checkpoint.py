"""Checkpoints: plain dicts of tensors and Python values, written atomically, loaded with weights_only.

Layout (every key plain, so `torch.load(path, weights_only=True)` reads it):
    format: "seglab-checkpoint", version: 1, seglab_version: str
    model: {"name": str, "kwargs": dict}          -> build_model(name, **kwargs)
    state_dict: the unwrapped model's weights (no "module." or "_orig_mod." prefixes)
    class_map: ClassMap.to_dict()                  -> predictions come back in the user's values
    preprocess: {"channels", "scale", "normalization", "threshold"}
    epoch, step: int; metrics: dict of floats
    train_state (last.pt only): optimizer, scheduler, scaler, RNG and data-stream states
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from seglab import __version__
from seglab.data.classmap import ClassMap
from seglab.errors import CheckpointError, SeglabError

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
                    train_state: dict | None = None) -> dict:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "seglab_version": __version__,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "state_dict": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        "class_map": class_map.to_dict(),
        "preprocess": dict(preprocess),
        "epoch": int(epoch),
        "step": int(step),
        "metrics": dict(metrics or {}),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    return payload


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

    A crash or a full disk at any moment leaves the previous file at `path` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if error.errno == 28 else (error.strerror or str(error))
        raise SeglabError(f"could not save checkpoint '{path}' ({reason}); the previous checkpoint is "
                          "intact: free space or choose another --out folder, then --resume") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a seglab checkpoint safely (weights_only=True: no code in the file can run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist: pass a .pt file from a run folder "
                              "(e.g. runs/NAME/best.pt)")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint '{path}' is not readable (permissions)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"refused to load '{path}': it holds Python objects beyond tensors and plain "
                              "values (it could run code); only seglab checkpoints are accepted") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({type(error).__name__}); "
                              "use another checkpoint, e.g. last.pt or best.pt of the run") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a seglab checkpoint (a file from another program?): "
                              "train with `seglab train` or export the weights into a seglab run")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"'{path}' was written by a newer seglab ({payload.get('seglab_version')}); "
                              "upgrade seglab to read it")
    return payload


def model_from_checkpoint(payload: dict, path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strictly)."""
    from seglab.models import build_model

    spec = payload["model"]
    model = build_model(spec["name"], **spec["kwargs"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"weights in '{path}' do not fit a {spec['name']} with {spec['kwargs']} "
                              f"({first})") from None
    return model
