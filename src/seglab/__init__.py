"""seglab: train and run image-segmentation models on folders of images and masks.

    import seglab
    run = seglab.train("data/isbi2012", base_channels=16, crop=256, max_time=120)
    model = seglab.load(run.best_checkpoint)
    result = model.predict("data/isbi2012/test/images/00.png")     # .mask, .classes, .probabilities
    scores = seglab.evaluate(model, run.validation_pairs)           # .pooled, .mean, .table()
"""
from seglab.api import CrossValidation, Run, check, evaluate, export, load, predict_files, report, resume, train  # noqa: E402
from seglab.config import RunConfig, load_config  # noqa: E402
from seglab.errors import CheckpointError, ConfigError, DataError, SeglabError  # noqa: E402
from seglab.inference.predictor import Prediction, Predictor  # noqa: E402
from seglab.metrics.scoring import Evaluation  # noqa: E402
from seglab.models import build_model, list_models, register_model  # noqa: E402
from seglab.options import option  # noqa: E402
from seglab.version import __version__

__all__ = ["CheckpointError", "ConfigError", "CrossValidation", "DataError", "Evaluation", "Prediction", "Predictor",
           "Run", "RunConfig", "SeglabError", "__version__", "build_model", "check", "evaluate", "export", "list_models",
           "load", "load_config", "option", "predict_files", "register_model", "report", "resume", "train"]
