"""seglab.models_table and seglab.fetch_weights: which architectures and encoders there are, and their weights offline.

`models_table()` is what `seglab models` prints: every registered architecture with the input-size
multiple it needs and the export formats it supports, then a curated set of encoders (or all of
SMP's) with their parameter counts (counted on the meta device: nothing is allocated or downloaded),
the pretrained weights SMP or timm know for them, and which of those are on this machine.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from seglab.models.pretrained import fetch_weights as _fetch
from seglab.models.pretrained import weights_dir_from, weights_source
from seglab.models.registry import build_model, list_models, model_spec, resolve_model_options
from seglab.models.smp import ARCHITECTURES, input_multiple

# Encoders people pick for photos, smallest first in each family; any other SMP encoder, or
# tu-NAME for any timm model, works too.
CURATED_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v2",
                    "mobileone_s0", "efficientnet-b0", "efficientnet-b3", "densenet121", "vgg16_bn", "mit_b0",
                    "mit_b2", "tu-mobilenetv3_large_100", "tu-efficientnet_b0", "tu-regnety_016",
                    "tu-convnext_tiny", "tu-vit_base_patch16_224.augreg_in21k")


@dataclass
class EncoderRow:
    name: str
    parameters: float        # millions
    stride: int              # how much it shrinks its input: the input-size multiple it needs
    weights: list[str]       # pretrained weights SMP / timm know
    present: list[str]       # ... of which are in the weights folder or the Hugging Face cache


def architecture_rows() -> list[dict]:
    """One row per registered model: name, input multiple and minimum (at its default options, SMP
    models with a CNN encoder), export formats, summary."""
    rows = []
    for name in list_models():
        spec = model_spec(name)
        if name in ARCHITECTURES:
            multiple, minimum = input_multiple(ARCHITECTURES[name], resolve_model_options(name, {}))
            refused = {"onnx": ARCHITECTURES[name].onnx_refusal, "torchscript": ARCHITECTURES[name].torchscript_refusal}
            exports = [fmt for fmt, why in refused.items() if not why]
        else:  # seglab's own models are quick to build, on the meta device: ask them
            with torch.device("meta"):
                model = build_model(name, in_channels=3, num_classes=2)
            multiple = getattr(model, "input_multiple", 1)
            minimum = max(multiple, getattr(model, "min_input_size", 1))
            exports = [fmt for fmt in ("onnx", "torchscript") if fmt not in getattr(model, "export_refusals", {})]
        rows.append({"name": name, "multiple": multiple, "minimum": minimum, "exports": exports,
                     "summary": spec.summary})
    return rows


def _count_encoder(name: str) -> tuple[float, int]:
    """(millions of parameters, output stride) of an encoder at depth 5, built without weights."""
    from segmentation_models_pytorch.encoders import get_encoder

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if name.startswith("tu-vit"):  # ViT encoders exist only inside DPT: count the timm model itself
            import timm

            with torch.device("meta"):
                model = timm.create_model(name[3:], pretrained=False, num_classes=0)
            return sum(p.numel() for p in model.parameters()) / 1e6, model.patch_embed.patch_size[0]
        try:
            with torch.device("meta"):
                encoder = get_encoder(name, in_channels=3, depth=5, weights=None)
        except RuntimeError:  # a few initialise with .item() (not on "meta"): build them for real
            encoder = get_encoder(name, in_channels=3, depth=5, weights=None)
    return sum(p.numel() for p in encoder.parameters()) / 1e6, int(encoder.output_stride)


def _known_weights(name: str) -> list[str]:
    if name.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        config = get_pretrained_cfg(name[3:])
        return ["imagenet"] if config is not None and config.hf_hub_id else []
    from segmentation_models_pytorch.encoders import encoders

    return list(encoders[name]["pretrained_settings"])


def _present(name: str, weights: str, weights_dir: Path | None) -> bool:
    """Whether the weights' files are in the weights folder (or, without one, the Hugging Face cache)."""
    files = weights_source(name, weights).files
    if weights_dir is not None:
        return all((weights_dir / f.relative).is_file() for f in files)
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(f.repo_id, f.filename, revision=f.revision), str) for f in files)


def encoder_rows(all_encoders: bool = False, weights_dir: str | Path | None = None) -> list[EncoderRow]:
    """The curated encoders (or every SMP encoder) with parameters, stride and weights."""
    from segmentation_models_pytorch.encoders import encoders

    folder = weights_dir_from(str(weights_dir) if weights_dir else None)
    names = sorted(encoders) if all_encoders else CURATED_ENCODERS
    rows = []
    for name in names:
        parameters, stride = _count_encoder(name)
        known = _known_weights(name)
        rows.append(EncoderRow(name, parameters, stride, known, [w for w in known if _present(name, w, folder)]))
    return rows


def models_table(all_encoders: bool = False, weights_dir: str | Path | None = None) -> str:
    """The text `seglab models` prints."""
    folder = weights_dir_from(str(weights_dir) if weights_dir else None)
    lines = ["architectures (seglab train --model NAME [--encoder E]); sides are mirrored up to the multiple:",
             f"  {'name':18s} {'multiple':>8s} {'minimum':>8s}  {'export':18s} summary"]
    for row in architecture_rows():
        lines.append(f"  {row['name']:18s} {row['multiple']:8d} {row['minimum']:8d}  "
                     f"{', '.join(row['exports']) or 'none':18s} {row['summary']}")
    where = f"in {folder}" if folder else "in the Hugging Face cache"
    lines += ["", f"encoders ({'all of SMP' if all_encoders else 'a curated set; --all-encoders lists all of SMP'}"
              f"'s; tu-NAME takes any timm model); * = weights {where}:",
              f"  {'encoder':38s} {'params':>8s} {'stride':>6s}  weights"]
    for row in encoder_rows(all_encoders, weights_dir):
        weights = ", ".join(w + ("*" if w in row.present else "") for w in row.weights) or "none"
        lines.append(f"  {row.name:38s} {row.parameters:7.1f}M {row.stride:6d}  {weights}")
    lines += ["", "a model's multiple is its encoder's stride (x2 for smp-dpt's patch grid); smp-pan needs 8x its "
              "stride at least; export: what `seglab export --format` accepts"]
    return "\n".join(lines)


def fetch_weights(encoders: list[str], dest: str | Path, weights: str = "imagenet", log=print) -> list[Path]:
    """Download the `weights` of each encoder into the weights folder `dest` (copy it to a machine
    without internet and pass --weights-dir), each file checked against its published hash and
    listed in dest/SHA256SUMS. Returns the files' paths."""
    return _fetch(list(encoders), Path(dest), weights, log=log)


