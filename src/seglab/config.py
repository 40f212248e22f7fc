"""Run configuration: frozen dataclasses of declared options, checked when built, loaded from YAML.

Every section checks its values when it is constructed (`options.check_fields`), so a config made
from flags, a YAML file or keywords of `seglab.train` is refused the same way, in one line. The
model section holds a model name and that model's own options, which the model registry declares.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglab.data.augment_config import AUGMENT_PRESETS, augment_config_from_dict
from seglab.data.normalization import NORMALIZATIONS
from seglab.errors import ConfigError, SeglabError
from seglab.losses.registry import ALIASES, checked_loss_options, list_losses
from seglab.models.registry import model_spec, resolve_model_options
from seglab.options import check_fields, option, refuse_unknown, shown
from seglab.version import __version__

if TYPE_CHECKING:  # numpy; the command's flags are made from these sections without importing it
    import yaml

    from seglab.data.classmap import MaskRules

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULERS = ("cosine", "plateau", "poly", "none")
MONITORS = ("val_dice", "val_miou", "val_iou", "val_loss", "val_pixel_error")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSS_TERMS = tuple(list_losses()) + tuple(ALIASES)
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
    in_channels: int | None = option(None, "image channels the model takes (default: the first image's)",
                                     min=1, max=64)
    mask_values: list[int] | None = option(None, "mask values in class order, e.g. 0,128,255", metavar="V,V,...")
    num_classes: int | None = option(None, "masks hold class indices 0..K-1", min=2, max=65536, metavar="K")
    class_names: list[str] | None = option(None, "comma-separated names, one per class", metavar="NAME,...")
    ignore_value: int | None = option(None, "mask value that counts nowhere (e.g. 11 for CamVid's void)",
                                      flags=("--ignore-index",), metavar="V")
    mask_colors: str | None = option(None, "JSON colour table for RGB colour masks", metavar="FILE.json")
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

        return MaskRules.from_options(self.mask_values, self.num_classes, self.class_names, self.ignore_value,
                                      self.mask_colors)


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
    max_time: float | None = option(None, "the time budget: stop after this many seconds of training (the "
                                    "schedule anneals to it; default: the plan's, unless --epochs is given)", above=0,
                                    metavar="SECONDS", flags=("--time-budget", "--max-time"), group="run control")
    ema: float | None = option(None, "keep an exponential moving average of the weights with this decay (e.g. "
                               "0.999): validation, best.pt and predictions use it", above=0, below=1,
                               metavar="DECAY", group="optimisation")
    eval_every: int | str = option(1, "validate every N epochs (5), or every N optimizer steps ('500 steps')",
                                   metavar="N[steps]", group="run control")
    monitor: str = option("val_dice", "what best.pt and early stopping judge", choices=MONITORS,
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
        parse_eval_every(self.eval_every)
        if isinstance(self.augment, dict):
            augment_config_from_dict(self.augment)
        elif self.augment not in AUGMENT_PRESETS:
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
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"invalid train.device (--device): {shown(self.device)}; expected cpu, cuda, cuda:N "
                              "or auto")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None

    def __post_init__(self):
        if self.out is not None and not isinstance(self.out, str):
            object.__setattr__(self, "out", str(self.out))


def parse_eval_every(value: int | str) -> tuple[int, str]:
    """--eval-every value -> (count, "epoch" | "step"): 5, "5", "5epochs" and "5 epochs" mean every
    5 epochs; "500steps" or "500 steps" every 500 optimizer steps."""
    text = str(value).strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = {"": "epoch", "e": "epoch", "epoch": "epoch", "epochs": "epoch",
            "step": "step", "steps": "step", "it": "step", "iter": "step", "iters": "step"}.get(text[len(digits):])
    if isinstance(value, bool) or not digits.isdigit() or int(digits) < 1 or unit is None:
        raise ConfigError(f"invalid train.eval_every (--eval-every): {shown(value)}; expected N epochs (5 or "
                          "'5 epochs') or N optimizer steps ('500 steps')")
    return int(digits), unit


SECTIONS = {"data": DataConfig, "train": TrainConfig}


def _model_from_dict(values: dict) -> ModelConfig:
    values = dict(values)
    name = values.pop("name", ModelConfig.name)
    if LEGACY_MODEL_KEYS <= set(values):
        # A 0.1.0 config.yaml: keep what applies to its model (the rest were other models' defaults).
        own = set(resolve_model_options(name, {}))
        values = {k: v for k, v in values.items() if k in own}
    return ModelConfig(name, values)


def config_from_dict(values: dict) -> RunConfig:
    """A RunConfig from a mapping such as config.yaml holds ({"data": {...}, "model": {...}, ...})."""
    values = dict(values or {})
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


# A config holds a few hundred values; YAML aliases can repeat a value so that a kilobyte expands to
# billions of them (the "billion laughs"), which every later step would walk.
MAX_YAML_VALUES = 100_000


def _expanded_size(root: yaml.Node, path: Path) -> int:
    """How many values the node graph `root` holds once its aliases are expanded, counted without
    expanding it (each node's count once); SeglabError past MAX_YAML_VALUES or for an alias cycle."""
    import yaml

    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        children = ([item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), MAX_YAML_VALUES + 1)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise SeglabError(f"config file '{path}' expands to more than {MAX_YAML_VALUES} values (YAML aliases "
                                  "repeating values): write the config out without nested aliases")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise SeglabError(f"config file '{path}' holds a value that contains itself (a YAML alias cycle): "
                              "write the config out without it")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _load_yaml(text: str, path: Path):
    """yaml.safe_load(text), refusing documents whose aliases expand past MAX_YAML_VALUES."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    """The mapping of a YAML config file, as written (SeglabError for unreadable files)."""
    import yaml  # here, not at the top: the command's help and --version need no YAML

    path = Path(path)
    try:
        values = _load_yaml(path.read_text(), path)
    except RecursionError:
        raise SeglabError(f"config file '{path}' nests values too deeply to read: write it flatter") from None
    except FileNotFoundError:
        raise SeglabError(f"config file '{path}' does not exist") from None
    except IsADirectoryError:
        raise SeglabError(f"config '{path}' is a folder: give a YAML file") from None
    except UnicodeDecodeError:
        raise SeglabError(f"config file '{path}' is not text: give a YAML file") from None
    except yaml.YAMLError as error:
        raise SeglabError(f"config file '{path}' is not valid YAML ({error})".replace("\n", " ")) from None
    if values is not None and not isinstance(values, dict):
        raise SeglabError(f"config file '{path}' must hold a mapping with data/model/train sections")
    return values or {}


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config file (data/model/train sections, optional out)."""
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def flatten(values: dict) -> dict[str, Any]:
    """A config mapping as dotted keys: {"train": {"epochs": 5}, "out": "x"} -> {"train.epochs": 5,
    "out": "x"}; the keys a YAML file sets, for the training plan to leave alone."""
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
