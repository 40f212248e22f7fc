"""seglab: train and run image-segmentation models on folders of images and masks.

    import seglab
    run = seglab.train("data/isbi2012", base_channels=16, crop=256, time_budget=120)
    model = seglab.load(run.best_checkpoint)
    result = model.predict("data/isbi2012/test/images/00.png")     # .mask, .classes, .probabilities
    scores = seglab.evaluate(model, run.validation_pairs)           # .pooled, .mean, .table()

`import seglab` imports no torch: each public name comes from its module on first use (PEP 562),
so the command starts at once and `seglab.check` never loads torch.
"""
from __future__ import annotations

from seglab.api import API_HOMES
from seglab.errors import CheckpointError, ConfigError, DataError, SeglabError  # noqa: F401  (public, no torch)
from seglab.lazy import lazy_names
from seglab.version import __version__  # noqa: F401

# Where each public name lives (the modules that define them, not re-exports): the API's, and these.
_HOMES = {
    **API_HOMES,
    "Evaluation": "seglab.metrics.scoring",
    "Prediction": "seglab.inference.prediction",
    "Predictor": "seglab.inference.predictor",
    "RunConfig": "seglab.config",
    "build_model": "seglab.models.registry",
    "list_models": "seglab.models.registry",
    "load_config": "seglab.config",
    "option": "seglab.options",
    "register_model": "seglab.models.registry",
}

__all__ = sorted(["CheckpointError", "ConfigError", "DataError", "SeglabError", "__version__", *_HOMES])


__getattr__, __dir__ = lazy_names(globals(), _HOMES)
