"""A training plan from the data, the machine and the time budget: plain rules, each with its reason.

`make_plan` fingerprints the training images (`data.fingerprint`), looks at the device (CPU cores,
or a short forward/backward probe on a GPU) and chooses what `seglab train DATA` leaves unsaid:
network size, crop, batch size, learning rate and schedule over the budget, augmentation, class
weights, evaluation interval. A value the user gave (flag, YAML key, keyword) always wins; the plan
records it as given. The constants come from measurements recorded in BENCHMARKS.md ("Training
plan").
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from seglab.config import RunConfig, override, parse_eval_every
from seglab.data.decoded import DecodedFiles
from seglab.data.fingerprint import Fingerprint, fingerprint
from seglab.engine.split import Split
from seglab.runtime.device import free_memory, is_out_of_memory, native_cpu_bf16, resolve_device, resolve_precision

# Seconds of training when the user gives neither --epochs nor --time-budget.
DEFAULT_BUDGET = {"cpu": 420.0, "cuda": 120.0}
# Without a probe (under torchrun every rank must plan alike): the demo's CPU recipe (U-Net-16,
# 256x256 crops, batch 4, paper augmentation) per core, in float32 and in native bf16 with
# channels-last (BENCHMARKS.md, "CPU speed").
CPU_IMAGES_PER_S_PER_CORE = {"fp32": 1.5, "bf16": 3.5}
CPU_CROP, GPU_CROP = 256, 512         # largest training crop side on each kind of device
MIN_CROP = 128                        # crops below this side get a shallower U-Net
OBJECTS_PER_CROP = 4                  # a crop side holds this many diameters of the largest objects
EVALUATIONS = 10                      # validations over a budget (the demo validates every 5 of 51 epochs)
# Validation's share of the training time, all evaluations together, on a large hold-out: a whole
# image's forward pass costs about FORWARD_COST of a training step on as many pixels (measured: 0.096
# s per 512x512 ISBI image against 0.075 s per 256x256 training crop, bf16 on 2 cores: 0.32), and
# no fewer than MIN_VAL_IMAGES are scored (fewer make best.pt a matter of chance).
VALIDATION_SHARE = 0.1
FORWARD_COST = 0.33
MIN_VAL_IMAGES = 32
RARE_SHARE = 0.02                     # a class under this pixel share gets median-frequency weights
# What the other losses and oversampling scored against the plan's on CamVid (BENCHMARKS.md, "Small
# objects"), quoted in plan.json's reasons.
RARE_LOSS_MIOU = "0.41-0.49"
RARE_OVERSAMPLE_SMALL_IOU = "0.211 against 0.236, the mean of the five small classes"
GPU_MEMORY_SHARE = 0.6                # of free memory the probe's peak may use
LARGE_GPU_BYTES = 40 * 2**30          # without a probe, GPUs with this much memory train 8 crops per step


@dataclass
class Choice:
    value: Any
    reason: str
    given: bool = False  # the user's own value, kept


@dataclass
class Plan:
    """The choices (dotted config keys -> Choice), and what they were made from."""

    choices: dict[str, Choice] = field(default_factory=dict)
    fingerprint: Fingerprint | None = None
    device: dict = field(default_factory=dict)

    def choose(self, key: str, value: Any, reason: str, explicit: dict) -> Any:
        """Record a choice, unless the user gave `key`: then record theirs. Returns the value used."""
        if key in explicit:
            self.choices[key] = Choice(explicit[key], "given", True)
            return explicit[key]
        self.choices[key] = Choice(value, reason)
        return value

    def updates(self) -> dict[str, Any]:
        """The planned (not given) values, as dotted config updates."""
        return {key: c.value for key, c in self.choices.items() if not c.given}

    def lines(self) -> list[str]:
        """A few lines for the log: each planned choice with its reason."""
        planned = [f"  {key.split('.', 1)[1]} {_show(c.value)}: {c.reason}" for key, c in self.choices.items()
                   if not c.given]
        given = [key.split(".", 1)[1] for key, c in self.choices.items() if c.given]
        return (["plan (plan.json; any flag overrides):"] + planned
                + ([f"  given: {', '.join(given)}"] if given else []))

    def to_json(self) -> dict:
        return {"choices": {k: {"value": c.value, "reason": c.reason, "given": c.given}
                            for k, c in self.choices.items()},
                "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None, "device": self.device}


def _show(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def describe_device(device: torch.device) -> dict:
    """CPU cores, or the GPU's name and free memory."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "free_bytes": free_memory(device),
                "total_bytes": torch.cuda.get_device_properties(device).total_memory}
    return {"type": "cpu", "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
            os.cpu_count() or 1, "bf16": native_cpu_bf16()}


def make_plan(explicit: dict[str, Any], data: Split, files: DecodedFiles | None = None, log=print) -> Plan:
    """Plan a run of `data` (the split of the folder in explicit["data.root"]), keeping every
    explicit value; the fingerprint decodes its sample through `files` (the run's store)."""
    from seglab.engine.probe import probe_training_step, time_cpu_training_steps

    provisional = override(RunConfig(), {k: v for k, v in explicit.items() if k != "out"})
    device = resolve_device(provisional.train.device)
    channels = data.channels
    prints = fingerprint(data.train_pairs, data.class_map, files=files)

    def probe(crop: int, batch: int) -> dict | None:
        return probe_training_step(device, channels, crop, batch)

    def cpu_probe(values: dict[str, Any], channels_last: bool) -> float | None:
        config = override(provisional, {k: v for k, v in values.items() if k != "out"})
        dtype = resolve_precision(config.train.precision, config.train.amp, device)
        size = tuple(round(side * config.data.scale) for side in prints.median_size)
        try:
            return time_cpu_training_steps(config, channels, data.class_map, dtype, channels_last, size)
        except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if is_out_of_memory(error):
                return None
            raise

    # Under torchrun every rank plans for itself, so the plan must not depend on what one rank
    # measures while the others run: no probe there, only the GPU's total memory.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        probe = cpu_probe = None
    dice = data.class_map.is_binary or data.class_map.multilabel  # one score per foreground class or label
    return plan_rules(prints, describe_device(device), explicit, dice, len(data.train_pairs),
                      probe, cpu_probe, len(data.val_pairs))


def plan_rules(fp: Fingerprint, device: dict, explicit: dict[str, Any], binary: bool, train_images: int,
               probe: Callable[[int, int], dict | None] | None = None,
               cpu_probe: Callable[[dict[str, Any], bool], float | None] | None = None,
               val_images: int = 0) -> Plan:
    """The rules, from measurements only: the fingerprint, the device ({"type": "cpu", "cores": N,
    "bf16": native bf16 feature or None} or {"type": "cuda", "free_bytes": B}), what the user gave,
    how many images train and how many are held out; on a GPU a probe(crop, batch) ->
    {"peak_bytes", "images_per_s"} or None (out of memory); on a CPU a cpu_probe(planned config
    values, channels_last) -> images/s of that training step, or None when it runs out of memory."""
    plan = Plan(fingerprint=fp, device=dict(device))
    kind = device["type"]
    _plan_model(plan, fp, kind, explicit)
    _plan_data(plan, fp, kind, explicit)
    _plan_optimisation(plan, fp, kind, explicit, binary, probe)
    if kind == "cpu":
        _plan_cpu_speed(plan, explicit, cpu_probe)
    _plan_schedule(plan, kind, explicit, train_images)
    _plan_validation(plan, kind, explicit, train_images, val_images)
    return plan


def _plan_model(plan: Plan, fp: Fingerprint, kind: str, explicit: dict) -> None:
    name = plan.choose("model.name", "unet", "the U-Net: it trains well from scratch on small data sets", explicit)
    if name != "unet":
        return
    if kind == "cuda":
        plan.choose("model.base_channels", 64, "the paper's U-Net on a GPU", explicit)
    else:
        plan.choose("model.base_channels", 16, f"a small U-Net for {plan.device['cores']} CPU cores (the demo's)",
                    explicit)
    crop_side = _crop_side(fp, kind)
    depth = 4 if crop_side >= MIN_CROP else 3
    plan.choose("model.depth", depth, f"4 poolings for {crop_side}-pixel inputs" if depth == 4 else
                f"3 poolings: inputs of {crop_side} pixels are small", explicit)


def _crop_side(fp: Fingerprint, kind: str) -> int:
    """The training crop side, never above the images' smallest side (then whole images train).
    On a CPU the time bounds it (CPU_CROP); on a GPU it starts at GPU_CROP and grows, up to twice
    that, to hold the largest objects OBJECTS_PER_CROP times across."""
    if kind != "cuda":
        return min(CPU_CROP, fp.smallest_side)
    largest = max(fp.object_diameter.values(), default=0.0)
    need = 32 * math.ceil(OBJECTS_PER_CROP * largest / 32)
    return min(max(GPU_CROP, min(need, 2 * GPU_CROP)), fp.smallest_side)


def _plan_data(plan: Plan, fp: Fingerprint, kind: str, explicit: dict) -> None:
    side = _crop_side(fp, kind)
    largest = max(fp.object_diameter.values(), default=0.0)
    if side >= min(fp.median_size):
        plan.choose("data.crop", None, f"whole images: they are {fp.median_size[1]}x{fp.median_size[0]}, no larger "
                    f"than a {side}-pixel crop", explicit)
    else:
        plan.choose("data.crop", [side, side], f"{side}x{side} crops of {fp.median_size[1]}x{fp.median_size[0]} images "
                    f"(largest objects about {largest:.0f} px across)", explicit)
    if explicit.get("model.encoder_weights") not in (None, "none") or explicit.get("model.pretrained_backbone"):
        plan.choose("data.normalization", "auto", "the pretrained encoder's mean and std, as its weights were "
                    "trained (stored in the checkpoint)", explicit)
    else:
        plan.choose("data.normalization", "per_image", "zero mean, unit variance per image: contrast varies "
                    "between images", explicit)


def _plan_optimisation(plan: Plan, fp: Fingerprint, kind: str, explicit: dict, binary: bool, probe) -> None:
    if kind == "cuda" and "train.batch_size" not in explicit and probe is not None:
        batch = plan.choose("train.batch_size", _gpu_batch(plan, probe), "the largest that fits the GPU's memory "
                            "(a probe of a few steps)", explicit)
    elif kind == "cuda":
        large = plan.device.get("total_bytes", 0) >= LARGE_GPU_BYTES
        batch = plan.choose("train.batch_size", 8 if large else 4, f"{8 if large else 4} crops per step on a "
                            f"{'large' if large else 'small'} GPU (under torchrun, no probe)", explicit)
    else:
        batch = plan.choose("train.batch_size", 4, "4 crops per step (the demo's)", explicit)
    learning_rate = round(2e-3 * min(2.0, math.sqrt(batch / 4)), 6)
    plan.choose("train.learning_rate", learning_rate, f"AdamW at 2e-3 for batch 4, scaled by sqrt(batch/4) for "
                f"batch {batch}", explicit)
    plan.choose("train.scheduler", "cosine", "warm-up, then cosine decay to the end of the budget", explicit)
    if fp.kind == "grayscale":
        plan.choose("train.augment", "paper", "grayscale images (microscopy-like): the U-Net paper's flips, "
                    "rotations and elastic deformation", explicit)
    else:
        plan.choose("train.augment", "photo", "colour photos: left-right flips, mild zoom and rotation, colour "
                    "changes (no upside-down scenes)", explicit)
    rare = [name for name, share in fp.class_shares.items() if share < RARE_SHARE]
    if rare:
        _plan_rare_classes(plan, rare, explicit)
    plan.choose("train.monitor", "val_dice" if binary else "val_miou",
                "binary or multi-label masks: mean Dice" if binary else "several classes: mean IoU", explicit)
    if kind == "cuda":
        plan.choose("train.amp", True, "mixed precision on the GPU", explicit)


def _plan_rare_classes(plan: Plan, rare: list[str], explicit: dict) -> None:
    """Classes under RARE_SHARE of the pixels: class weights, and the loss and sampling measured
    best for them (BENCHMARKS.md, "Small objects": CamVid, 10 minutes of CPU training each)."""
    plan.choose("train.class_weights", "auto", f"rare classes ({', '.join(rare)} under {RARE_SHARE:.0%} of the "
                "pixels): median-frequency weights", explicit)
    plan.choose("train.loss", "ce+dice", "rare classes: weighted cross-entropy + Dice scored the best mIoU on CamVid "
                f"(0.507); focal, Lovász, Tversky, focal Tversky or generalised Dice in place of a term scored "
                f"{RARE_LOSS_MIOU}", explicit)
    plan.choose("train.oversample", 0.0, "no crops centred on rare classes: beside class weights, centring a third "
                f"of them lowered the rare classes' IoU on CamVid ({RARE_OVERSAMPLE_SMALL_IOU})", explicit)


def _plan_cpu_speed(plan: Plan, explicit: dict, cpu_probe) -> None:
    """Precision and memory layout on a CPU: bf16 where the CPU computes it natively; the layout
    that a probe of the planned training step measures faster (it also gives the images/s the
    schedule divides the budget by)."""
    feature = plan.device.get("bf16")
    precision = plan.choose("train.precision", "bf16" if feature else "fp32",
                            f"this CPU computes bf16 natively ({feature}): autocast, weights and losses in fp32"
                            if feature else "this CPU has no native bf16 (AVX512_BF16 or AMX): float32", explicit)
    values = {**plan.updates(), **explicit}
    if cpu_probe is None:
        plan.choose("train.channels_last", precision == "bf16", "channels-last under bf16 (oneDNN's layout); "
                    "no probe under torchrun", explicit)
        return
    layouts = [bool(explicit["train.channels_last"])] if "train.channels_last" in explicit else [False, True]
    measured = {layout: cpu_probe({**values, "train.channels_last": layout}, layout) for layout in layouts}
    speeds = {layout: speed for layout, speed in measured.items() if speed is not None}
    if not speeds:  # out of memory: the run itself stops with the batch size to try
        plan.choose("train.channels_last", precision == "bf16", "channels-last under bf16 (the probe ran out of "
                    "memory)", explicit)
        return
    fastest = max(speeds, key=speeds.get)
    shown = ", ".join(f"{'channels-last' if layout else 'NCHW'} {speed:.1f}" for layout, speed in speeds.items())
    plan.choose("train.channels_last", fastest, f"measured faster for this model ({shown} images/s)", explicit)
    plan.device.update(probe_images_per_s=round(speeds[fastest], 3),
                       probe_layouts={"channels_last" if k else "nchw": round(v, 3) for k, v in speeds.items()})


def _throughput(plan: Plan, kind: str) -> float:
    """Training images per second of the planned network and crop: measured by the probe (GPU or
    CPU); without one, on a CPU, from the measured constants (per core, scaled by pixels and width)."""
    if kind == "cuda":
        return plan.device.get("probe_images_per_s", 50.0)
    if "probe_images_per_s" in plan.device:
        return plan.device["probe_images_per_s"]
    crop = plan.choices.get("data.crop")
    side = crop.value[0] if crop is not None and crop.value else min(plan.fingerprint.median_size)
    base = plan.choices.get("model.base_channels")
    width = base.value if base is not None else 16
    precision = plan.choices.get("train.precision")
    per_core = CPU_IMAGES_PER_S_PER_CORE["bf16" if precision is not None and precision.value == "bf16" else "fp32"]
    return per_core * plan.device["cores"] * (256 / side) ** 2 * (16 / width) ** 2


def _plan_schedule(plan: Plan, kind: str, explicit: dict, train_images: int) -> None:
    """The budget bounds the run (unless --epochs was given), and ~EVALUATIONS validations fall in it."""
    timed = "train.epochs" not in explicit or "train.time_budget" in explicit
    if timed:
        budget = plan.choose("train.time_budget", DEFAULT_BUDGET[kind], f"the default budget on {kind.upper()} "
                             "(--time-budget SECONDS to change it)", explicit)
        plan.choose("train.epochs", 10_000, "as many as the budget allows", explicit)
        epochs = max(1.0, budget * _throughput(plan, kind) / max(train_images, 1))
    else:
        epochs = float(explicit["train.epochs"])
    every = max(1, round(epochs / EVALUATIONS))
    reason = (f"about {EVALUATIONS} validations in ~{epochs:.0f} epochs" if epochs >= EVALUATIONS else
              f"every epoch: only ~{epochs:.0f} fit the budget")
    plan.choose("train.eval_every", every, reason, explicit)


def _plan_validation(plan: Plan, kind: str, explicit: dict, train_images: int, held_out: int) -> None:
    """On a hold-out too large to score in VALIDATION_SHARE of the training time at each planned
    evaluation, the same evenly spread subset is scored each time (never under MIN_VAL_IMAGES)."""
    if "train.val_images" in explicit or held_out <= MIN_VAL_IMAGES:
        if "train.val_images" in explicit:
            plan.choose("train.val_images", None, "", explicit)  # recorded as given
        return
    throughput = _throughput(plan, kind)  # training crops per second
    budget = plan.choices.get("train.time_budget")  # seconds of training, else as many as the epochs take
    training = budget.value if budget is not None else float(explicit["train.epochs"]) * train_images / throughput
    count, unit = parse_eval_every(plan.choices["train.eval_every"].value)
    epoch_seconds = train_images / throughput
    period = count * (epoch_seconds if unit == "epoch" else plan.choices["train.batch_size"].value / throughput)
    evaluations = max(1, math.ceil(training / max(period, 1e-9)))
    crop = plan.choices["data.crop"].value
    height, width = plan.fingerprint.median_size
    image_pixels = height * width * explicit.get("data.scale", 1.0) ** 2  # as the model sees them
    crop_pixels = crop[0] * crop[-1] if crop else image_pixels
    per_image = FORWARD_COST * image_pixels / crop_pixels / throughput  # seconds to validate one image
    fits = int(VALIDATION_SHARE * training / evaluations / per_image)
    if fits >= held_out:
        return
    chosen = max(MIN_VAL_IMAGES, fits)
    plan.choose("train.val_images", chosen, f"{chosen} of the {held_out} held-out images at each of ~{evaluations} "
                f"evaluations (about {per_image:.2g} s each): validation within {VALIDATION_SHARE:.0%} of the "
                "training time; the same ones each time", explicit)


def _gpu_batch(plan: Plan, probe) -> int:
    """The largest of 16, 8, 4 crops whose forward/backward fits the memory share; records the
    probe's images/s in plan.device for the schedule."""
    crop = _crop_side(plan.fingerprint, "cuda")
    for batch in (16, 8, 4):
        result = probe(crop, batch)
        if result is not None and result["peak_bytes"] <= GPU_MEMORY_SHARE * plan.device["free_bytes"]:
            plan.device.update(probe_images_per_s=result["images_per_s"], probe_batch=batch, probe_crop=crop)
            return batch
    return 4
