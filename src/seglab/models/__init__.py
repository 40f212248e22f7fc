"""Segmentation models and their registry. Importing this package registers every model."""
from seglab.models.registry import build_model, list_models, register_model
from seglab.models.unet import UNet

__all__ = ["UNet", "build_model", "list_models", "register_model"]
