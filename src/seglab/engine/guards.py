"""What stops a run that went wrong, in one line that says what to do: losses that stay non-finite,
weights that are no longer finite, a batch that does not fit the device's memory."""
from __future__ import annotations

import torch

from seglab.engine.history import DeviceLossTally, EpochTally
from seglab.errors import SeglabError
from seglab.runtime.checkpoint import non_finite_tensors


def read_losses(losses: DeviceLossTally, tally: EpochTally, step: int, max_bad_steps: int, resume_hint: str,
                log=print) -> None:
    """Move the device-side loss sums into `tally` (one host sync); warn about skipped steps and stop
    a run whose losses stayed non-finite `max_bad_steps` times in a row."""
    loss_sum, steps, bad_run, bad_total = losses.read()
    tally.loss_sum += loss_sum
    tally.steps += steps
    if bad_total:
        log(f"warning: {bad_total} non-finite loss(es) up to step {step}; those updates were skipped")
    if bad_run >= max_bad_steps:
        raise SeglabError(f"{bad_run} non-finite losses in a row: training diverged; lower --learning-rate; "
                          f"{resume_hint}")


def check_weights_finite(models: list[torch.nn.Module], step: int, resume_hint: str) -> None:
    """Stop before a diverged model is scored or saved: its checkpoints would be NaN."""
    bad = next((found for model in models if (found := non_finite_tensors(model.state_dict()))), None)
    if bad:
        raise SeglabError(f"training diverged: {len(bad)} weight tensors are no longer finite at step {step} "
                          f"(e.g. {bad[0]}), so nothing more was saved; lower --learning-rate; {resume_hint}")


def out_of_memory(device: torch.device, batch_size: int, crop: tuple[int, int] | None, resume_hint: str) -> SeglabError:
    """The one line for a training batch that did not fit the device."""
    cropped = f" and --crop {crop[0]},{crop[1]}" if crop else ""
    return SeglabError(f"out of memory on {device} at --batch-size {batch_size}{cropped}: try --batch-size "
                       f"{max(1, batch_size // 2)}, a smaller --crop, or --amp; {resume_hint}")
