"""Model registry: models register a builder by name; `build_model(name, **kwargs)` constructs one."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from seglab.errors import SeglabError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: `@register_model("unet")` over a class or a function returning an nn.Module."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorator


def register_lazy(name: str, target: str) -> None:
    """Register "package.module:Builder" without importing it until a model is built (DeepLabV3
    pulls in torchvision, which costs seconds at every command start)."""
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is registered twice")

    def builder(**kwargs) -> nn.Module:
        import importlib

        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)(**kwargs)

    _BUILDERS[name] = builder


def list_models() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model from plain keyword arguments (the same ones a checkpoint stores)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise SeglabError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None
    return builder(**kwargs)
