"""Test-time augmentation: transforms invert exactly, equivariant models are unchanged, others are not."""
import pytest
import torch

from seglab.inference.tiling import predict_tiled
from seglab.inference.tta import TRANSFORMS, apply_transform, invert_transform, tta_forward
from seglab.models import UNet


def _symmetric_conv() -> torch.nn.Conv2d:
    """3x3 convolution whose kernels are invariant under all 8 dihedral transforms
    (centre, edge and corner weights only), so conv(T(x)) == T(conv(x)) for every T."""
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    centre, edge, corner = torch.randn(3, 3, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    pattern = torch.tensor([[2.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 2.0]])
    with torch.no_grad():
        conv.weight.copy_(centre * (pattern == 0) + edge * (pattern == 1) + corner * (pattern == 2))
    return conv


def test_dihedral_transforms_are_distinct_and_invert():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)  # no symmetry, not square
    images = {tuple(apply_transform(x, k, mirror).flatten().tolist()) for k, mirror in TRANSFORMS["d4"]}
    assert len(images) == 8
    flips = [apply_transform(x, k, mirror) for k, mirror in TRANSFORMS["flips"]]
    for image, expected in zip(flips, [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]):
        assert torch.equal(image, expected)
    for k, mirror in TRANSFORMS["d4"]:
        assert torch.equal(invert_transform(apply_transform(x, k, mirror), k, mirror), x)


@pytest.mark.parametrize("mode", ["none", "flips", "d4"])
def test_identity_model_gives_back_the_input(mode):
    x = torch.rand(2, 3, 12, 20)  # non-square: d4 feeds (2, 3, 20, 12) too
    assert torch.allclose(tta_forward(lambda b: b, mode)(x), x, atol=1e-6)


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_tta_equals_plain_prediction_for_equivariant_models(mode):
    x = torch.rand(2, 2, 16, 24)
    conv = _symmetric_conv()
    pointwise = torch.nn.Conv2d(2, 3, 1)
    for model in (conv, pointwise):
        forward = lambda b, model=model: torch.softmax(model(b), dim=1)  # noqa: E731
        with torch.no_grad():
            assert torch.allclose(tta_forward(forward, mode)(x), forward(x), atol=1e-6)


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_tta_changes_prediction_of_non_equivariant_model(mode):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)  # random kernel: no symmetry
    forward = lambda b: torch.softmax(conv(b), dim=1)  # noqa: E731
    x = torch.rand(2, 2, 16, 24)
    with torch.no_grad():
        assert (tta_forward(forward, mode)(x) - forward(x)).abs().max() > 1e-2


def test_d4_runs_a_unet_on_non_square_input():
    model = UNet(1, 2, 8, depth=2).eval()
    forward = lambda b: torch.softmax(model(b), dim=1)  # noqa: E731
    with torch.no_grad():
        probs = tta_forward(forward, "d4")(torch.rand(2, 1, 12, 20))
    assert probs.shape == (2, 2, 12, 20)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 12, 20), atol=1e-5)


def test_tta_composes_with_tiling():
    conv = _symmetric_conv()
    forward = lambda b: torch.sigmoid(conv(b))  # noqa: E731
    image = torch.rand(2, 50, 70)
    plain = predict_tiled(forward, image, tile=(24, 32), overlap=0.5)
    augmented = predict_tiled(tta_forward(forward, "d4"), image, tile=(24, 32), overlap=0.5)
    assert augmented.shape == (3, 50, 70)
    assert torch.allclose(augmented, plain, atol=1e-6)


def test_none_is_the_forward_itself_and_bad_modes_are_refused():
    def forward(b):
        return b

    assert tta_forward(forward, "none") is forward
    with pytest.raises(ValueError, match="d4"):
        tta_forward(forward, "rot90")
