"""Build what a run needs from its config: data split, training batches, model, loss, optimizer, schedule."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from seglab.config import RunConfig
from seglab.data.classmap import ClassMap
from seglab.data.datasets import SegmentationDataset
from seglab.data.discover import DataLayout, Pair, discover, infer_class_map, survey_masks
from seglab.data.io import image_info
from seglab.data.loaders import LoaderBatches, ResidentBatches, stack_dataset
from seglab.engine.state import free_memory
from seglab.errors import DataError, SeglabError
from seglab.losses import SegmentationLoss
from seglab.models import build_model

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
# Keep the training set on the device when it takes at most this share of free memory.
RESIDENT_FRACTION = 0.25
SCHEDULERS = ("cosine", "plateau", "poly", "none")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeglabError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise SeglabError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DataPlan:
    """Which files train, which validate, and how their masks map to classes."""

    layout: DataLayout
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    class_map: ClassMap
    channels: int
    class_counts: list[int] | None = None  # pixels per class in the surveyed masks


def split_pairs(pairs: list[Pair], percent: float, seed: int, val_files: list[str] | None = None
                ) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole images: the named stems, or `percent` of the pairs chosen by a seeded shuffle."""
    if val_files:
        wanted = set(val_files)
        val = [p for p in pairs if p.image.stem in wanted]
        missing = wanted - {p.image.stem for p in val}
        if missing:
            raise DataError(f"held-out files not found among the pairs: {', '.join(sorted(missing))}")
        return [p for p in pairs if p.image.stem not in wanted], val
    if percent <= 0:
        return list(pairs), []
    count = max(1, round(len(pairs) * percent / 100))
    if count >= len(pairs):
        raise DataError(f"--validation {percent}% of {len(pairs)} pairs leaves nothing to train on")
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = set(order[:count].tolist())
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])


def plan_data(config: RunConfig) -> DataPlan:
    data = config.data
    if not data.root:
        raise SeglabError("no data folder given: seglab train DATA_DIR")
    layout = discover(data.root)
    pairs = layout.training_pairs()
    if not pairs:
        raise DataError(f"no image/mask pairs found in '{layout.root}': run `seglab check {layout.root}`")
    if data.val_dir:
        val_layout = discover(data.val_dir)
        val_pairs = val_layout.labelled("val") or val_layout.training_pairs()
        train_pairs = pairs
    elif layout.has_named_splits and layout.labelled("val"):
        train_pairs, val_pairs = pairs, layout.labelled("val")
    else:
        train_pairs, val_pairs = split_pairs(pairs, data.validation, config.train.seed, data.val_files)
    survey = survey_masks([p.mask for p in train_pairs + val_pairs])
    class_map = infer_class_map(survey, *mask_rules(data))
    channels = data.in_channels or image_info(train_pairs[0].image)[2]
    counts = [survey.counts.get(value, 0) for value in class_map.values]
    return DataPlan(layout, train_pairs, val_pairs, class_map, channels, counts)


def mask_rules(data) -> tuple:
    """(mask_values, num_classes, class_names, ignore_value, rgb) for infer_class_map, with a
    --mask-colors table turned into packed colour values."""
    if data.mask_colors:
        from seglab.data.classmap import load_color_table

        codes, names, ignore = load_color_table(data.mask_colors)
        return codes, None, data.class_names or names, ignore, True
    return data.mask_values, data.num_classes, data.class_names, data.ignore_value, False


def make_train_batches(config: RunConfig, plan: DataPlan, device: torch.device, dist, log=print):
    """The training batches and the size the augmenter cuts them to: (ResidentBatches, crop) when the
    training set fits on the device, else (LoaderBatches, None) with the dataset cropping. `dist`
    gives rank and world_size; crop is (H, W) or None."""
    c = config
    crop = (c.data.crop[0], c.data.crop[-1]) if c.data.crop else None
    border = tuple(c.train.border_weight) if c.train.border_weight else None
    if border is not None and (len(border) != 2 or not plan.class_map.is_binary):
        raise SeglabError("--border-weight takes W0,SIGMA (e.g. 10,5) and binary masks whose class 1 is "
                          "the cells (ISBI: 255 = cell interior)")
    common = dict(class_map=plan.class_map, channels=plan.channels, scale=c.data.scale,
                  normalization=c.data.normalization, seed=c.train.seed, border_weight=border)
    dataset = SegmentationDataset(plan.train_pairs, cache=True, **common)
    first_image = dataset.load(0)[0]
    estimate = first_image[0].numel() * (first_image.shape[0] + 3) * 4 * len(dataset)
    if estimate < RESIDENT_FRACTION * free_memory(device):
        stacked = stack_dataset(dataset)
        if stacked is not None:
            images, masks = stacked[0].to(device), stacked[1].to(device)
            weights = stacked[2].to(device) if len(stacked) > 2 else None
            log(f"training set resident on {device.type}: {tuple(images.shape)}")
            return ResidentBatches(images, masks, weights, c.train.batch_size, c.train.seed,
                                   dist.rank, dist.world_size), crop
    dataset = SegmentationDataset(plan.train_pairs, crop=crop, **common)
    return LoaderBatches(dataset, c.train.batch_size, device, c.data.workers, c.train.seed,
                         dist.rank, dist.world_size), None


def model_kwargs(config: RunConfig, channels: int, num_outputs: int) -> dict:
    """Plain keyword arguments for build_model, as stored in checkpoints."""
    m = config.model
    if m.name == "unet":
        return {"in_channels": channels, "num_classes": num_outputs, "base_channels": m.base_channels,
                "depth": m.depth, "up": m.up, "padding": m.padding, "batch_norm": m.batch_norm}
    if m.name == "deeplabv3":
        return {"in_channels": channels, "num_classes": num_outputs, "backbone": m.backbone,
                "output_stride": m.output_stride, "aux_head": m.aux_head}
    return {"in_channels": channels, "num_classes": num_outputs}


def make_model(config: RunConfig, channels: int, num_outputs: int) -> tuple[nn.Module, dict]:
    kwargs = model_kwargs(config, channels, num_outputs)
    build_kwargs = dict(kwargs)
    if config.model.name == "deeplabv3" and config.model.pretrained_backbone:
        build_kwargs["pretrained_backbone"] = True  # not stored: the weights travel in the checkpoint
    return build_model(config.model.name, **build_kwargs), kwargs


def class_weights_for(config: RunConfig, plan: "DataPlan | None") -> list[float] | None:
    """--class-weights: explicit numbers, or "auto": median frequency balancing over the training
    masks (weight_k = median(freq) / freq_k; classes absent from the masks get weight 0)."""
    weights = config.train.class_weights
    if weights is None or weights == "none":
        return None
    if weights != "auto":
        return [float(w) for w in weights]
    if plan is None or plan.class_counts is None:
        raise SeglabError("--class-weights auto needs the training masks' class counts")
    counts = np.asarray(plan.class_counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1)
    median = np.median(freq[freq > 0])
    return [float(median / f) if f > 0 else 0.0 for f in freq]


def make_loss(config: RunConfig, class_map: ClassMap, plan: "DataPlan | None" = None) -> SegmentationLoss:
    name = config.train.loss
    if name == "auto":
        name = "bce+dice" if class_map.is_binary else "ce+dice"
    elif class_map.is_binary:
        name = {"ce": "bce", "ce+dice": "bce+dice"}.get(name, name)  # sigmoid CE is binary CE
    else:
        name = {"bce": "ce", "bce+dice": "ce+dice"}.get(name, name)
    return SegmentationLoss(class_map.num_outputs, name, class_weights_for(config, plan))


def make_optimizer(config: RunConfig, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer; `fused` runs Adam/AdamW/SGD as one kernel per step (CPU and CUDA), which also
    lets a GradScaler skip non-finite steps without a host synchronisation."""
    t = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=fused or None)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=fused or None)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=t.learning_rate, weight_decay=t.weight_decay, momentum=t.momentum)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.learning_rate, weight_decay=t.weight_decay, momentum=t.momentum,
                               nesterov=t.momentum > 0, fused=fused or None)
    raise SeglabError(f"unknown optimizer {t.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")


class LearningRateSchedule:
    """Warm-up then cosine or polynomial decay driven by training progress in [0, 1], or
    reduce-on-plateau driven by the monitored validation metric. Progress is max(step fraction,
    time fraction), so time-budgeted runs anneal to the end of their budget."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, monitor_mode: str = "max",
                 patience: int = 5, factor: float = 0.1, warmup: float = 0.02):
        if kind not in SCHEDULERS:
            raise SeglabError(f"unknown scheduler {kind!r}; choose one of: {', '.join(SCHEDULERS)}")
        self.optimizer = optimizer
        self.kind = kind
        self.warmup = warmup
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=monitor_mode, factor=factor, patience=patience) if kind == "plateau" else None)

    def factor(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        ramp = min(1.0, progress / self.warmup) if self.warmup > 0 and self.kind != "none" else 1.0
        if self.kind == "cosine":
            return ramp * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "poly":
            return ramp * (1 - progress) ** 0.9
        return 1.0

    def step_progress(self, progress: float) -> None:
        if self.plateau is not None:
            return
        scale = self.factor(progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale

    def step_metric(self, value: float) -> None:
        if self.plateau is not None and value is not None and math.isfinite(value):
            self.plateau.step(value)

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict() if self.plateau else None, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = list(state["base_lrs"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])

