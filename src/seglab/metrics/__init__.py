"""Evaluation metrics: pixel scores from confusion-matrix counts, and the ISBI instance metrics."""
from seglab.metrics.confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
