"""seglab: train and run image-segmentation models on folders of images and masks.

    import seglab
    run = seglab.train("data/isbi2012", base_channels=16, crop=256, max_time=120)
    model = seglab.load(run.best_checkpoint)
    result = model.predict("data/isbi2012/test/images/00.png")     # .mask, .classes, .probabilities
    scores = seglab.evaluate(model, run.validation_pairs)           # .pooled, .mean, .table()

`import seglab` imports no torch: each public name comes from its module on first use (PEP 562),
so the command starts at once and `seglab.check` never loads torch.
"""
from __future__ import annotations

import importlib

from seglab.errors import CheckpointError, ConfigError, DataError, SeglabError  # noqa: F401  (public, no torch)
from seglab.version import __version__  # noqa: F401

# Where each public name lives (the modules that define them, not re-exports).
_HOMES = {
    "CrossValidation": "seglab.api.folds",
    "Evaluation": "seglab.metrics.scoring",
    "Prediction": "seglab.inference.predictor",
    "Predictor": "seglab.inference.predictor",
    "Recipe": "seglab.engine.recipe",
    "Run": "seglab.api.run_results",
    "RunConfig": "seglab.config",
    "build_model": "seglab.models.registry",
    "check": "seglab.api.tools",
    "evaluate": "seglab.api.evaluating",
    "export": "seglab.api.tools",
    "fit": "seglab.api.training",
    "list_models": "seglab.models.registry",
    "load": "seglab.api.predicting",
    "load_config": "seglab.config",
    "option": "seglab.options",
    "predict_files": "seglab.api.file_predictions",
    "prepare": "seglab.api.preparing",
    "register_model": "seglab.models.registry",
    "report": "seglab.api.tools",
    "resume": "seglab.api.training",
    "train": "seglab.api.training",
}

__all__ = sorted(["CheckpointError", "ConfigError", "DataError", "SeglabError", "__version__", *_HOMES])


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
