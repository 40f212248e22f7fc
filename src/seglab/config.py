"""Run configuration: frozen dataclasses, loaded from YAML and overridden by command-line flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from seglab.errors import SeglabError


@dataclass(frozen=True)
class DataConfig:
    root: str = ""
    val_dir: str | None = None           # explicit validation folder; else --validation percent
    validation: float = 10.0             # percent of whole images held out (seeded)
    val_files: list[str] | None = None   # explicit held-out image stems (the demo holds out 25-29)
    scale: float = 1.0
    crop: list[int] | None = None        # [h, w] random training crops
    in_channels: int | None = None       # None: from the images
    mask_values: list[int] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    ignore_value: int | None = None
    mask_colors: str | None = None       # JSON colour table for RGB colour masks
    normalization: str = "per_image"
    workers: int = 0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "unet"
    base_channels: int = 64
    depth: int = 4
    up: str = "transpose"
    padding: str = "same"
    batch_norm: bool = True
    backbone: str = "resnet50"           # deeplabv3
    output_stride: int = 16              # deeplabv3
    aux_head: bool = False               # deeplabv3
    pretrained_backbone: bool = False    # deeplabv3


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 4
    learning_rate: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "cosine"
    patience: int = 5                    # plateau scheduler
    monitor: str = "val_dice"
    loss: str = "auto"
    border_weight: list[float] | None = None  # [w0, sigma] of the U-Net paper's weight map
    augment: str | dict = "light"        # preset name, or {"preset": "paper", "elastic_sigma": 8, ...}
    amp: bool = False
    precision: str | None = None         # fp32 | bf16 | fp16; None: bf16/fp16 on GPUs with --amp, else fp32
    compile: bool = False                # torch.compile the model
    channels_last: bool | None = None    # None: on for CUDA
    accumulate: int = 1                  # gradient accumulation steps
    sync_bn: bool = False                # SyncBatchNorm under DDP
    save_every: int | None = None        # also write last.pt every N optimizer steps
    checkpoint_interval: float = 60.0    # write best.pt/last.pt at most every N s of wall time; 0: every row
    early_stop: int | None = None        # stop after N evaluations without improvement
    max_bad_steps: int = 20              # consecutive non-finite losses before the run stops
    class_weights: list[float] | str | None = None  # per-class CE weights, or "auto" from frequencies
    device: str = "auto"
    seed: int = 0
    max_time: float | None = None        # seconds of training; stops after the epoch that passes it
    eval_every: int | str = 1            # N epochs: 5 or "5 epochs"; N optimizer steps: "500 steps"
    load: str | None = None              # initial weights
    threshold: float = 0.5


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None


def parse_eval_every(value: int | str) -> tuple[int, str]:
    """--eval-every value -> (count, "epoch" | "step"): 5, "5", "5epochs" and "5 epochs" mean every
    5 epochs; "500steps" or "500 steps" every 500 optimizer steps."""
    text = str(value).strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = {"": "epoch", "e": "epoch", "epoch": "epoch", "epochs": "epoch",
            "step": "step", "steps": "step", "it": "step", "iter": "step", "iters": "step"}.get(text[len(digits):])
    if isinstance(value, bool) or not digits.isdigit() or int(digits) < 1 or unit is None:
        raise SeglabError(f"--eval-every {value!r} is not an interval: give N epochs (5 or '5 epochs') "
                          f"or N optimizer steps ('500 steps')")
    return int(digits), unit


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _section_from_dict(cls, values: dict, section: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SeglabError(f"unknown key(s) {', '.join(unknown)} in config section '{section}'; "
                          f"known: {', '.join(sorted(known))}")
    return cls(**values)


def config_from_dict(values: dict) -> RunConfig:
    values = dict(values or {})
    unknown = sorted(set(values) - set(SECTIONS) - {"out"})
    if unknown:
        raise SeglabError(f"unknown config section(s) {', '.join(unknown)}; known: data, model, train, out")
    sections = {name: _section_from_dict(cls, values.get(name) or {}, name) for name, cls in SECTIONS.items()}
    return RunConfig(out=values.get("out"), **sections)


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SeglabError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as error:
        raise SeglabError(f"config file '{path}' is not valid YAML ({error})".replace("\n", " ")) from None
    if values is not None and not isinstance(values, dict):
        raise SeglabError(f"config file '{path}' must hold a mapping with data/model/train sections")
    return config_from_dict(values or {})


def override(config: RunConfig, updates: dict[str, Any]) -> RunConfig:
    """Apply dotted updates {"train.epochs": 5, "out": "runs/x"}; None values are skipped."""
    sections = {name: getattr(config, name) for name in SECTIONS}
    out = config.out
    for key, value in updates.items():
        if value is None:
            continue
        if key == "out":
            out = value
            continue
        section, name = key.split(".", 1)
        sections[section] = dataclasses.replace(sections[section], **{name: value})
    return RunConfig(out=out, **sections)


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
