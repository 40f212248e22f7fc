"""A short measurement of the GPU: a few training steps of the planned U-Net at one crop and batch size."""
from __future__ import annotations

import time

import torch

from seglab.models.unet import UNet

WARMUP_STEPS, TIMED_STEPS = 2, 3


def probe_training_step(device: torch.device, channels: int, crop: int, batch: int,
                        base_channels: int = 64, depth: int = 4) -> dict | None:
    """Peak memory and images/s of forward, loss, backward and an AdamW step of a U-Net on random
    (batch, channels, crop, crop) inputs under bf16/fp16 autocast; None when it does not fit."""
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
