"""How a pretrained encoder trains: a lower learning rate, frozen for the first epochs, BatchNorm in eval mode.

A model has an encoder when it exposes one as `model.encoder` (SMP models; seglab's DeepLabV3,
whose encoder is its ResNet backbone). The three options of TrainConfig act on it:

- `encoder_lr_scale` s: the encoder's parameters form their own optimizer group whose learning
  rate is s times the decoder's, through warm-up and schedule alike (the schedule scales every
  group's base rate).
- `freeze_encoder_epochs` N: for epochs 1..N the encoder's parameters take no gradient
  (requires_grad False: no backward through them is wasted) and its BatchNorm layers keep their
  running statistics; from epoch N + 1 on it trains.
- `encoder_bn_eval`: the encoder's BatchNorm layers stay in eval mode all along, normalising with
  their (pretrained) running statistics, which batches of one or two images would only blur.

Every option at its default is a no-op, and a model without an encoder is refused in one line
when one of them is set.
"""
from __future__ import annotations

import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from seglab.config import TrainConfig
from seglab.errors import ConfigError


def encoder_of(model: nn.Module) -> nn.Module | None:
    encoder = getattr(model, "encoder", None)
    return encoder if isinstance(encoder, nn.Module) else None


def _norm_layers(module: nn.Module) -> list[nn.Module]:
    """BatchNorm-like layers that keep running statistics (BatchNorm, SyncBatchNorm, InstanceNorm with stats)."""
    return [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]


class EncoderPolicy:
    """The encoder options of one run, applied to its model (the plain module, before any wrapper)."""

    def __init__(self, model: nn.Module, train: TrainConfig, model_name: str = "model"):
        self.lr_scale = train.encoder_lr_scale
        self.freeze_epochs = train.freeze_encoder_epochs
        self.bn_eval = train.encoder_bn_eval
        self.encoder = encoder_of(model)
        asked = [flag for flag, on in (("--encoder-lr-scale", self.lr_scale != 1.0),
                                       ("--freeze-encoder-epochs", self.freeze_epochs > 0),
                                       ("--encoder-bn-eval", self.bn_eval)) if on]
        if asked and self.encoder is None:
            raise ConfigError(f"{asked[0]} needs a model with a pretrained-style encoder (smp-*, deeplabv3); "
                              f"{model_name} has none")
        self.model = model
        # Only what trains at all: parameters the forward never reaches stay without gradients.
        self.trainable = [p for p in self.encoder.parameters() if p.requires_grad] if self.encoder else []
        self.frozen = False
        if self.encoder is not None and (self.freeze_epochs or self.bn_eval):
            # Before every encoder forward: its norm layers back to eval mode when they must be, so
            # model.train() anywhere (each epoch, after validation) cannot undo it.
            self.encoder.register_forward_pre_hook(self._keep_norms_in_eval)

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups of the trainable parameters: the rest of the model, then the encoder with
        its `lr_scale` (one group when there is no encoder or the scale is 1). A frozen encoder's
        parameters are listed too, whenever this is called: they train once it unfreezes (until
        then they have no gradient, and the optimizer step skips them)."""
        own = {id(p) for p in self.trainable}
        params = [p for p in self.model.parameters() if p.requires_grad or id(p) in own]
        if self.encoder is None or self.lr_scale == 1.0:
            return [{"params": params}]
        return [{"params": [p for p in params if id(p) not in own]},
                {"params": [p for p in params if id(p) in own], "lr_scale": self.lr_scale}]

    def start_epoch(self, epoch: int) -> bool:
        """Freeze or unfreeze the encoder for `epoch` (0-based). Returns True when it just unfroze:
        a DistributedDataParallel wrapper must then be rebuilt to reduce the new gradients."""
        frozen = self.encoder is not None and epoch < self.freeze_epochs
        changed = frozen != self.frozen
        if changed:
            for param in self.trainable:
                param.requires_grad_(not frozen)
            self.frozen = frozen
        return changed and not frozen

    def _keep_norms_in_eval(self, module: nn.Module, inputs) -> None:
        if module.training and (self.frozen or self.bn_eval):
            for norm in _norm_layers(module):
                norm.eval()
