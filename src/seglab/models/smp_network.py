"""The module seglab trains for an SMP architecture: the SMP network, mirrored up to the sizes it takes and cropped back.

Imported only by the builder of `seglab.models.smp`: segmentation_models_pytorch and timm take
seconds to import.
"""
from __future__ import annotations

import difflib
import warnings

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS

from seglab.errors import ConfigError
from seglab.models.pretrained import (
    load_encoder_weights,
    locate,
    normalization_of,
    read_state_dict,
    weights_dir_from,
    weights_source,
)
from seglab.models.smp import Architecture
from seglab.padding import pad_to_multiple


class SMPSegmentation(nn.Module):
    """An SMP network that takes images of any size.

    The network needs sides that are multiples of `input_multiple` (its encoder's output stride)
    and at least `min_input_size` long; inputs are mirrored on the far sides up to such a size
    (`seglab.padding.pad_to_multiple`) and the logits cropped back, so training crops, whole
    images, tiles and exported graphs all go through the same padding.

    Attributes: network (the SMP model), encoder (its encoder), input_multiple, min_input_size,
    input_normalization ({"mean", "std"} of RGB pixels / 255 the pretrained encoder was trained
    with, or None), export_refusals ({format: why it cannot be exported}).

    Shapes: x (N, in_channels, H, W), any H and W -> logits (N, num_classes, H, W).
    """

    def __init__(self, network: nn.Module, input_multiple: int, min_input_size: int = 1,
                 input_normalization: dict | None = None, export_refusals: dict[str, str] | None = None,
                 name: str = "smp"):
        super().__init__()
        self.network = network
        self.input_multiple = int(input_multiple)
        self.min_input_size = int(min_input_size)
        self.input_normalization = input_normalization
        self.export_refusals = dict(export_refusals or {})
        self.name = name

    @property
    def encoder(self) -> nn.Module:
        return self.network.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        logits = self.network(pad_to_multiple(x, self.input_multiple, self.min_input_size))  # (N, K, >= H, >= W)
        return logits[..., :height, :width]


class OneValueBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that normalises with its running statistics where a training batch holds one value
    per channel, instead of failing ("Expected more than 1 value per channel when training").

    The image-pooling branches of DeepLabV3(+), PAN and UPerNet apply BatchNorm to 1x1 maps, so a
    batch of one image (the last, short batch of an epoch) has nothing to take statistics over.
    The class only changes that case: parameters, buffers and every other call are BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _tolerate_one_value_batches(network: nn.Module) -> None:
    for module in network.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = OneValueBatchNorm  # same layout and state dict, one more case handled


def check_encoder_name(encoder: str) -> None:
    """ConfigError with the nearest names for an encoder neither SMP nor timm (tu-NAME) has."""
    if encoder.startswith("tu-"):
        name = encoder[3:]
        if timm.models.is_model(name.split(".")[0]):
            return
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
        hint = f"did you mean {', '.join('tu-' + c for c in close)}?" if close else "timm.list_models() lists them"
        raise ConfigError(f"invalid model.encoder (--encoder): {encoder!r}; timm has no model {name!r}: {hint}")
    if encoder not in SMP_ENCODERS:
        close = difflib.get_close_matches(encoder, list(SMP_ENCODERS), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "`seglab models --all-encoders` lists them"
        raise ConfigError(f"invalid model.encoder (--encoder): {encoder!r}; not an SMP encoder: {hint} "
                          "(tu-NAME takes any timm model)")


def _construct(architecture: Architecture, encoder: str, in_channels: int, num_classes: int,
               encoder_depth: int | None, output_stride: int | None, **extra) -> nn.Module:
    kwargs = {"encoder_name": encoder, "encoder_weights": None, "in_channels": in_channels, "classes": num_classes,
              **extra}
    if encoder_depth is not None:
        kwargs["encoder_depth"] = encoder_depth
    if output_stride is not None:
        kwargs["encoder_output_stride"] = output_stride
    try:
        with warnings.catch_warnings():
            # "timm- encoders are deprecated" and "tu- encoders take True": seglab passes what SMP needs.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            return getattr(smp, architecture.smp_class)(**kwargs)
    except (ValueError, KeyError, TypeError, RuntimeError, AssertionError, AttributeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"cannot build {architecture.name} with encoder {encoder!r}: {reason}") from None


def build_smp_model(architecture: Architecture, in_channels: int = 3, num_classes: int = 1,
                    encoder: str = "resnet34", encoder_weights: str | None = None, weights_dir: str | None = None,
                    encoder_depth: int | None = None, output_stride: int | None = None) -> SMPSegmentation:
    """The SMP model `architecture` with `encoder`, built without a download; with `encoder_weights`
    its encoder starts from the pretrained files that `seglab.models.pretrained.locate` finds."""
    check_encoder_name(encoder)
    source = paths = None
    extra: dict = {}
    if encoder_weights is not None:
        source = weights_source(encoder, encoder_weights)
        paths = locate(source, weights_dir_from(weights_dir))
        if source.is_timm:  # timm loads (and adapts) its own file: the documented local-file override
            extra = {"encoder_weights": True, "pretrained_cfg_overlay": {"file": str(paths[0])}}
    network = _construct(architecture, encoder, in_channels, num_classes, encoder_depth, output_stride, **extra)
    _tolerate_one_value_batches(network)
    normalization = None
    if source is not None and source.is_timm:
        normalization = {"mean": list(source.mean), "std": list(source.std)}
    elif source is not None:
        load_encoder_weights(network.encoder, read_state_dict(paths[0]), paths[0], encoder)
        mean, std = normalization_of(paths[1])
        normalization = {"mean": mean, "std": std}
    stride = _encoder_stride(network.encoder)
    refusals = {fmt: reason for fmt, reason in (("onnx", architecture.onnx_refusal),
                                                ("torchscript", architecture.torchscript_refusal)) if reason}
    return SMPSegmentation(network, stride * architecture.feature_multiple, stride * architecture.feature_minimum,
                           normalization, refusals, architecture.name)


def _encoder_stride(encoder: nn.Module) -> int:
    """How much the encoder shrinks its input at most: the multiple the network's sides must be."""
    stride = getattr(encoder, "output_stride", None)
    if stride is None:  # ViT encoders: one stride per output, the patch size
        stride = max(getattr(encoder, "output_strides", [32]))
    return int(stride)
