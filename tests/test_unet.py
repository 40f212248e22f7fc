"""U-Net geometry: "same" keeps any input size, "valid" is the paper's unpadded network (572 -> 388)."""
from __future__ import annotations

import pytest
import torch

from seglab.errors import SeglabError
from seglab.models import UNet, build_model, list_models
from seglab.models.outputs import full_size_logits


def tiny_unet(**kwargs) -> UNet:
    kwargs.setdefault("base_channels", 4)
    kwargs.setdefault("depth", 2)
    return UNet(**kwargs)


@pytest.mark.parametrize("up", ["transpose", "bilinear"])
@pytest.mark.parametrize("size", [(64, 64), (37, 51), (51, 37), (33, 17), (5, 7), (2, 3), (1, 1), (1, 9)])
def test_same_padding_output_has_the_input_size(size, up):
    model = tiny_unet(up=up).eval()  # eval: 1x1 bottlenecks cannot batch-normalise a single value
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 1, *size)


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_same_padding_works_at_other_depths_on_odd_sizes(depth):
    model = tiny_unet(depth=depth, base_channels=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 37, 51)).shape == (2, 1, 37, 51)


@pytest.mark.parametrize("in_channels,num_classes", [(1, 1), (1, 3), (3, 1), (3, 3)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_channels_in_and_classes_out(in_channels, num_classes, padding):
    model = tiny_unet(in_channels=in_channels, num_classes=num_classes, padding=padding).eval()
    size = 64 if padding == "same" else model.valid_input_size(20)
    out_size = size if padding == "same" else model.valid_output_size(size)
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes, out_size, out_size)


def test_valid_padding_reproduces_the_paper_572_to_388():
    model = UNet(in_channels=1, num_classes=2, base_channels=2, depth=4, padding="valid").eval()
    assert model.margin == 92
    assert model.valid_output_size(572) == 388
    assert model.valid_input_size(388) == 572
    with torch.no_grad():
        assert model(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("up", ["transpose", "bilinear"])
def test_valid_padding_non_square_input(up):
    model = tiny_unet(padding="valid", up=up).eval()
    h, w = model.valid_input_size(30), model.valid_input_size(47)
    with torch.no_grad():
        out = model(torch.randn(1, 1, h, w))
    assert out.shape == (1, 1, h - 2 * model.margin, w - 2 * model.margin)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_valid_input_and_output_sizes_agree(depth):
    model = UNet(base_channels=2, depth=depth, padding="valid")
    valid_inputs = [s for s in range(1, 400) if model.valid_output_size(s) is not None]
    assert valid_inputs, "no valid input size below 400"
    for size in valid_inputs:
        # Every valid input loses exactly the margin on each side.
        assert size - model.valid_output_size(size) == 2 * model.margin
    for wanted in range(1, 200):
        size = model.valid_input_size(wanted)
        assert model.valid_output_size(size) >= wanted
        # ... and it is the smallest such input.
        smaller = [s for s in valid_inputs if s < size]
        assert all(model.valid_output_size(s) < wanted for s in smaller)
    # Valid inputs of the unpadded U-Net are spaced by 2**depth.
    assert {b - a for a, b in zip(valid_inputs, valid_inputs[1:])} == {2 ** depth}


def test_valid_padding_refuses_an_unfitting_size_and_names_one_that_fits():
    model = UNet(base_channels=2, depth=4, padding="valid")
    with pytest.raises(ValueError) as info:
        model(torch.randn(1, 1, 570, 572))
    message = str(info.value)
    assert "570" in message
    assert "572" in message or "padding='same'" in message


def test_unknown_padding_and_upsampling_raise_value_errors():
    with pytest.raises(ValueError, match="padding"):
        UNet(padding="full")
    with pytest.raises(ValueError, match="up"):
        UNet(up="nearest")


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("up", ["transpose", "bilinear"])
def test_forward_backward_gives_every_parameter_a_finite_gradient(padding, up):
    torch.manual_seed(0)
    model = tiny_unet(in_channels=3, num_classes=3, padding=padding, up=up).train()
    size = 40 if padding == "same" else model.valid_input_size(8)
    logits = model(torch.randn(2, 3, size, size))
    target = torch.randint(0, 3, logits.shape[:1] + logits.shape[2:])
    loss = torch.nn.functional.cross_entropy(logits, target)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
    assert any(param.grad.abs().sum() > 0 for param in model.parameters())


@pytest.mark.parametrize("size", [(37, 51), (64, 64), (5, 3)])
def test_full_size_logits_of_a_valid_model_have_the_input_size(size):
    model = tiny_unet(padding="valid", num_classes=2).eval()
    with torch.no_grad():
        out = full_size_logits(model, torch.randn(1, 1, *size))
    assert out.shape == (1, 2, *size)
    assert torch.isfinite(out).all()


def test_full_size_logits_of_a_same_model_equal_its_forward():
    model = tiny_unet().eval()
    x = torch.randn(1, 1, 37, 51)
    with torch.no_grad():
        assert torch.equal(full_size_logits(model, x), model(x))


def test_full_size_logits_centre_matches_a_plain_valid_forward():
    """Mirror padding only adds context at the border: where the plain forward sees a whole
    valid input, full_size_logits must give the same numbers."""
    torch.manual_seed(0)
    model = tiny_unet(padding="valid").eval()
    size = model.valid_input_size(24)
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        plain = model(x)  # covers x[margin:-margin, margin:-margin]
        full = full_size_logits(model, x)
    m = model.margin
    torch.testing.assert_close(full[..., m:m + plain.shape[-2], m:m + plain.shape[-1]], plain)


def test_build_model_makes_a_unet_from_plain_arguments():
    assert "unet" in list_models()
    model = build_model("unet", in_channels=3, num_classes=2, base_channels=4, depth=2, up="bilinear",
                        padding="same")
    assert isinstance(model, UNet)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 20, 24)).shape == (1, 2, 20, 24)


def test_build_model_with_an_unknown_name_lists_the_known_ones():
    with pytest.raises(SeglabError) as info:
        build_model("unett", in_channels=1, num_classes=1)
    assert "unett" in str(info.value)
    assert "unet" in str(info.value).replace("unett", "")
