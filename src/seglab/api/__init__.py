"""The public Python API: what the `seglab` command does, as functions that return objects.

Each name is imported from its module on first use (PEP 562), so `seglab.check` costs no torch and
`seglab.load` no training code; `from seglab.api import train` works as always. No module here is
named as a public name: importing it would bind the module over the name on this package.
"""
from __future__ import annotations

from seglab.lazy import lazy_names

# Where each name of the API lives (the package root lends these too).
API_HOMES = {
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

__all__ = sorted(API_HOMES)


__getattr__, __dir__ = lazy_names(globals(), API_HOMES)
