"""Segmentation models and their registry. Importing this package registers every model, importing no torch:
the networks' modules are imported when a model is built, or when UNet / DeepLabV3 is asked for."""
from __future__ import annotations

import importlib

from seglab.models import builtin as _builtin  # noqa: F401  (registers unet, deeplabv3; imports no torch)
from seglab.models import smp as _smp  # noqa: F401  (registers smp-*; imports no SMP code)
from seglab.models.registry import ModelSpec, build_model, list_models, model_spec, register_model, unregister_model

# The networks, imported on first use (PEP 562): `from seglab.models import UNet` works as always.
_NETWORKS = {"DeepLabV3": "seglab.models.deeplabv3", "UNet": "seglab.models.unet"}

__all__ = ["DeepLabV3", "ModelSpec", "UNet", "build_model", "list_models", "model_spec", "register_model",
           "unregister_model"]


def __getattr__(name: str):
    if name in _NETWORKS:
        return getattr(importlib.import_module(_NETWORKS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
