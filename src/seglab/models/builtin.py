"""The built-in models registered by name with their options: unet and deeplabv3.

Registering costs no torch: the builders are "package.module:Class" strings that the registry
imports on the first build, so the command's flags and help (which list every model's options)
and `seglab check` start without importing torch. The networks live in `unet.py` and `deeplabv3.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

from seglab.models.registry import ModelSpec, register
from seglab.options import option

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclass(frozen=True)
class UNetOptions:
    base_channels: int = option(64, "channels of the first level (the paper: 64), doubled at each pooling",
                                min=1, max=1024)
    depth: int = option(4, "2x2 poolings in the contracting path (the paper: 4)", min=1, max=8)
    up: str = option("transpose", "upsampling: the paper's 2x2 up-convolution, or bilinear + 1x1 conv",
                     choices=("transpose", "bilinear"))
    padding: str = option("same", "same: outputs have the input's size; valid: the paper's unpadded "
                          "convolutions", choices=("same", "valid"))
    batch_norm: bool = option(True, "BatchNorm after each convolution (not in the paper)")


@dataclass(frozen=True)
class DeepLabV3Options:
    backbone: str = option("resnet50", "dilated torchvision ResNet", choices=BACKBONES)
    output_stride: int = option(16, "input size / feature size: 16 (ASPP rates 6/12/18) or 8 (12/24/36)",
                                choices=(8, 16))
    aux_head: bool = option(False, "auxiliary FCN head on layer3 (adds half its loss in training)")
    pretrained_backbone: bool = option(False, "start the backbone from torchvision's ImageNet weights (from the "
                                       "torch hub cache, or downloaded there)", stored=False)
    aspp_channels: int = option(256, "channels of the ASPP branches and of the head (the paper: 256)", min=8,
                                max=2048)


register(ModelSpec("unet", "seglab.models.unet:UNet", UNetOptions,
                   "the U-Net of Ronneberger et al. 2015, padded or unpadded"))
register(ModelSpec("deeplabv3", "seglab.models.deeplabv3:DeepLabV3", DeepLabV3Options,
                   "DeepLabV3: dilated ResNet with ASPP (Chen et al. 2017)"))
