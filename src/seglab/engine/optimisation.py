"""What turns a run's losses into weight updates, built once per run: the loss, the optimizer and its
schedule, the monitored metric, the autocast, the gradient scaler and the weight average (--ema)."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from seglab.config import RunConfig
from seglab.engine.builders import make_loss, make_optimizer
from seglab.engine.ema import WeightAverage
from seglab.engine.encoder_policy import EncoderPolicy
from seglab.engine.monitor import Monitor
from seglab.engine.recipe import Recipe
from seglab.engine.schedule import LearningRateSchedule
from seglab.runtime.device import autocast_factory


class Optimisation(NamedTuple):
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    monitor: Monitor
    schedule: LearningRateSchedule
    autocast: Callable            # () -> the autocast context of the run's precision
    scaler: torch.amp.GradScaler
    ema: WeightAverage | None


def make_optimisation(config: RunConfig, recipe: Recipe, model: torch.nn.Module, encoder_policy: EncoderPolicy,
                      amp_dtype: torch.dtype | None, device: torch.device, log=print) -> Optimisation:
    t = config.train
    loss_fn = make_loss(config, recipe.class_map, recipe.class_counts).to(device)
    optimizer = make_optimizer(config, model, fused=True, groups=encoder_policy.parameter_groups())
    monitor = Monitor(t.monitor, t.early_stop)
    schedule = LearningRateSchedule(optimizer, t.scheduler, monitor.mode, t.patience)
    if t.amp and amp_dtype is None and device.type != "cuda":
        log("note: --amp has no effect on a CPU without native bf16; training in float32")
    # Always on: besides fp16 loss scaling, the scaler skips updates with non-finite gradients
    # without a host sync. Outside fp16 its scale starts at 1 and only ever halves (after a
    # skipped step): scaling by powers of two is exact, so it changes no number.
    fp16 = amp_dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16 if fp16 else 1.0,
                                  growth_interval=2000 if fp16 else 2**30)
    ema = WeightAverage(model, t.ema) if t.ema else None
    return Optimisation(loss_fn, optimizer, monitor, schedule, autocast_factory(device, amp_dtype), scaler, ema)
