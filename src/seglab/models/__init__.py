"""Segmentation models and their registry. Importing this package registers every model."""
from seglab.models.registry import build_model, list_models, register_lazy, register_model
from seglab.models.unet import UNet

register_lazy("deeplabv3", "seglab.models.deeplabv3:DeepLabV3")

__all__ = ["DeepLabV3", "UNet", "build_model", "list_models", "register_model"]


def __getattr__(name: str):
    if name == "DeepLabV3":  # imported on first use: it needs torchvision
        from seglab.models.deeplabv3 import DeepLabV3

        return DeepLabV3
    raise AttributeError(f"module 'seglab.models' has no attribute {name!r}")
