"""segmentation_models_pytorch's architectures in seglab's registry: smp-unet, smp-fpn, ... over its encoders.

Registering costs nothing: segmentation_models_pytorch and timm, which take seconds to import, are
imported by the builder (`seglab.models.smp_network`) when a model is built, so `import seglab`,
`seglab --help` and commands that build no SMP model never load them.

    seglab train DATA --model smp-unet --encoder resnet34 --encoder-weights imagenet
    seglab.train(DATA, model="smp-fpn", encoder="efficientnet-b0", encoder_weights="imagenet")
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from seglab.models.registry import ModelSpec, register
from seglab.models.smp_architecture import WEIGHTS_DIR_VARIABLE, Architecture
from seglab.options import option


@dataclass(frozen=True)
class EncoderOptions:
    """Options every SMP architecture takes: which encoder, and where its pretrained weights come from."""

    encoder: str = option("resnet34", "the encoder: an SMP encoder (resnet34, efficientnet-b0, mit_b0, ...) or "
                          "tu-NAME for a timm model; `seglab models` lists a curated set (default: resnet34; "
                          "smp-dpt: tu-vit_base_patch16_224.augreg_in21k)", metavar="NAME")
    encoder_weights: str | None = option(None, "start the encoder from pretrained weights: imagenet (or ssl, "
                                         "swsl, ... where SMP has them); none: random (default: none)",
                                         stored=False, metavar="NAME")
    weights_dir: str | None = option(None, "folder of encoder weights written by `seglab weights fetch` (default: "
                                     f"${WEIGHTS_DIR_VARIABLE}, else the Hugging Face cache, downloading there)",
                                     stored=False, metavar="DIR")

    def __post_init__(self):
        # "--encoder-weights none" arrives as the word; it means no pretrained weights.
        if isinstance(self.encoder_weights, str) and self.encoder_weights.strip().lower() in ("", "none", "null"):
            object.__setattr__(self, "encoder_weights", None)


@dataclass(frozen=True)
class SMPOptions(EncoderOptions):
    encoder_depth: int = option(5, "encoder stages the decoder uses, each halving the size (3-5; default: 5, "
                                "smp-pspnet 3)", min=3, max=5)


@dataclass(frozen=True)
class PSPNetOptions(SMPOptions):
    encoder_depth: int = option(3, "encoder stages the decoder uses, each halving the size (3-5; default: 5, "
                                "smp-pspnet 3)", min=3, max=5)


# One help text for the three architectures whose encoder dilates instead of striding.
OUTPUT_STRIDE_HELP = ("input size / encoder feature size: the last stages dilate instead of striding "
                      "(default: smp-deeplabv3 8, smp-deeplabv3plus and smp-pan 16)")


@dataclass(frozen=True)
class DeepLabV3Options(SMPOptions):
    output_stride: int = option(8, OUTPUT_STRIDE_HELP, choices=(8, 16))


@dataclass(frozen=True)
class DeepLabV3PlusOptions(SMPOptions):
    output_stride: int = option(16, OUTPUT_STRIDE_HELP, choices=(8, 16))


@dataclass(frozen=True)
class PANOptions(SMPOptions):
    output_stride: int = option(16, OUTPUT_STRIDE_HELP, choices=(16, 32))


@dataclass(frozen=True)
class DPTOptions(EncoderOptions):
    encoder: str = option("tu-vit_base_patch16_224.augreg_in21k", "the encoder: an SMP encoder (resnet34, "
                          "efficientnet-b0, mit_b0, ...) or tu-NAME for a timm model; `seglab models` lists a "
                          "curated set (default: resnet34; smp-dpt: tu-vit_base_patch16_224.augreg_in21k)",
                          metavar="NAME")


_PYRAMID_POOLING = ("its pyramid pooling averages the features into 1, 2, 3 and 6 bins of a size known only "
                    "when it runs, which ONNX's pooling operators cannot express (torch.onnx: 'input size not "
                    "accessible'); export --format torchscript instead")
_VIT_GRID = ("its ViT encoder resamples the position embeddings to the input's patch grid with sizes frozen "
             "when the graph is traced, so an exported graph would only run at one input size")

ARCHITECTURES = {a.name: a for a in (
    Architecture("smp-unet", "Unet", "U-Net decoder over an SMP/timm encoder (Ronneberger et al. 2015)",
                 SMPOptions, "tu-test_resnet"),
    Architecture("smp-unetplusplus", "UnetPlusPlus", "UNet++: nested, dense skip pathways (Zhou et al. 2018)",
                 SMPOptions, "tu-test_resnet"),
    Architecture("smp-manet", "MAnet", "MA-Net: position-wise and multi-scale attention (Fan et al. 2020)",
                 SMPOptions, "tu-test_resnet"),
    Architecture("smp-linknet", "Linknet", "LinkNet: a light decoder that adds encoder features "
                 "(Chaurasia and Culurciello 2017)", SMPOptions, "tu-test_resnet"),
    Architecture("smp-fpn", "FPN", "Feature Pyramid Network decoder (Kirillov et al. 2019)", SMPOptions,
                 "tu-test_resnet"),
    Architecture("smp-pspnet", "PSPNet", "PSPNet: pyramid pooling over the encoder's features (Zhao et al. 2017)",
                 PSPNetOptions, "tu-test_resnet", onnx_refusal=_PYRAMID_POOLING),
    # PAN's feature pyramid attention max-pools the deepest features three times.
    Architecture("smp-pan", "PAN", "Pyramid Attention Network (Li et al. 2018)", PANOptions, "tu-test_resnet",
                 feature_minimum=8),
    Architecture("smp-deeplabv3", "DeepLabV3", "DeepLabV3: ASPP over a dilated SMP/timm encoder (Chen et al. 2017)",
                 DeepLabV3Options, "tu-test_resnet"),
    Architecture("smp-deeplabv3plus", "DeepLabV3Plus", "DeepLabV3+: ASPP and a low-level decoder (Chen et al. 2018)",
                 DeepLabV3PlusOptions, "tu-test_resnet"),
    Architecture("smp-upernet", "UPerNet", "UPerNet: pyramid pooling and FPN fusion (Xiao et al. 2018)",
                 SMPOptions, "tu-test_resnet", onnx_refusal=_PYRAMID_POOLING),
    Architecture("smp-segformer", "Segformer", "SegFormer's all-MLP decoder (Xie et al. 2021); its own encoders "
                 "are mit_b0..mit_b5", SMPOptions, "tu-test_resnet"),
    # DPT's reassembly halves the patch grid with a strided convolution and fuses it back: an even grid.
    Architecture("smp-dpt", "DPT", "DPT: dense prediction transformer over a ViT encoder (Ranftl et al. 2021)",
                 DPTOptions, "tu-test_vit", onnx_refusal=_VIT_GRID, torchscript_refusal=_VIT_GRID,
                 feature_multiple=2),
)}


def input_multiple(architecture: Architecture, options: dict) -> tuple[int, int]:
    """(multiple, minimum) of the sides `architecture` takes with `options` and a CNN encoder (a ViT
    with 16-pixel patches for smp-dpt), as the built model's `input_multiple`, `min_input_size`:
    the encoder shrinks its input by min(output stride, 2 ** depth)."""
    if architecture.name == "smp-dpt":
        stride = 16
    else:
        stride = min(options.get("output_stride", 32), 2 ** options.get("encoder_depth", 5))
    multiple = stride * architecture.feature_multiple
    return multiple, max(multiple, stride * architecture.feature_minimum)


def _build(architecture: str, **kwargs):
    """Build `architecture` (imports segmentation_models_pytorch, on the first build only)."""
    from seglab.models.smp_network import build_smp_model

    return build_smp_model(ARCHITECTURES[architecture], **kwargs)


for _architecture in ARCHITECTURES.values():
    register(ModelSpec(_architecture.name, functools.partial(_build, _architecture.name), _architecture.options,
                       _architecture.summary))
