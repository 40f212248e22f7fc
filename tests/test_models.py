"""Every registered model, each with its smallest encoder: shapes at any size, one epoch, prediction, export parity.

SMP models (smp-*) need sides that are multiples of their encoder's stride; seglab mirrors inputs up
to such a size and crops back in the model's forward, and exported graphs do the same in traced
ops, so all of this works at sizes that are multiples of nothing.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import seglab
from seglab.data.io import read_image
from seglab.errors import SeglabError
from seglab.models import build_model, list_models, model_spec
from seglab.models.registry import resolve_model_options
from seglab.models.smp import ARCHITECTURES, input_multiple

QUIET = lambda *args, **kwargs: None  # noqa: E731
# The smallest options of each model, so that the whole set stays within a couple of minutes.
SMALL = {"unet": {"base_channels": 4, "depth": 2}, "deeplabv3": {"backbone": "resnet18", "output_stride": 16},
         **{name: {"encoder": a.smallest_encoder} for name, a in ARCHITECTURES.items()}}
ODD = (37, 53)


def small_options(name: str) -> dict:
    return dict(SMALL.get(name, {}))


# The smallest SMP-native encoder too: a torchvision ResNet, as SMP builds it, through every CNN architecture.
SHAPE_CASES = [(name, small_options(name)) for name in list_models()] + [
    (name, {"encoder": "resnet18"}) for name in sorted(ARCHITECTURES) if name != "smp-dpt"]


@pytest.mark.parametrize("name, options", SHAPE_CASES, ids=[f"{n}-{o.get('encoder', 'own')}" for n, o in SHAPE_CASES])
def test_every_model_runs_forward_and_backward_at_any_size(name, options):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=2, **options).train()
    for height, width in ((64, 64), ODD):
        out = model(torch.randn(2, 3, height, width))
        out = out["out"] if isinstance(out, dict) else out
        assert out.shape == (2, 2, height, width)
        out.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model_spec(name).summary  # `seglab train -h` and `seglab models` have a line for it


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_the_declared_input_multiple_is_the_built_models(name):
    options = resolve_model_options(name, small_options(name))
    model = build_model(name, in_channels=1, num_classes=1, **small_options(name))
    assert (model.input_multiple, model.min_input_size) == input_multiple(ARCHITECTURES[name], options)


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_predicts_and_exports(name, isbi_subset, tmp_path):
    run = seglab.train(isbi_subset, model=name, **small_options(name), epochs=1, batch_size=2, crop=64,
                       augment="none", validation=20, device="cpu", out=tmp_path / "run", progress=False, log=QUIET)
    assert run.best_checkpoint.is_file() and len(run.rows) == 1

    # A crop of a real slice whose sides are multiples of nothing, whole and in tiles.
    image = read_image(isbi_subset / "images" / "00.png")[:101, :127]
    whole = seglab.load(run.best_checkpoint).predict(image)
    tiled = seglab.load(run.best_checkpoint, tile=(64, 64), overlap=0.25).predict(image)
    assert whole.mask.shape == tiled.mask.shape == (101, 127)
    assert whole.probabilities.shape[-2:] == (101, 127) and np.isfinite(tiled.probabilities).all()

    parity = [image[:45, :61], image[:45, :61], image[50:90, 7:57]]  # odd sizes, a batch of two
    refusals = getattr(build_model(name, in_channels=1, num_classes=1, **small_options(name)), "export_refusals", {})
    exported = 0
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
        out = tmp_path / f"model{suffix}"
        if fmt in refusals:
            with pytest.raises(SeglabError, match=f"{name} cannot be exported to {fmt}: "):
                seglab.export(run.best_checkpoint, fmt, out, parity_images=parity)
            assert not out.exists()
            continue
        report = seglab.export(run.best_checkpoint, fmt, out, parity_images=parity)
        assert report["max_abs_diff"] <= 1e-4 and out.is_file()
        exported += 1
        if fmt == "onnx":
            break  # the TorchScript path is proven by the models ONNX refuses, and by test_export
    assert exported or name == "smp-dpt"


def test_options_of_one_architecture_are_checked_as_the_others(isbi_subset, tmp_path):
    with pytest.raises(seglab.ConfigError, match=r"invalid model.output_stride \(--output-stride\): 32; "
                                                 "expected one of: 8, 16"):
        seglab.train(isbi_subset, model="smp-deeplabv3", output_stride=32, out=tmp_path / "x", log=QUIET)
    with pytest.raises(seglab.ConfigError, match="did you mean resnet34"):
        build_model("smp-unet", encoder="resnt34")
    with pytest.raises(seglab.ConfigError, match="unknown option 'encoder' in the options of model 'unet'"):
        seglab.train(isbi_subset, encoder="resnet18", out=tmp_path / "y", log=QUIET)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_smp_options_are_flags_yaml_keys_and_keywords_alike():
    fields = {f.name for f in dataclasses.fields(model_spec("smp-deeplabv3plus").options)}
    assert {"encoder", "encoder_weights", "weights_dir", "encoder_depth", "output_stride"} <= fields
    stored = model_spec("smp-unet").stored(resolve_model_options("smp-unet", {"encoder_weights": "imagenet"}))
    assert "encoder_weights" not in stored and "weights_dir" not in stored and stored["encoder"] == "resnet34"
    assert resolve_model_options("smp-unet", {"encoder_weights": "none"})["encoder_weights"] is None


def test_the_u_nets_pooling_without_gradients_equals_max_pooling():
    """HalvingMaxPool's strided maxima give nn.MaxPool2d(2)'s values on odd and even sizes, in
    both memory layouts and in bf16; with gradients it is the pooling itself (same gradients)."""
    from seglab.models.unet import HalvingMaxPool

    pool, reference = HalvingMaxPool(), torch.nn.MaxPool2d(2)
    for shape, dtype, layout in [((2, 3, 7, 9), torch.float32, torch.contiguous_format),
                                 ((1, 16, 64, 48), torch.bfloat16, torch.channels_last)]:
        x = torch.randn(shape).to(dtype).contiguous(memory_format=layout)
        with torch.no_grad():
            assert torch.equal(pool(x), reference(x))
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    pool(x).sum().backward()
    assert x.grad.sum() == 9 * 2 and set(x.grad.unique().tolist()) == {0.0, 1.0}  # one winner per window
