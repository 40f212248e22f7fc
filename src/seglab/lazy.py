"""Public names imported from their modules on first use (PEP 562), so `import seglab` and
`import seglab.api` import no torch."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_names(namespace: dict, homes: dict[str, str]) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for a package whose `namespace` (its globals()) lends each name of
    `homes` ({name: module}) from its module on first use, then keeps it."""
    package = namespace["__name__"]

    def __getattr__(name: str):
        if name in homes:
            value = getattr(importlib.import_module(homes[name]), name)
            namespace[name] = value  # later look-ups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", homes)))

    return __getattr__, __dir__
