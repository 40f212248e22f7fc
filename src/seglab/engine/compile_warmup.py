"""torch.compile's work for a batch shape, done on a copy of the batch before it trains.

The compile time is logged apart and never counts as training time (the time budget). The weights,
BatchNorm statistics, gradients and random streams are left as they were, so a compiled run trains
the same steps an eager one does.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from seglab.errors import SeglabError
from seglab.runtime.device import is_out_of_memory


class CompileWarmup:
    """Compiles `step_model` (a torch.compile'd module) for each new batch shape before it trains.

    run(images, masks, weights) does one forward and backward pass of a copy of the batch
    (images (N, C, H, W), masks (N, H, W), weights (N, H, W) or None) through `loss_of(output,
    masks, weights)` when the shape is new; `seconds` sums the compile time of the run.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, autocast: Callable, log=print):
        self.model, self.device, self.autocast, self.log = model, device, autocast, log
        self.shape: tuple | None = None
        self.seconds = 0.0

    def reset(self) -> None:
        """The model was wrapped again (an encoder unfroze): the next batch compiles anew."""
        self.shape = None

    def due(self, images: torch.Tensor) -> bool:
        return self.shape != tuple(images.shape)

    def run(self, step_model: torch.nn.Module, loss_of: Callable, images: torch.Tensor, masks: torch.Tensor,
            weights: torch.Tensor | None) -> None:
        started = time.perf_counter()
        buffers = {name: buffer.clone() for name, buffer in self.model.named_buffers()}
        grads = {p: None if p.grad is None else p.grad.clone() for p in self.model.parameters()}
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                with self.autocast():
                    loss = loss_of(step_model(images.clone()), masks, weights)
                loss.backward()
        except Exception as error:  # inductor's C++ build, an operator it cannot trace, ...
            compile_failed(error)
        finally:
            for name, buffer in self.model.named_buffers():
                buffer.copy_(buffers[name])
            for parameter, grad in grads.items():  # an accumulation in progress keeps its gradients
                parameter.grad = grad
        seconds = time.perf_counter() - started
        self.seconds += seconds
        again = "recompiled" if self.shape is not None else "compiled"
        self.shape = tuple(images.shape)
        self.log(f"torch.compile: {again} for batches of {self.shape} in {seconds:.1f} s (not training time)")


def compile_failed(error: Exception) -> None:
    """A compilation that fails (no C++ compiler, an operator inductor cannot trace) stops the run in
    one line, before any step trained; out-of-memory errors go on as such."""
    if is_out_of_memory(error):
        raise error
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    raise SeglabError(f"torch.compile failed on this machine ({reason}): train without --compile") from None
