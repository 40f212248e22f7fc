"""The public Python API: what the `seglab` command does, as functions that return objects.

Each name is imported from its module on first use (PEP 562), so `seglab.check` costs no torch and
`seglab.load` no training code; `from seglab.api import train` works as always. No module here is
named as a public name: importing it would bind the module over the name on this package.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "CrossValidation": "seglab.api.folds",
    "Recipe": "seglab.engine.recipe",
    "Run": "seglab.api.run_results",
    "check": "seglab.api.tools",
    "evaluate": "seglab.api.evaluating",
    "export": "seglab.api.tools",
    "fit": "seglab.api.training",
    "load": "seglab.api.predicting",
    "predict_files": "seglab.api.file_predictions",
    "prepare": "seglab.api.preparing",
    "report": "seglab.api.tools",
    "resume": "seglab.api.training",
    "train": "seglab.api.training",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
