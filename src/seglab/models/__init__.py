"""Segmentation models and their registry. Importing this package registers every model."""
from seglab.models import smp as _smp  # noqa: F401  (registers smp-*; imports no SMP code)
from seglab.models.deeplabv3 import DeepLabV3
from seglab.models.registry import ModelSpec, build_model, list_models, model_spec, register_model, unregister_model
from seglab.models.unet import UNet

__all__ = ["DeepLabV3", "ModelSpec", "UNet", "build_model", "list_models", "model_spec", "register_model",
           "unregister_model"]
