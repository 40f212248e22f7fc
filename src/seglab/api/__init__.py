"""The public Python API: what the `seglab` command does, as functions that return objects."""
from seglab.api.evaluating import evaluate
from seglab.api.folds import CrossValidation
from seglab.api.predict_files import predict_files
from seglab.api.predicting import load
from seglab.api.tools import check, export, report
from seglab.api.training import Run, resume, train

__all__ = ["CrossValidation", "Run", "check", "evaluate", "export", "load", "predict_files", "report", "resume",
           "train"]
