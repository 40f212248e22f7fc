"""The module seglab trains for an SMP architecture: its network, mirrored up to the sizes it takes, cropped back.

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
from seglab.models.smp_architecture import Architecture
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


def _drop_unused_layers(encoder: nn.Module) -> None:
    """A ViT encoder keeps its timm model's final norm and classifier, which DPT never runs: timm's
    own pruning removes them, with any block after the last one DPT reads; outputs do not change."""
    model = getattr(encoder, "model", None)
    indices = getattr(encoder, "_output_indices", None)
    if indices is not None and hasattr(model, "prune_intermediate_layers"):
        model.prune_intermediate_layers(list(indices), prune_norm=True, prune_head=True)


def _fix_unreached_parameters(network: nn.Module, in_channels: int, side: int) -> None:
    """Parameters the forward never reaches take no gradient, which DistributedDataParallel refuses:
    SMP encoders keep every stage at an `encoder_depth` below 5 (smp-pspnet's 3 never runs ResNet's
    layer3 and layer4). One backward pass through a small zero image, in eval mode (no running
    statistics change), finds them; they stop requiring gradients, so no optimizer or DDP waits
    for them."""
    if torch.is_inference_mode_enabled():
        return  # a model built to predict: nothing trains it
    was_training = network.training
    network.eval()
    with torch.enable_grad():
        out = network(torch.zeros(1, in_channels, side, side))
        (out[0] if isinstance(out, (tuple, list)) else out).float().sum().backward()
    for param in network.parameters():
        if param.grad is None:
            param.requires_grad_(False)
        param.grad = None
    network.train(was_training)


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
    _drop_unused_layers(network.encoder)
    multiple = stride * architecture.feature_multiple
    minimum = max(multiple, stride * architecture.feature_minimum)
    if getattr(network.encoder, "_depth", 5) < 5:
        _fix_unreached_parameters(network, in_channels, max(minimum, 64))  # encoders may run stages past depth
    refusals = {fmt: reason for fmt, reason in (("onnx", architecture.onnx_refusal),
                                                ("torchscript", architecture.torchscript_refusal)) if reason}
    return SMPSegmentation(network, multiple, minimum, normalization, refusals, architecture.name)


def _encoder_stride(encoder: nn.Module) -> int:
    """How much the encoder shrinks its input at most: the multiple the network's sides must be."""
    stride = getattr(encoder, "output_stride", None)
    if stride is None:  # ViT encoders: one stride per output, the patch size
        stride = max(getattr(encoder, "output_strides", [32]))
    return int(stride)
