"""Segmentation models and their registry. Importing this package registers every model."""
from seglab.models.deeplabv3 import DeepLabV3
from seglab.models.registry import build_model, list_models, register_model
from seglab.models.unet import UNet

__all__ = ["DeepLabV3", "UNet", "build_model", "list_models", "register_model"]
