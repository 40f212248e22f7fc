"""Training a pretrained-style encoder: its own learning rate, frozen for the first epochs, BatchNorm in eval mode.

The encoders here start from random weights, whose BatchNorm statistics are exactly (0, 1): any
update of them shows that the encoder trained, any run that leaves them so shows it did not.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

import seglab
from conftest import SUBPROCESS_ENV, assert_clean_failure, run_group, run_main
from seglab.engine.rng import seed_everything

QUIET = lambda *args, **kwargs: None  # noqa: E731
SMALL = dict(model="smp-unet", encoder="tu-test_resnet", batch_size=2, crop=64, augment="none", validation=20,
             device="cpu", progress=False, log=QUIET)


def _train(data, out, **options) -> dict:
    run = seglab.train(data, out=out, **{**SMALL, **options})
    return torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)


def _norm_stats(state: dict, part: str) -> list[torch.Tensor]:
    """The running means of the encoder's or the decoder's BatchNorm layers (never an empty list)."""
    stats = [v for k, v in state.items() if k.startswith(f"network.{part}.") and k.endswith("running_mean")]
    assert stats, f"no BatchNorm in the {part}"
    return stats


def _initial_state() -> dict[str, torch.Tensor]:
    """The weights a run with seed 0 starts from (the trainer seeds before it builds the model)."""
    seed_everything(0)
    return seglab.build_model("smp-unet", in_channels=1, num_classes=1, encoder="tu-test_resnet").state_dict()


def _encoder_weights_equal(state: dict, initial: dict) -> bool:
    """Whether the encoder's weights and BatchNorm statistics are all as they started."""
    keys = [k for k in state if k.startswith("network.encoder.") and state[k].is_floating_point()]
    return all(torch.equal(state[k], initial[k]) for k in keys)


def _encoder_parameters_moved(state: dict, initial: dict) -> bool:
    """Whether every convolution of the encoder changed: it took optimizer steps, not only forward
    passes that move BatchNorm statistics. (A bias can keep a zero gradient for an epoch of tiny
    batches behind a ReLU that is off for all of them; a whole convolution's weights cannot.)"""
    model = seglab.build_model("smp-unet", in_channels=1, num_classes=1, encoder="tu-test_resnet")
    return _convolutions_moved(state, initial, [k for k, p in model.named_parameters() if p.requires_grad])


def _convolutions_moved(state: dict, initial: dict, keys) -> bool:
    convolutions = [k for k in keys if k.startswith("network.encoder.") and initial[k].ndim == 4]
    return bool(convolutions) and all(not torch.equal(state[k], initial[k]) for k in convolutions)


def test_the_encoder_learns_at_its_own_scale_of_the_learning_rate(isbi_subset, tmp_path):
    payload = _train(isbi_subset, tmp_path / "run", epochs=1, encoder_lr_scale=0.1, scheduler="none",
                     learning_rate=1e-3)
    decoder, encoder = payload["train_state"]["optimizer"]["param_groups"]
    assert decoder["lr"] == pytest.approx(1e-3) and encoder["lr"] == pytest.approx(1e-4)
    model = seglab.build_model("smp-unet", in_channels=1, num_classes=1, encoder="tu-test_resnet")
    assert len(encoder["params"]) == len(list(model.encoder.parameters()))
    assert len(decoder["params"]) + len(encoder["params"]) == len(list(model.parameters()))


def test_a_frozen_encoder_keeps_its_weights_and_statistics_until_it_unfreezes(isbi_subset, tmp_path):
    initial = _initial_state()
    frozen = _train(isbi_subset, tmp_path / "frozen", epochs=1, freeze_encoder_epochs=1)["state_dict"]
    assert _encoder_weights_equal(frozen, initial)  # weights and BatchNorm statistics: not a step taken
    assert any(v.any() for v in _norm_stats(frozen, "decoder"))  # while the decoder trained
    thawed = _train(isbi_subset, tmp_path / "thawed", epochs=2, freeze_encoder_epochs=1)["state_dict"]
    assert all(v.any() for v in _norm_stats(thawed, "encoder"))  # epoch 2 trained the encoder
    assert _encoder_parameters_moved(thawed, initial)  # its weights too, not only its statistics


def test_encoder_batchnorm_in_eval_mode_keeps_its_statistics_while_the_encoder_trains(isbi_subset, tmp_path):
    initial = _initial_state()
    state = _train(isbi_subset, tmp_path / "run", epochs=2, encoder_bn_eval=True)["state_dict"]
    assert all(not v.any() for v in _norm_stats(state, "encoder"))  # still (0, 1): normalised as initialised
    assert any(v.any() for v in _norm_stats(state, "decoder"))
    assert _encoder_parameters_moved(state, initial)  # while its weights learn


def test_encoder_options_need_a_model_with_an_encoder(isbi_subset, tmp_path):
    for flag, value in (("--encoder-lr-scale", "0.1"), ("--freeze-encoder-epochs", "2"), ("--encoder-bn-eval", None)):
        result = run_main("train", isbi_subset, flag, *([value] if value else []), "--device", "cpu",
                          "--out", tmp_path / "run")
        assert_clean_failure(result)
        assert f"{flag} needs a model with a pretrained-style encoder (smp-*, deeplabv3); unet has none" \
            in result.stderr
    assert not (tmp_path / "run").exists()
    result = run_main("train", isbi_subset, "--encoder-lr-scale", "0", "--out", tmp_path / "run")
    assert result.rc == 1 and "invalid train.encoder_lr_scale (--encoder-lr-scale): 0.0; expected F, a number > 0" \
        in result.stderr


DDP_FREEZE = """
import os, sys, torch
from seglab.api.preparing import config_updates, resolve_config
from seglab.engine.recipe import Recipe
from seglab.engine.trainer import Trainer
data, out = sys.argv[1], sys.argv[2]
options = dict(model="smp-unet", encoder="tu-test_resnet", epochs=2, freeze_encoder_epochs=1, batch_size=2, crop=64,
               augment="none", validation=20, device="cpu", out=out)
recipe = Recipe.from_data(resolve_config(data, None, config_updates(options)))
with Trainer(recipe, progress=False, log=lambda *a, **k: None) as t:
    trains = {id(p) for p in t.encoder_policy.trainable}  # the encoder's parameters that its forward uses
    start = {k: v.detach().clone() for k, v in t.model.named_parameters() if id(v) in trains}
    torch.save(start, f"{out}/encoder-start-rank{os.environ['RANK']}.pt")
    t.fit()
    # Parameters only: DDP broadcasts rank 0's BatchNorm statistics before each forward, which then
    # updates each rank's own, so after the last step the statistics differ by one batch.
    weights = {k: v.detach() for k, v in t.model.named_parameters() if k.startswith("network.encoder.")}
    torch.save(weights, f"{out}/encoder-rank{os.environ['RANK']}.pt")
"""


def test_an_encoder_that_unfreezes_under_ddp_trains_the_same_on_every_rank(tmp_path, isbi_subset):
    script = tmp_path / "freeze.py"
    script.write_text(DDP_FREEZE)
    done = run_group([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      str(script), str(isbi_subset), str(tmp_path / "run")], env={**os.environ, **SUBPROCESS_ENV},
                     timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Gradients of the unfrozen encoder are all-reduced: both ranks hold the same weights (without
    # rebuilding DDP when the encoder unfreezes, its gradients would stay per rank and these differ).
    rank0, rank1 = (torch.load(tmp_path / "run" / f"encoder-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0 and rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    start = torch.load(tmp_path / "run" / "encoder-start-rank0.pt", weights_only=True)
    assert _convolutions_moved(rank0, start, start)  # epoch 2 moved every convolution of the encoder
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(v.any() for v in _norm_stats(state, "encoder"))  # the second epoch trained the encoder
