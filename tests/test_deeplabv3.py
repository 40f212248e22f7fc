"""DeepLabV3: shapes for every backbone and output stride, dilation geometry, aux head, ImageNet weights offline."""
from __future__ import annotations

import os
import urllib.error

import pytest
import torch
import torch.nn as nn
import torchvision

from seglab.errors import SeglabError
from seglab.models import DeepLabV3, build_model, list_models
from seglab.models.deeplabv3 import dilate_stage, imagenet_weights_path

BACKBONES = ["resnet18", "resnet34", "resnet50", "resnet101"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.fixture
def hub_dir(tmp_path):
    """An empty torch hub cache for the test; the previous one is restored afterwards."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.fixture
def offline(monkeypatch):
    def refuse(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_logits_match_odd_input_size_and_backbone_has_output_stride(backbone, output_stride):
    torch.manual_seed(0)
    model = DeepLabV3(num_classes=3, backbone=backbone, output_stride=output_stride).eval()
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        logits = model(x)
        _, features = model.backbone(x)
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (1, 3, 65, 97)
    assert torch.isfinite(logits).all()
    expected = (_ceil_div(65, output_stride), _ceil_div(97, output_stride))
    assert features.shape[-2:] == expected
    assert features.shape[1] == model.backbone.out_channels


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilate_stage_reproduces_torchvision_dilated_geometry(output_stride):
    # torchvision dilates Bottleneck natively; our in-place conversion (needed for BasicBlock) must
    # give every conv the same stride, dilation and padding.
    dilated = [False, False, True] if output_stride == 16 else [False, True, True]
    native = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilated)
    converted = torchvision.models.resnet50(weights=None)
    dilation = 1
    for stage, dilate in zip((converted.layer2, converted.layer3, converted.layer4), dilated):
        if dilate:
            dilate_stage(stage, previous_dilation=dilation, dilation=dilation * 2)
            dilation *= 2

    def geometry(net):
        return [(name, m.stride, m.dilation, m.padding) for name, m in net.named_modules()
                if isinstance(m, nn.Conv2d)]

    assert geometry(converted) == geometry(native)


def test_resnet18_dilation_follows_previous_then_new_rate():
    backbone = DeepLabV3(num_classes=2, backbone="resnet18", output_stride=8).backbone
    layer3, layer4 = backbone.layer3, backbone.layer4
    assert layer3[0].conv1.stride == (1, 1) and layer3[0].downsample[0].stride == (1, 1)
    assert [b.conv1.dilation[0] for b in layer3] == [1, 2]
    assert [b.conv2.padding[0] for b in layer3] == [1, 2]
    assert [b.conv1.dilation[0] for b in layer4] == [2, 4]
    assert [b.conv2.padding[0] for b in layer4] == [2, 4]


@pytest.mark.parametrize("output_stride, rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_aspp_rates_double_at_output_stride_8(output_stride, rates):
    model = DeepLabV3(num_classes=2, backbone="resnet18", output_stride=output_stride)
    aspp = model.head[0]
    assert [branch[0].dilation[0] for branch in aspp.branches[1:4]] == rates


def test_single_channel_input():
    model = DeepLabV3(in_channels=1, num_classes=2, backbone="resnet18").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 33, 47))
    assert model.backbone.conv1.in_channels == 1
    assert logits.shape == (2, 2, 33, 47)


def test_aux_head_returns_dict_in_training_and_tensor_in_eval():
    torch.manual_seed(0)
    model = DeepLabV3(num_classes=4, backbone="resnet18", aux_head=True).train()
    x = torch.randn(2, 3, 49, 35)
    with torch.no_grad():
        outputs = model(x)
        assert set(outputs) == {"out", "aux"}
        assert outputs["out"].shape == (2, 4, 49, 35)
        assert outputs["aux"].shape == (2, 4, 49, 35)
        logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 4, 49, 35)


def test_training_step_with_batch_of_one_runs_image_pooling():
    torch.manual_seed(0)
    model = DeepLabV3(num_classes=3, backbone="resnet18").train()
    x = torch.randn(1, 3, 65, 97)
    target = torch.randint(0, 3, (1, 65, 97))
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.conv1.weight.grad is not None
    assert model.head[0].branches[-1].conv.weight.grad is not None


def test_tiny_input_trains_only_with_a_clear_error_but_predicts():
    model = DeepLabV3(num_classes=2, backbone="resnet18")
    with pytest.raises(SeglabError, match="1x1 feature map"):
        model.train()(torch.randn(1, 3, 16, 16))
    assert model(torch.randn(1, 3, 17, 3)).shape == (1, 2, 17, 3)  # 2x1 feature map: trains
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 9, 9)).shape == (1, 2, 9, 9)
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 2, 1, 1)


def test_build_model_by_name():
    assert "deeplabv3" in list_models()
    model = build_model("deeplabv3", in_channels=3, num_classes=5, backbone="resnet18", output_stride=8,
                        aspp_channels=64).eval()
    assert isinstance(model, DeepLabV3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 31, 17)).shape == (1, 5, 31, 17)


def test_unknown_backbone_is_a_user_error():
    with pytest.raises(SeglabError, match="resnet18"):
        DeepLabV3(num_classes=2, backbone="vgg16")


def test_offline_pretrained_names_file_and_url_on_one_line(hub_dir, offline):
    path = imagenet_weights_path("resnet18")
    assert path == os.path.join(str(hub_dir), "checkpoints", "resnet18-f37072fd.pth")
    with pytest.raises(SeglabError) as error:
        DeepLabV3(num_classes=2, backbone="resnet18", pretrained_backbone=True)
    message = str(error.value)
    assert "\n" not in message
    assert path in message
    assert torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url in message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert not os.path.exists(path)


def test_pretrained_weights_in_hub_cache_load_without_network(hub_dir, offline):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = imagenet_weights_path("resnet18")
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)

    model = DeepLabV3(num_classes=2, backbone="resnet18", pretrained_backbone=True)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.bn1.running_var, reference.bn1.running_var)

    gray = DeepLabV3(in_channels=1, num_classes=2, backbone="resnet18", pretrained_backbone=True)
    # averaged RGB filters, scaled so a gray image repeated over RGB keeps its activations
    expected = reference.conv1.weight.sum(dim=1, keepdim=True)  # (64, 1, 7, 7)
    torch.testing.assert_close(gray.backbone.conv1.weight, expected)


def test_corrupt_weights_file_is_a_one_line_user_error(hub_dir, offline):
    path = imagenet_weights_path("resnet18")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as file:
        file.write(b"<html>not a checkpoint</html>")
    with pytest.raises(SeglabError) as error:
        DeepLabV3(num_classes=2, backbone="resnet18", pretrained_backbone=True)
    assert path in str(error.value) and "\n" not in str(error.value)
