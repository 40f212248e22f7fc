"""Build what a run trains with from its config: training batches, model, loss and optimizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from seglab.config import OPTIMIZERS, RunConfig
from seglab.data.classmap import ClassMap
from seglab.data.datasets import SegmentationDataset
from seglab.data.loaders import LoaderBatches, ResidentBatches, stack_dataset
from seglab.data.normalization import Normalization, check_normalization, fixed_normalization
from seglab.data.oversampling import RARE_SHARE, RareLocations
from seglab.engine.recipe import Recipe
from seglab.errors import SeglabError
from seglab.losses.segmentation import SegmentationLoss
from seglab.models import build_model, model_spec
from seglab.runtime.checkpoint import load_checkpoint
from seglab.runtime.device import free_memory

# Keep the training set on the device when it takes at most this share of free memory.
RESIDENT_FRACTION = 0.25


def make_train_batches(recipe: Recipe, device: torch.device, dist, log=print,
                       normalization: Normalization = "per_image", full_batches: bool = False):
    """The training batches and the size the augmenter cuts them to: (ResidentBatches, crop) when the
    training set fits on the device, else (LoaderBatches, None) with the dataset cropping. `dist`
    gives rank and world_size; crop is (H, W) or None; `normalization` is the run's resolved one
    (`input_normalization`); `full_batches` drops resident epochs' short last batch (a compiled
    model then meets one shape). The pixels the recipe's preparation decoded are used, not read again."""
    c = recipe.config
    crop = (c.data.crop[0], c.data.crop[-1]) if c.data.crop else None
    border = tuple(c.train.border_weight) if c.train.border_weight else None
    if border is not None and (len(border) != 2 or not recipe.class_map.is_binary):
        raise SeglabError("--border-weight takes W0,SIGMA (e.g. 10,5) and binary masks whose class 1 is "
                          "the cells (ISBI: 255 = cell interior)")
    if c.train.oversample and crop is None:
        raise SeglabError(f"--oversample {c.train.oversample:g} centres training crops on rare classes: give "
                          "--crop H[,W] too (e.g. --crop 256)")
    common = dict(class_map=recipe.class_map, channels=recipe.channels, scale=c.data.scale,
                  normalization=normalization, seed=c.train.seed, border_weight=border)
    dataset = SegmentationDataset(recipe.train_pairs, cache=True, files=recipe.files, **common)
    first_image = dataset.load(0)[0]
    estimate = first_image[0].numel() * (first_image.shape[0] + 3) * 4 * len(dataset)
    if estimate < RESIDENT_FRACTION * free_memory(device):
        stacked = stack_dataset(dataset)
        if stacked is not None:
            rare = rare_locations(c, recipe.class_map, stacked[1], log)
            images, masks = stacked[0].to(device), stacked[1].to(device)
            weights = stacked[2].to(device) if len(stacked) > 2 else None
            log(f"training set resident on {device.type}: {tuple(images.shape)}")
            return ResidentBatches(images, masks, weights, c.train.batch_size, c.train.seed,
                                   dist.rank, dist.world_size, full_batches=full_batches, rare=rare,
                                   oversample=c.train.oversample), crop
    dataset = SegmentationDataset(recipe.train_pairs, crop=crop, **common)
    masks = (dataset.load(i)[1] for i in range(len(dataset)))  # read once here, not kept
    dataset.rare, dataset.oversample = rare_locations(c, recipe.class_map, masks, log), c.train.oversample
    return LoaderBatches(dataset, c.train.batch_size, device, c.data.workers, c.train.seed,
                         dist.rank, dist.world_size), None


def rare_locations(config: RunConfig, class_map: ClassMap, masks, log=print) -> RareLocations | None:
    """--oversample: the rare classes' locations in the training masks ((H, W) int64 each, at the
    training scale), or None without it."""
    if not config.train.oversample:
        return None
    rare = RareLocations.from_masks(masks, class_map.num_classes, multilabel=class_map.multilabel)
    names = ", ".join(class_map.names[k] for k in rare.classes) or "none (one class)"
    log(f"oversampling: {config.train.oversample:g} of the crops centre on a pixel of {names} (classes under "
        f"{RARE_SHARE:.0%} of the training pixels, else the rarest); {rare.nbytes() / 1024:.1f} KiB of locations")
    return rare


def make_model(config: RunConfig, channels: int, num_outputs: int) -> tuple[nn.Module, dict]:
    """The model, and the keyword arguments its checkpoints store to rebuild it (`build_model`)."""
    options = config.model.resolved()
    kwargs = {"in_channels": channels, "num_classes": num_outputs, **model_spec(config.model.name).stored(options)}
    return build_model(config.model.name, in_channels=channels, num_classes=num_outputs, **options), kwargs


def input_normalization(config: RunConfig, model: nn.Module, channels: int,
                        loaded_preprocess: dict | None = None) -> Normalization:
    """The run's normalisation: --normalization as given; "auto": the --load checkpoint's (its
    weights were trained on it), else the pretrained encoder's statistics for `channels` inputs
    (`model.input_normalization`), else "per_image"."""
    choice = config.data.normalization
    if choice != "auto":
        return choice
    if loaded_preprocess is not None:
        return check_normalization(loaded_preprocess.get("normalization", "per_image"), channels)
    stats = getattr(model, "input_normalization", None)
    if stats:
        return fixed_normalization(stats["mean"], stats["std"], channels)
    return "per_image"


def load_initial_weights(model: nn.Module, path: Path, model_kwargs: dict, log=print) -> dict:
    """--load: a checkpoint's weights into a model of the same shapes (the training state is not
    used); returns the checkpoint's preprocessing."""
    payload = load_checkpoint(path)
    state, own = payload["state_dict"], model.state_dict()
    if set(state) != set(own) or any(own[k].shape != v.shape for k, v in state.items()):
        raise SeglabError(f"--load '{path}' does not fit this model ({payload['model']['name']} "
                          f"{payload['model']['kwargs']} vs {model_kwargs}): train a matching model")
    model.load_state_dict(state)
    log(f"initial weights from {path}")
    return payload["preprocess"]


def class_weights_for(config: RunConfig, class_counts: list[int] | None) -> list[float] | None:
    """--class-weights: explicit numbers, or "auto": median frequency balancing over the training
    masks (weight_k = median(freq) / freq_k; classes absent from the masks get weight 0)."""
    weights = config.train.class_weights
    if weights is None or weights == "none":
        return None
    if weights != "auto":
        return [float(w) for w in weights]
    if class_counts is None:
        raise SeglabError("--class-weights auto needs the training masks' class counts")
    counts = np.asarray(class_counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1)
    median = np.median(freq[freq > 0])
    return [float(median / f) if f > 0 else 0.0 for f in freq]


def make_loss(config: RunConfig, class_map: ClassMap, class_counts: list[int] | None = None) -> SegmentationLoss:
    """The loss `config` names for `class_map` (auto: BCE/CE + Dice; "ce" is the sigmoid
    cross-entropy of a binary model), with its options; `class_counts`: pixels per class, for
    --class-weights auto."""
    name = "ce+dice" if config.train.loss == "auto" else config.train.loss
    return SegmentationLoss(class_map.num_outputs, name, class_weights_for(config, class_counts),
                            options=config.train.loss_options, multilabel=class_map.multilabel)


def make_optimizer(config: RunConfig, model: nn.Module, fused: bool = False,
                   groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """The optimizer; `fused` runs Adam/AdamW/SGD as one kernel per step (CPU and CUDA), which also
    lets a GradScaler skip non-finite steps without a host synchronisation. `groups` (parameter
    groups, an "lr_scale" each; `EncoderPolicy.parameter_groups`) default to the model's trainable
    parameters in one group."""
    t = config.train
    groups = groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    params = [{**group, "lr": t.learning_rate * group.get("lr_scale", 1.0)} for group in groups]
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
