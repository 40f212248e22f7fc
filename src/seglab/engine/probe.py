"""Short measurements for the training plan: a few timed training steps of a model at one crop and batch.

On a GPU the plan probes a U-Net at candidate batch sizes for its peak memory; on the CPU it probes
the planned model itself, in the run's precision and in both memory layouts, for the images/s the
time budget is divided by and for the faster layout.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from seglab.config import RunConfig
from seglab.data.augment import BatchAugmenter
from seglab.data.classmap import ClassMap
from seglab.engine.builders import make_loss, make_model, make_optimizer
from seglab.models.unet import UNet
from seglab.runtime.device import autocast_factory

WARMUP_STEPS, TIMED_STEPS = 2, 3
CPU_WARMUP_STEPS, CPU_TIMED_STEPS = 1, 2


def probe_training_step(device: torch.device, channels: int, crop: int, batch: int,
                        base_channels: int = 64, depth: int = 4) -> dict | None:
    """Peak memory and images/s of forward, loss, backward and an AdamW step of a U-Net on random
    (batch, channels, crop, crop) inputs under bf16/fp16 autocast on a GPU; None when it does not fit."""
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = UNet(channels, 1, base_channels, depth).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    images = torch.randn(batch, channels, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    target = (torch.rand(batch, 1, crop, crop, device=device) > 0.5).float()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        for step in range(WARMUP_STEPS + TIMED_STEPS):
            if step == WARMUP_STEPS:
                torch.cuda.synchronize(device)
                started = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        return None
    finally:
        peak = torch.cuda.max_memory_allocated(device)
        del model, optimizer, images, target
        torch.cuda.empty_cache()
    seconds = time.perf_counter() - started
    return {"peak_bytes": peak, "images_per_s": TIMED_STEPS * batch / seconds}


def time_cpu_training_steps(config: RunConfig, channels: int, class_map: ClassMap, dtype: torch.dtype | None,
                            channels_last: bool, whole_size: tuple[int, int], warmup: int = CPU_WARMUP_STEPS,
                            timed: int = CPU_TIMED_STEPS) -> float:
    """Images/s of the training step `config` describes, on the CPU: its model, augmentation
    (to `data.crop` windows, or `whole_size` (H, W) images without a crop), loss and optimizer,
    under `dtype` autocast in the given layout, on random images. The global random generators
    are left as they were."""
    height, width = (config.data.crop[0], config.data.crop[-1]) if config.data.crop else whole_size
    batch = config.train.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, channels, height, width, generator=generator)
    masks = torch.randint(0, class_map.num_classes, (batch, height, width), generator=generator)
    with torch.random.fork_rng(devices=[]):
        model, _ = make_model(config, channels, class_map.num_outputs)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=layout).train()
        # "auto" class weights need the masks' counts, and weights do not change a step's cost
        loss_fn = make_loss(replace(config, train=replace(config.train, class_weights=None)), class_map)
        optimizer = make_optimizer(config, model, fused=True)
        augmenter = BatchAugmenter(config.train.augment_config, seed=0)
        autocast = autocast_factory(torch.device("cpu"), dtype)
        for step in range(warmup + timed):
            if step == warmup:
                started = time.perf_counter()
            batch_images, batch_masks, _ = augmenter(images, masks, None, out_size=(height, width))
            with autocast():
                output = model(batch_images.contiguous(memory_format=layout))
                output = output["out"] if isinstance(output, dict) else output
                loss = loss_fn(output, batch_masks)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
    return timed * batch / seconds
