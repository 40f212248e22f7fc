"""An exponential moving average of a model's weights, kept on the device (--ema DECAY).

After every optimizer step: average = d * average + (1 - d) * weights, with d = min(decay,
(1 + t) / (10 + t)) at update t, so the average forgets the random initial weights within the first
steps instead of dragging them along for 1 / (1 - decay) steps. One fused foreach lerp over all
parameters, no host synchronisation. Buffers (BatchNorm statistics) are copied, not averaged.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)  # the averaged weights, same device
        self.updates = 0

    def decay_at(self, update: int) -> float:
        return min(self.decay, (1 + update) / (10 + update))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (after its optimizer step)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        averaged = [p for p in self.model.parameters()]
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, weight)
        buffers = [b for b in self.model.buffers()]
        if buffers:
            torch._foreach_copy_(buffers, [b.detach() for b in model.buffers()])

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)
        self.updates = int(state["updates"])
