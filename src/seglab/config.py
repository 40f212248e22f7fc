"""Run configuration: frozen dataclasses of declared options, checked when built, loaded from YAML.

Every section checks its values when it is constructed (`options.check_fields`), so a config made
from flags, a YAML file or keywords of `seglab.train` is refused the same way, in one line. The
model section holds a model name and that model's own options, which the model registry declares.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from seglab.data.augment_config import AUGMENT_PRESETS, AugmentConfig, augment_config_from_dict, augment_preset
from seglab.data.normalization import NORMALIZATIONS
from seglab.errors import ConfigError
from seglab.losses.registry import ALIASES, checked_loss_options, list_losses
from seglab.models.registry import model_spec, resolve_model_options
from seglab.options import check_fields, option, refuse_unknown, shown
from seglab.version import __version__
from seglab.yaml_files import read_yaml

if TYPE_CHECKING:  # numpy; the command's flags are made from these sections without importing it
    from seglab.data.classmap import MaskRules

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULERS = ("cosine", "plateau", "poly", "none")
# The metrics best.pt and early stopping may judge, each with the direction that is better.
MONITORS = {"val_dice": "max", "val_miou": "max", "val_iou": "max", "val_loss": "min", "val_pixel_error": "min"}
# The options the training plan chooses when they are not given (engine.plan; a test keeps the two
# together): the command's help says "planned" for them instead of a default the plan replaces.
PLANNED = frozenset({"data.crop", "data.normalization", "model.name", "model.base_channels", "model.depth", "train.amp",
                     "train.augment", "train.batch_size", "train.channels_last", "train.class_weights", "train.epochs",
                     "train.eval_every", "train.learning_rate", "train.time_budget", "train.monitor", "train.precision",
                     "train.scheduler", "train.loss", "train.oversample", "train.val_images"})
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSS_TERMS = tuple(list_losses()) + tuple(ALIASES)
TRACKERS = ("mlflow", "wandb")  # experiment trackers besides TensorBoard (engine.tracking)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# The model section of config.yaml files written by seglab 0.1.0 listed the options of every model.
LEGACY_MODEL_KEYS = {"base_channels", "depth", "up", "padding", "batch_norm", "backbone", "output_stride",
                     "aux_head", "pretrained_backbone"}


@dataclass(frozen=True)
class DataConfig:
    root: str = option("", "data folder", cli=False)
    val_dir: str | None = option(None, "separate validation folder (images/ + masks/)", metavar="DIR")
    validation: float = option(10.0, "percent of whole images held out for validation (seeded)", min=0, below=100,
                               flags=("-v", "--validation"), metavar="PERCENT")
    val_files: list[str] | None = option(None, "image stems held out for validation, e.g. 25,26,27", metavar="STEMS")
    scale: float = option(1.0, "resize images (bilinear, antialiased) and masks (nearest) by this factor",
                          above=0, max=16, flags=("-s", "--scale"))
    crop: list[int] | None = option(None, "random training crops H[,W]", min=1, length=(1, 2), metavar="H[,W]")
    in_channels: int | None = option(None, "image channels the model takes (default: the first image's)", min=1, max=64)
    mask_values: list[int] | None = option(None, "mask values in class order, e.g. 0,128,255", metavar="V,V,...")
    num_classes: int | None = option(None, "masks hold class indices 0..K-1", min=2, max=65536, metavar="K")
    class_names: list[str] | None = option(None, "comma-separated names, one per class", metavar="NAME,...")
    ignore_index: int | None = option(None, "mask value that counts nowhere (e.g. 11 for CamVid's void)",
                                      flags=("--ignore-index",), metavar="V")
    mask_colors: str | None = option(None, "JSON colour table for RGB colour masks", metavar="FILE.json")
    label_map: str | None = option(None, "JSON table of mask value -> class value, applied before classes are "
                                   "found (e.g. Cityscapes labelId -> trainId; 255: ignored)", metavar="FILE.json")
    multilabel: bool = option(False, "overlapping labels, one sigmoid each: masks with a channel per label, or "
                              "holding label k in bit k (a mask folder per label, masks/LABEL/NAME.png, is found "
                              "without it)")
    normalization: str = option("auto", "intensity normalisation; auto: the pretrained encoder's mean and std "
                                "(ImageNet's), or the --load checkpoint's, else per_image (zero mean, unit "
                                "variance per image and channel; the default)", choices=("auto",) + NORMALIZATIONS)
    workers: int = option(0, "DataLoader worker processes (they only decode files)", min=0, max=256,
                          group="run control")
    folds: int | None = option(None, "k-fold cross-validation: train K models on K disjoint validation splits "
                               "(seeded, whole images) and write their ensemble", min=2, max=50, metavar="K",
                               group="folds")
    fold: int | None = option(None, "with --folds K: train only fold k (1..K), e.g. one per GPU or machine",
                              min=1, max=50, metavar="k", group="folds")

    def __post_init__(self):
        check_fields(self, "data")
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"invalid data.class_names (--class-names): {self.class_names}; names repeat")
        if self.fold is not None and (self.folds is None or self.fold > self.folds):
            raise ConfigError(f"invalid data.fold (--fold): {self.fold}; expected 1..K with --folds K")
        if self.folds is not None and (self.val_files or self.val_dir):
            raise ConfigError("--folds makes its own validation splits: give no --val-files or --val-dir with it")

    def mask_rules(self) -> MaskRules:
        """How masks map to classes: explicit values, a class count, or a colour table file."""
        from seglab.data.classmap import MaskRules

        return MaskRules.from_options(self.mask_values, self.num_classes, self.class_names, self.ignore_index,
                                      self.mask_colors, self.multilabel)


@dataclass(frozen=True)
class ModelConfig:
    """A registered model's name and the options given for it; `resolved()` adds the defaults."""

    name: str = "unet"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ConfigError(f"invalid model.name (--model): {shown(self.name)}; expected a registered model's "
                              "name")
        model_spec(self.name)  # unknown names fail here, with the list of registered models
        if not isinstance(self.options, dict):
            raise ConfigError(f"invalid model options {shown(self.options)}; expected a mapping of option names to "
                              "values")
        object.__setattr__(self, "options", resolve_model_options(self.name, self.options, defaults=False))

    def resolved(self) -> dict:
        """Every option of the model: the given ones, and the defaults of the rest."""
        return resolve_model_options(self.name, self.options)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(50, "passes over the training images", min=1, max=10**7, flags=("-e", "--epochs"),
                         group="optimisation")
    batch_size: int = option(4, "images per step and process", min=1, max=65536, flags=("-b", "--batch-size"),
                             group="optimisation")
    learning_rate: float = option(1e-3, "peak learning rate", above=0, flags=("-l", "--learning-rate"),
                                  metavar="LR", group="optimisation")
    optimizer: str = option("adamw", "optimizer", choices=OPTIMIZERS, group="optimisation")
    weight_decay: float = option(1e-4, "weight decay", min=0, max=1, group="optimisation")
    momentum: float = option(0.9, "momentum of sgd and rmsprop", min=0, below=1, group="optimisation")
    scheduler: str = option("cosine", "learning-rate schedule (after a 2% warm-up)", choices=SCHEDULERS,
                            group="optimisation")
    patience: int = option(5, "plateau schedule: evaluations without improvement before the rate drops",
                           min=0, max=10**6, group="optimisation")
    loss: str = option("auto", "loss: auto (bce+dice for binary masks, ce+dice for more classes) or loss terms "
                       "joined by + (e.g. focal+lovasz) from: " + ", ".join(LOSS_TERMS), metavar="TERM[+TERM...]",
                       group="optimisation")
    loss_options: dict = option({}, "options of the loss terms, e.g. gamma=2 (focal, focal-tversky), alpha=0.3,"
                                "beta=0.7 (tversky, focal-tversky)", metavar="NAME=VALUE,...", group="optimisation")
    oversample: float = option(0.0, "share of training crops centred on a pixel of a rare class (those under 2% of "
                               "the training pixels, else the rarest class); needs --crop", min=0, max=1,
                               metavar="P", group="optimisation")
    border_weight: list[float] | None = option(None, "U-Net paper border weight map, e.g. 10,5 (binary masks, "
                                               "class 1 = cells)", min=0, length=(2,), metavar="W0,SIGMA",
                                               group="optimisation")
    class_weights: list[float] | str | None = option(None, "per-class loss weights, or 'auto' (median frequency)",
                                                     metavar="auto|W,W,...", group="optimisation")
    augment: str | dict = option("light", "augmentation preset (a YAML mapping may change its settings)",
                                 metavar="|".join(AUGMENT_PRESETS), group="optimisation")
    threshold: float = option(0.5, "probability threshold of binary models (validation and predictions)",
                              min=0, max=1, group="optimisation")
    encoder_lr_scale: float = option(1.0, "the encoder's learning rate is --learning-rate times this (0.1 for a "
                                     "pretrained encoder; models with an encoder: smp-*, deeplabv3)", above=0, max=100,
                                     metavar="F", group="optimisation")
    freeze_encoder_epochs: int = option(0, "keep the encoder's weights and BatchNorm statistics fixed for the first "
                                        "N epochs (the decoder learns on pretrained features)", min=0, max=10**7,
                                        metavar="N", group="optimisation")
    encoder_bn_eval: bool = option(False, "keep the encoder's BatchNorm layers in eval mode, on their pretrained "
                                   "statistics (for tiny batches)", group="optimisation")
    device: str = option("auto", "cpu, cuda, cuda:N or auto", group="run control")
    seed: int = option(0, "random seed (split, crops, augmentation, weights)", min=0, max=2**32 - 1,
                       group="run control")
    time_budget: float | None = option(None, "stop after this many seconds of training (the schedule anneals to "
                                       "it; default: the plan's, unless --epochs is given)", above=0,
                                       metavar="SECONDS", group="run control")
    ema: float | None = option(None, "keep an exponential moving average of the weights with this decay (e.g. "
                               "0.999): validation, best.pt and predictions use it", above=0, below=1,
                               metavar="DECAY", group="optimisation")
    eval_every: int | str = option(1, "validate every N epochs (5), or every N optimizer steps ('500 steps')",
                                   metavar="N[steps]", group="run control")
    val_images: int | None = option(None, "held-out images scored at each evaluation, the same evenly spread ones "
                                    "(unset: all, or a planned share of a large hold-out)", min=1, metavar="N",
                                    group="run control")
    monitor: str = option("val_dice", "what best.pt and early stopping judge", choices=tuple(MONITORS),
                          group="run control")
    early_stop: int | None = option(None, "stop after N evaluations without improvement of --monitor", min=1,
                                    metavar="N", group="run control")
    save_every: int | None = option(None, "also write last.pt every N optimizer steps", min=1, metavar="N",
                                    group="run control")
    checkpoint_interval: float = option(60.0, "write best.pt/last.pt at most every SECONDS (0: at every "
                                        "metrics row)", min=0, metavar="SECONDS", group="run control")
    max_bad_steps: int = option(20, "non-finite losses in a row that stop the run", min=1, max=10**6,
                                group="run control")
    load: str | None = option(None, "initial weights from a seglab checkpoint", flags=("-f", "--load"),
                              metavar="CKPT", group="run control")
    track: list[str] | None = option(None, "also log params, every metrics row and best.pt, report.html, plan.json "
                                     "to: mlflow (to the server MLFLOW_TRACKING_URI names), wandb (WANDB_MODE="
                                     "offline works offline); TensorBoard event files are always written",
                                     metavar="mlflow,wandb", group="run control")
    amp: bool = option(False, "mixed precision on GPUs (bf16 where supported, else fp16); what 'auto' does",
                       group="speed")
    precision: str | None = option("auto", "autocast precision; auto: bf16 on GPUs that have it (else fp16) and on "
                                   "CPUs that compute bf16 natively (AVX512_BF16, AMX), fp32 elsewhere",
                                   choices=PRECISIONS, group="speed")
    compile: bool = option(False, "torch.compile the training step (compile time is logged apart from training "
                           "time; off by default: it measured no faster than eager bf16 on a 2-core CPU)",
                           group="speed")
    channels_last: bool | None = option(None, "channels-last memory layout (default: the plan's measurement, else "
                                        "on for GPUs and CPU bf16)", group="speed")
    accumulate: int = option(1, "gradient accumulation steps (no all-reduce on the inner ones)", min=1,
                             max=10**4, group="distributed")
    sync_bn: bool = option(False, "SyncBatchNorm across DDP processes", group="distributed")

    def __post_init__(self):
        check_fields(self, "train")
        # Parsed here, at the boundary, and kept typed (not fields: config.yaml keeps what was written).
        object.__setattr__(self, "_evaluation", parse_eval_every(self.eval_every))
        if isinstance(self.augment, dict):
            object.__setattr__(self, "_augment_config", augment_config_from_dict(self.augment))
        elif self.augment in AUGMENT_PRESETS:
            object.__setattr__(self, "_augment_config", augment_preset(self.augment))
        else:
            raise ConfigError(f"invalid train.augment (--augment): {shown(self.augment)}; expected one of: "
                              f"{', '.join(AUGMENT_PRESETS)}")
        # unknown terms and options: one line each; values kept as their declared types
        object.__setattr__(self, "loss_options", checked_loss_options(self.loss, self.loss_options))
        if isinstance(self.class_weights, str) and self.class_weights not in ("auto", "none"):
            raise ConfigError(f"invalid train.class_weights (--class-weights): {shown(self.class_weights)}; "
                              "expected 'auto', 'none' or numbers, one per class")
        if isinstance(self.class_weights, list) and any(not w >= 0 for w in self.class_weights):
            raise ConfigError(f"invalid train.class_weights (--class-weights): {self.class_weights}; weights "
                              "must be >= 0")
        unknown = [name for name in self.track or () if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"invalid train.track (--track): {shown(unknown[0])}; expected one or more of: "
                              f"{', '.join(TRACKERS)}")
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"invalid train.device (--device): {shown(self.device)}; expected cpu, cuda, cuda:N "
                              "or auto")

    @property
    def evaluation(self) -> EvalPeriod:
        """eval_every as (count, unit)."""
        return self._evaluation

    @property
    def augment_config(self) -> AugmentConfig:
        """augment (a preset's name or a mapping) as the AugmentConfig it names."""
        return self._augment_config


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None

    def __post_init__(self):
        if self.out is not None and not isinstance(self.out, str):
            object.__setattr__(self, "out", str(self.out))

    def __repr__(self) -> str:
        """The options that differ from the defaults, a line per section (config_to_dict has them all)."""
        lines = [f"RunConfig(data {self.data.root!r}, model {self.model.name} {self.model.options or ''}".rstrip()]
        for name, section in (("data", self.data), ("train", self.train)):
            changed = [f"{f.name}={getattr(section, f.name)!r}" for f in fields(section)
                       if f.name != "root" and getattr(section, f.name) != _default(f)]
            if changed:
                lines.append(f"  {name}: {', '.join(changed)}")
        if self.out:
            lines.append(f"  out: {self.out!r}")
        return "\n".join(lines) + ")"


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def monitor_mode(metric: str) -> str:
    """"max" or "min": which way `metric` (one of MONITORS) gets better."""
    try:
        return MONITORS[metric]
    except KeyError:
        raise ConfigError(f"cannot monitor {metric!r}: choose one of {', '.join(MONITORS)}") from None


class EvalPeriod(NamedTuple):
    """How often a run validates: every `count` epochs or optimizer steps (`unit`)."""

    count: int
    unit: str  # "epoch" | "step"


def parse_eval_every(value: int | str) -> EvalPeriod:
    """--eval-every value -> (count, "epoch" | "step"): 5, "5", "5epochs" and "5 epochs" mean every
    5 epochs; "500steps" or "500 steps" every 500 optimizer steps."""
    text = str(value).strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = {"": "epoch", "e": "epoch", "epoch": "epoch", "epochs": "epoch",
            "step": "step", "steps": "step", "it": "step", "iter": "step", "iters": "step"}.get(text[len(digits):])
    if isinstance(value, bool) or not digits.isdigit() or int(digits) < 1 or unit is None:
        raise ConfigError(f"invalid train.eval_every (--eval-every): {shown(value)}; expected N epochs (5 or "
                          "'5 epochs') or N optimizer steps ('500 steps')")
    return EvalPeriod(int(digits), unit)


SECTIONS = {"data": DataConfig, "train": TrainConfig}


def _model_from_dict(values: dict) -> ModelConfig:
    values = dict(values)
    name = values.pop("name", ModelConfig.name)
    if LEGACY_MODEL_KEYS <= set(values):
        # A 0.1.0 config.yaml: keep what applies to its model (the rest were other models' defaults).
        own = set(resolve_model_options(name, {}))
        values = {k: v for k, v in values.items() if k in own}
    return ModelConfig(name, values)


# Options renamed so that each has one name in flags, YAML and keywords: {section: {old: new}}. Files
# that use an old name keep loading, with a one-line note.
RENAMED_OPTIONS = {"data": {"ignore_value": "ignore_index"}, "train": {"max_time": "time_budget"}}


def renamed_options(values: dict) -> dict:
    """A config mapping with the old names of RENAMED_OPTIONS replaced (a note for each one found)."""
    values = dict(values or {})
    for section, renames in RENAMED_OPTIONS.items():
        given = values.get(section)
        if isinstance(given, dict) and set(given) & set(renames):
            for old in sorted(set(given) & set(renames)):
                logging.getLogger("seglab").warning(f"note: {section}.{old} is now called {section}."
                                                    f"{renames[old]}; the value is read as that")
            values[section] = {renames.get(key, key): value for key, value in given.items()}
    return values


def config_from_dict(values: dict) -> RunConfig:
    """A RunConfig from a mapping such as config.yaml holds ({"data": {...}, "model": {...}, ...})."""
    values = renamed_options(values)
    values.pop("seglab_version", None)
    refuse_unknown(values, list(SECTIONS) + ["model", "out"], "the config (sections)")
    sections = {}
    for name, cls in SECTIONS.items():
        section = values.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"config section '{name}' must be a mapping of option names to values")
        refuse_unknown(section, [f.name for f in fields(cls)], f"config section '{name}'")
        sections[name] = cls(**section)
    model = values.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("config section 'model' must be a mapping: name and the model's options")
    return RunConfig(out=values.get("out"), model=_model_from_dict(model), **sections)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config file (data/model/train sections, optional out)."""
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def flatten(values: dict) -> dict[str, Any]:
    """A config mapping as dotted keys: {"train": {"epochs": 5}, "out": "x"} -> {"train.epochs": 5,
    "out": "x"}; the keys a YAML file sets, for the training plan to leave alone."""
    values = renamed_options(values)
    flat = {f"{section}.{name}": value for section in ("data", "model", "train")
            for name, value in (values.get(section) or {}).items()}
    if values.get("out") is not None:
        flat["out"] = values["out"]
    return flat


def override(config: RunConfig, updates: dict[str, Any]) -> RunConfig:
    """Apply dotted updates {"train.epochs": 5, "model.name": "deeplabv3", "out": "runs/x"}; None
    values are skipped. A new model name starts from that model's defaults."""
    sections = {name: getattr(config, name) for name in SECTIONS}
    model_name, model_options = config.model.name, dict(config.model.options)
    if updates.get("model.name") not in (None, model_name):
        model_name, model_options = updates["model.name"], {}
    out = config.out
    for key, value in updates.items():
        if value is None or key == "model.name":
            continue
        if key == "out":
            out = str(value)
            continue
        section, _, name = key.partition(".")
        if section == "model":
            model_options[name] = value
            continue
        if section not in sections:
            raise ConfigError(f"unknown config section {shown(section)} in {shown(key)}; known: data, model, train")
        refuse_unknown([name], [f.name for f in fields(sections[section])], f"config section '{section}'")
        sections[section] = dataclasses.replace(sections[section], **{name: value})
    return RunConfig(out=out, model=ModelConfig(model_name, model_options), **sections)


def config_to_dict(config: RunConfig) -> dict:
    """Plain values, as config.yaml holds them: the seglab version, and only the chosen model's options."""
    return {"seglab_version": __version__, "data": dataclasses.asdict(config.data),
            "model": {"name": config.model.name, **config.model.resolved()},
            "train": dataclasses.asdict(config.train), "out": config.out}


def dump_config(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
