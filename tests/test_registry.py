"""The registry owns model knowledge: each model declares its options, and a new model is one registration."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

import seglab
from seglab.errors import ConfigError
from seglab.models import build_model, unregister_model

QUIET = lambda *args, **kwargs: None  # noqa: E731
# Every registered model's forward and backward, training, prediction and export: tests/test_models.py.


@dataclass(frozen=True)
class TinyOptions:
    width: int = seglab.option(4, "channels of the hidden layer", min=1)


class TinyNet(nn.Module):
    """Two convolutions: (N, in_channels, H, W) -> (N, num_classes, H, W)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture
def tiny_model():
    seglab.register_model("tiny-test", options=TinyOptions)(TinyNet)
    yield "tiny-test"
    unregister_model("tiny-test")


def test_a_model_registered_in_a_test_trains_and_predicts(tiny_model, isbi_subset, tmp_path):
    run = seglab.train(isbi_subset, model=tiny_model, width=3, epochs=2, batch_size=2, crop=64, augment="none",
                       device="cpu", out=tmp_path / "run", progress=False, log=QUIET)
    payload = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
    assert payload["model"] == {"name": tiny_model, "kwargs": {"in_channels": 1, "num_classes": 1, "width": 3}}
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["model"] == {"name": tiny_model, "width": 3} and saved["seglab_version"] == seglab.__version__
    prediction = seglab.load(run.best_checkpoint, device="cpu").predict(isbi_subset / "images" / "00.png")
    assert prediction.mask.shape == (128, 128) and set(np.unique(prediction.mask)) <= {0, 255}
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        seglab.train(isbi_subset, model=tiny_model, widht=3, out=tmp_path / "typo", log=QUIET)


def test_the_registry_checks_options_when_a_model_is_built():
    with pytest.raises(ConfigError, match="did you mean 'base_channels'"):
        build_model("unet", in_channels=1, num_classes=1, base_chanels=8)
    with pytest.raises(ConfigError, match=r"invalid model.depth \(--depth\): 0"):
        build_model("unet", in_channels=1, num_classes=1, depth=0)
    with pytest.raises(ConfigError, match="one of: resnet18"):
        build_model("deeplabv3", in_channels=3, num_classes=2, backbone="vgg16")
    with pytest.raises(ConfigError, match="unknown model 'unet3d'; choose one of: deeplabv3, smp-deeplabv3, .*, unet$"):
        build_model("unet3d")


def test_only_the_chosen_models_options_are_accepted(isbi_subset, tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'backbone' in the options of model 'unet'"):
        seglab.train(isbi_subset, backbone="resnet18", out=tmp_path / "x", log=QUIET)
