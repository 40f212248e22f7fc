"""Pretrained encoder weights, offline first: which files an encoder's weights are, where they are found, how they load.

SMP 0.6 keeps the weights of its own encoders on the Hugging Face Hub, in `smp-hub/ENCODER.WEIGHTS`
at a pinned commit (`model.safetensors`, and `config.json` with the input normalisation); timm's
(`tu-` encoders) are in `timm/MODEL.TAG` (`model.safetensors`), their normalisation in timm's code.
seglab looks for those files, in this order, in the weights folder (`weights_dir`, else
$SEGLAB_WEIGHTS_DIR; see `weight_files` for its layout) and then in the Hugging Face cache,
downloading into it when the Hub can be reached. A file that is nowhere stops the build with one
line naming the file to fetch and the folder to put it in; seglab never lets a library retry a
download on a machine without a network.

Weights load into a model built without any (no download happens inside SMP or timm). A first
convolution trained on RGB is adapted to the input's channels as SMP and timm do it: one channel
takes the sum of the three filters (a gray image then gives the activations of its RGB copy),
other counts cycle the R, G, B filters and scale them by 3 / channels.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from seglab.errors import ConfigError, SeglabError
from seglab.models.smp_architecture import WEIGHTS_DIR_VARIABLE
from seglab.models.weight_files import (
    HubFile,
    download_checked,
    from_hf_cache,
    hf_cache_dir,
    read_manifest,
    verified_in_folder,
    write_manifest,
)

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


@dataclass(frozen=True)
class WeightsSource:
    """The files holding one encoder's pretrained weights."""

    encoder: str                        # as seglab names it: resnet34, tu-convnext_tiny
    weights: str                        # imagenet, ssl, ... (tu- encoders: the timm tag)
    files: tuple[HubFile, ...]          # the weights first; for SMP encoders then config.json
    mean: tuple[float, ...] | None = None   # timm's normalisation (SMP's is in config.json)
    std: tuple[float, ...] | None = None

    @property
    def is_timm(self) -> bool:
        return self.encoder.startswith("tu-")


def weights_dir_from(option: str | None) -> Path | None:
    """The weights folder: the option, else $SEGLAB_WEIGHTS_DIR, else None (the Hugging Face cache)."""
    folder = option or os.environ.get(WEIGHTS_DIR_VARIABLE) or None
    return Path(folder).expanduser() if folder else None


def weights_source(encoder: str, weights: str = "imagenet") -> WeightsSource:
    """Where the `weights` of `encoder` live (imports segmentation_models_pytorch or timm)."""
    if encoder.startswith("tu-"):
        return _timm_source(encoder, weights)
    from segmentation_models_pytorch.encoders import encoders

    if encoder not in encoders:
        raise ConfigError(f"unknown encoder {encoder!r}: `seglab models --all-encoders` lists SMP's encoders; "
                          "tu-NAME takes any timm model")
    settings = encoders[encoder]["pretrained_settings"]
    if weights not in settings:
        known = ", ".join(settings) or "none"
        raise ConfigError(f"encoder {encoder} has no {weights!r} weights; SMP has: {known}")
    repo, revision = settings[weights]["repo_id"], settings[weights]["revision"]
    files = (HubFile(repo, WEIGHTS_FILE, revision), HubFile(repo, CONFIG_FILE, revision))
    return WeightsSource(encoder, weights, files)


def _timm_source(encoder: str, weights: str) -> WeightsSource:
    from timm.models import get_pretrained_cfg

    name = encoder[3:]
    if weights != "imagenet":
        raise ConfigError(f"for timm encoders the weights are named in the encoder (tu-MODEL.TAG, e.g. "
                          f"tu-resnet18.a1_in1k): pass --encoder-weights imagenet with {encoder}, not {weights!r}")
    config = get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        raise ConfigError(f"timm has no pretrained weights on the Hugging Face Hub for {name!r}; pick a tagged "
                          "model that has (timm.list_pretrained()), or train it from scratch")
    filename = config.hf_hub_filename or WEIGHTS_FILE
    return WeightsSource(encoder, config.tag or "default", (HubFile(config.hf_hub_id, filename),),
                         tuple(config.mean), tuple(config.std))


def locate(source: WeightsSource, weights_dir: Path | None) -> list[Path]:
    """Local paths of the source's files: from the weights folder when there is one, else from the
    Hugging Face cache (downloading into it when the Hub can be reached). Raises SeglabError with
    the one line a user needs when a file is nowhere."""
    fetch = f"seglab weights fetch {source.encoder}" + ("" if source.weights in ("imagenet", "default") or
                                                        source.is_timm else f" --weights {source.weights}")
    paths = []
    for file in source.files:
        if weights_dir is not None:
            path = verified_in_folder(weights_dir, file)
            if path is None:
                raise SeglabError(
                    f"the {source.weights} weights of encoder {source.encoder} are not in the weights folder: "
                    f"'{weights_dir / file.relative}' is missing; fetch it with `{fetch} --dest {weights_dir}` on a "
                    f"machine with internet (or download {file.url()} to that path)")
        else:
            path, unreachable = from_hf_cache(file)
            if path is None:
                raise SeglabError(
                    f"the {source.weights} weights of encoder {source.encoder} are not in the Hugging Face cache "
                    f"({hf_cache_dir()}) and cannot be downloaded ({unreachable}): on a machine with internet "
                    f"run `{fetch} --dest DIR`, copy DIR here and pass --weights-dir DIR (or set "
                    f"{WEIGHTS_DIR_VARIABLE}=DIR); it fetches {file.url()} into DIR/{file.relative}")
        paths.append(path)
    return paths


def fetch_weights(encoders: list[str], dest: str | Path, weights: str = "imagenet", log=print) -> list[Path]:
    """Download each encoder's weight files into the weights folder `dest`, each checked against its
    published hash, and record them in dest/SHA256SUMS. Files already there with a matching
    SHA256SUMS entry are kept. Returns the paths."""
    dest = Path(dest)
    sources = [weights_source(encoder, weights) for encoder in encoders]  # every name checked before a download
    written = []
    for source in sources:
        for file in source.files:
            manifest = read_manifest(dest)
            path = dest / file.relative
            if file.relative in manifest and verified_in_folder(dest, file) is not None:
                log(f"{path}: already there (SHA-256 checked)")
            else:
                path, digest = download_checked(file, dest)
                manifest[file.relative] = digest
                write_manifest(dest, manifest)
                log(f"{path}: {path.stat().st_size / 1e6:.1f} MB, SHA-256 {digest[:16]}... checked")
            written.append(path)
    return written


# ---- loading ---------------------------------------------------------------------------------------
def adapt_first_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB filter bank (O, 3, k, k) for `channels` inputs: the sum of its filters for one channel,
    else the filters cycled (R, G, B, R, ...) and scaled by 3 / channels. (O, channels, k, k)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    cycled = weight[:, [i % weight.shape[1] for i in range(channels)]]
    return cycled * (weight.shape[1] / channels)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file (or a torch.save file, read with weights_only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - safetensors and pickle raise their own kinds
        raise SeglabError(f"'{path}' is not a readable weights file ({' '.join(str(error).split())[:120]}): "
                          "delete it and fetch it again") from None


def load_encoder_weights(encoder: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Load `state` into `encoder` strictly, adapting a first convolution whose input channels differ."""
    own = encoder.state_dict()
    adapted = {}
    for key, tensor in state.items():
        target = own.get(key)
        if (target is not None and tensor.ndim == 4 and target.shape != tensor.shape
                and target.shape[0] == tensor.shape[0] and target.shape[2:] == tensor.shape[2:]):
            tensor = adapt_first_conv(tensor, target.shape[1])  # (O, C, k, k)
        adapted[key] = tensor
    try:
        encoder.load_state_dict(adapted)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:200]
        raise SeglabError(f"'{path}' does not hold the weights of encoder {name} ({first}): delete it and fetch "
                          "it again") from None


def normalization_of(config_path: Path) -> tuple[list[float], list[float]]:
    """(mean, std) per RGB channel, in units of pixels / max, from an SMP weights config.json."""
    try:
        config = json.loads(config_path.read_text())
        mean, std = [float(v) for v in config["mean"]], [float(v) for v in config["std"]]
        top = float(list(config.get("input_range", [0, 1]))[-1])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SeglabError(f"'{config_path}' is not an SMP weights config.json with mean and std ({error}): delete "
                          "it and fetch it again") from None
    if str(config.get("input_space", "RGB")).upper() != "RGB":
        raise SeglabError(f"'{config_path}': these weights expect {config['input_space']} input, which seglab "
                          "does not feed; choose other weights")
    return [m / top for m in mean], [s / top for s in std]  # weights trained on 0..255 pixels: rescale
