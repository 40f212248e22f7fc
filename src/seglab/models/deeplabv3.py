"""DeepLabV3 (Chen et al., 2017): dilated torchvision ResNet backbone, ASPP with image pooling, bilinear upsampling.

Registered as "deeplabv3" with its options (DeepLabV3Options) in `seglab.models.builtin`.
"""
from __future__ import annotations

import os
import pickle
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from seglab.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from seglab.errors import SeglabError
from seglab.models.builtin import BACKBONES


def _torchvision_resnet(name: str):
    """(builder, IMAGENET1K_V1 weights) of a torchvision ResNet. torchvision is imported here, on
    first use, because importing it costs seconds at every command start."""
    import torchvision.models as tv

    builders = {"resnet18": (tv.resnet18, tv.ResNet18_Weights), "resnet34": (tv.resnet34, tv.ResNet34_Weights),
                "resnet50": (tv.resnet50, tv.ResNet50_Weights), "resnet101": (tv.resnet101, tv.ResNet101_Weights)}
    builder, weights = builders[name]
    # IMAGENET1K_V1 for every depth: the backbone weights torchvision's own DeepLabV3 models were trained from.
    return builder, weights.IMAGENET1K_V1


# Which of layer2, layer3, layer4 trade their stride for dilation.
_DILATED_STAGES = {16: [False, False, True], 8: [False, True, True]}
ASPP_RATES_OS16 = (6, 12, 18)
PROJECT_DROPOUT = 0.5  # after the ASPP projection, as in torchvision's DeepLabV3 and the reference code


# ---- ImageNet weights ------------------------------------------------------------------------------
def imagenet_weights_path(backbone: str) -> str:
    """Where `pretrained_backbone=True` looks for the backbone's ImageNet weights (the torch hub cache)."""
    filename = os.path.basename(urlparse(_torchvision_resnet(backbone)[1].url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict of `backbone`, from the hub cache or downloaded into it.

    Raises SeglabError (one line: the file path to fill and the URL it comes from) when the file is
    missing and cannot be downloaded, or when it is not a loadable weights file.
    """
    url = _torchvision_resnet(backbone)[1].url
    path = imagenet_weights_path(backbone)
    if not os.path.isfile(path):
        match = torch.hub.HASH_REGEX.search(os.path.basename(path))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(url, path, hash_prefix=match.group(1) if match else None)
        except (OSError, RuntimeError) as exc:  # OSError covers URLError, timeouts, SSL; RuntimeError a bad hash
            raise SeglabError(
                f"ImageNet weights for {backbone} are not at {path} and could not be downloaded "
                f"({_one_line(exc)}): download {url} and save it as {path}, "
                f"or build the model with pretrained_backbone=False") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise SeglabError(
            f"{path} is not a readable {backbone} weights file ({_one_line(exc)}): "
            f"delete it and download {url} again to that path") from None


# ---- backbone -------------------------------------------------------------------------------------
def dilate_stage(stage: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Trade a ResNet stage's stride-2 for dilation in place, exactly as torchvision builds dilated stages.

    The first block loses its stride (3x3 convs and downsample) and keeps `previous_dilation`; the
    later blocks' 3x3 convs take `dilation`. Works for BasicBlock, whose constructor refuses dilation.
    """
    for index, block in enumerate(stage):
        rate = previous_dilation if index == 0 else dilation
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation = (rate, rate)
                conv.padding = (rate, rate)
        if hasattr(block, "stride"):
            block.stride = 1


def _adapt_stem(conv: nn.Conv2d, in_channels: int, pretrained: bool) -> nn.Conv2d:
    """The 7x7 stem conv for `in_channels` inputs; pretrained RGB filters are averaged into it.

    The mean filter is scaled by 3 / in_channels, so an image repeated over the channels gives the
    activations its RGB copy gives the original network (the BatchNorm statistics still fit).
    """
    stem = nn.Conv2d(in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                     padding=conv.padding, bias=False)
    if pretrained:
        with torch.no_grad():
            mean = conv.weight.mean(dim=1, keepdim=True)  # (64, 1, 7, 7)
            stem.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels))  # (64, C, 7, 7)
    else:
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    return stem


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without pooling/fc, with dilated last stages.

    Shapes: x (N, in_channels, H, W) -> (layer3 (N, aux_channels, h3, w3), layer4 (N, out_channels, h, w))
    with h = ceil(H / output_stride), w = ceil(W / output_stride).
    """

    def __init__(self, name: str = "resnet50", in_channels: int = 3, output_stride: int = 16,
                 pretrained: bool = False):
        super().__init__()
        if name not in BACKBONES:
            raise SeglabError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
        if output_stride not in _DILATED_STAGES:
            raise SeglabError(f"output_stride must be 8 or 16, not {output_stride!r}")
        dilated = _DILATED_STAGES[output_stride]
        basic = name in ("resnet18", "resnet34")
        # BasicBlock refuses dilation in its constructor: build those undilated and dilate afterwards.
        builder, weights = _torchvision_resnet(name)
        resnet = builder(weights=None, replace_stride_with_dilation=None if basic else dilated)
        if pretrained:
            try:
                resnet.load_state_dict(load_imagenet_state_dict(name))
            except RuntimeError as exc:  # keys or shapes of another network
                raise SeglabError(
                    f"{imagenet_weights_path(name)} does not hold {name} weights ({_one_line(exc)[:200]}): "
                    f"replace it with {weights.url}") from None
        if basic:
            dilation = 1
            for stage, dilate in zip((resnet.layer2, resnet.layer3, resnet.layer4), dilated):
                if dilate:
                    dilate_stage(stage, previous_dilation=dilation, dilation=dilation * 2)
                    dilation *= 2
        self.conv1 = resnet.conv1 if in_channels == 3 else _adapt_stem(resnet.conv1, in_channels, pretrained)
        self.bn1, self.relu, self.maxpool = resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        expansion = 1 if basic else 4
        self.aux_channels = 256 * expansion
        self.out_channels = 512 * expansion
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer2(self.layer1(x))  # (N, 128 e, H/8, W/8)
        mid = self.layer3(x)  # (N, 256 e, H/os3, W/os3)
        return mid, self.layer4(mid)  # layer4: (N, 512 e, H/os, W/os)


# ---- heads ----------------------------------------------------------------------------------------
class ConvBNReLU(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU. (N, in, H, W) -> (N, out, H, W) (same padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool, 1x1 conv, ReLU, broadcast back to (h, w).

    No BatchNorm here: over a 1x1 map, training-mode BatchNorm with one sample has a single value
    per channel and PyTorch refuses it (and with few samples its statistics are noise). The conv has
    a bias instead, so the branch behaves the same for any batch size, in training and in eval.

    Shapes: x (N, in_channels, h, w) -> (N, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.relu(self.conv(self.pool(x)))  # (N, out_channels, 1, 1)
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three 3x3 atrous branches and image pooling, projected.

    Shapes: x (N, in_channels, h, w) -> (N, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: tuple[int, ...] = ASPP_RATES_OS16,
                 dropout: float = PROJECT_DROPOUT):
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [ConvBNReLU(in_channels, out_channels, 3, dilation=rate) for rate in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvBNReLU(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([branch(x) for branch in self.branches], dim=1)  # (N, 5 * out_channels, h, w)
        return self.project(x)


class DeepLabHead(nn.Sequential):
    """ASPP, 3x3 conv + BN + ReLU, 1x1 classifier. (N, in_channels, h, w) -> (N, num_classes, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, aspp_channels: int = 256,
                 rates: tuple[int, ...] = ASPP_RATES_OS16):
        super().__init__(
            ASPP(in_channels, aspp_channels, rates),
            ConvBNReLU(aspp_channels, aspp_channels, 3),
            nn.Conv2d(aspp_channels, num_classes, kernel_size=1),
        )


class FCNHead(nn.Sequential):
    """Auxiliary head (torchvision's FCNHead): 3x3 conv to in/4, BN, ReLU, dropout 0.1, 1x1 classifier.

    Shapes: (N, in_channels, h, w) -> (N, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(
            ConvBNReLU(in_channels, in_channels // 4, 3),
            nn.Dropout(0.1),
            nn.Conv2d(in_channels // 4, num_classes, kernel_size=1),
        )


# ---- model ----------------------------------------------------------------------------------------
class DeepLabV3(nn.Module):
    """DeepLabV3: dilated ResNet, ASPP with image pooling, logits upsampled bilinearly to the input size.

    Args:
        in_channels: image channels; the stem conv is replaced when not 3 (pretrained RGB filters
            are averaged into it).
        num_classes: output channels: 1 for binary segmentation with a sigmoid, K for K classes.
        backbone: "resnet18", "resnet34", "resnet50" or "resnet101" (torchvision).
        output_stride: 16 (layer4 dilated, ASPP rates 6/12/18) or 8 (layers 3 and 4 dilated, rates
            12/24/36): the backbone's feature map is ceil(H / output_stride) x ceil(W / output_stride).
        aux_head: add an auxiliary FCN head on layer3 (its loss helps training; unused in eval).
        pretrained_backbone: start the backbone from torchvision's ImageNet weights, read from
            `imagenet_weights_path(backbone)` in the torch hub cache or downloaded there.
        aspp_channels: channels of the ASPP branches and of the head (256 in the paper).

    Forward: x (N, in_channels, H, W), any H and W -> logits (N, num_classes, H, W), a plain tensor,
    always in eval mode and always when aux_head is False. Only when aux_head is True and the model
    is training, it returns the dict {"out": (N, num_classes, H, W), "aux": (N, num_classes, H, W)}.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 21, backbone: str = "resnet50",
                 output_stride: int = 16, aux_head: bool = False, pretrained_backbone: bool = False,
                 aspp_channels: int = 256):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.backbone = ResNetBackbone(backbone, in_channels, output_stride, pretrained_backbone)
        rates = tuple(rate * 16 // output_stride for rate in ASPP_RATES_OS16)
        self.head = DeepLabHead(self.backbone.out_channels, num_classes, aspp_channels, rates)
        self.aux = FCNHead(self.backbone.aux_channels, num_classes) if aux_head else None
        # torchvision's ImageNet weights were trained on inputs normalised with ImageNet's statistics.
        self.input_normalization = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)} \
            if pretrained_backbone else None
        self._init_heads()

    @property
    def encoder(self) -> nn.Module:
        """The backbone, for the encoder options of training (`--encoder-lr-scale`, ...)."""
        return self.backbone

    def _init_heads(self) -> None:
        heads = [self.head] + ([self.aux] if self.aux is not None else [])
        for module in (m for head in heads for m in head.modules()):
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        stride = self.backbone.output_stride
        if self.training and x.shape[0] == 1 and -(-size[0] // stride) * -(-size[1] // stride) == 1:
            # Checked up front: BatchNorm deep in the backbone would fail with a cryptic message.
            raise SeglabError(
                f"a batch of one {size[0]}x{size[1]} image gives a 1x1 feature map and BatchNorm cannot "
                f"train on one value per channel: use a batch of 2 or more, or images with a side longer "
                f"than {stride} pixels")
        mid, features = self.backbone(x)  # (N, 256 e, ., .), (N, 512 e, h, w)
        logits = F.interpolate(self.head(features), size=size, mode="bilinear", align_corners=False)
        if self.aux is None or not self.training:
            return logits  # (N, num_classes, H, W)
        aux = F.interpolate(self.aux(mid), size=size, mode="bilinear", align_corners=False)
        return {"out": logits, "aux": aux}
