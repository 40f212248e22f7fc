"""The API's keywords are declared once: real signatures from the options, one-line refusals with the
nearest name for misspelt keywords, SMP's names for smp-* models, and "planned" in the help."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import seglab
from conftest import run_cli
from seglab.config import PLANNED
from seglab.errors import ConfigError
from seglab.serve.server import serve

PLAN_SOURCE = Path(__file__).resolve().parents[1] / "src" / "seglab" / "engine" / "plan.py"


def test_train_has_a_real_signature_with_every_option():
    parameters = inspect.signature(seglab.train).parameters
    learning_rate = parameters["learning_rate"]
    assert learning_rate.kind is inspect.Parameter.KEYWORD_ONLY and learning_rate.default == 1e-3
    assert learning_rate.annotation is float
    assert {"epochs", "crop", "base_channels", "encoder", "out", "model", "val_files"} <= set(parameters)
    for function in (seglab.fit, seglab.resume, seglab.prepare):
        assert "batch_size" in inspect.signature(function).parameters
    assert "learning_rate: peak learning rate [planned when not given]" in seglab.train.__doc__
    for function, names in ((seglab.load, {"threshold", "tile", "tta", "scale", "runtime", "device"}),
                            (seglab.evaluate, {"threshold", "tta", "device", "split", "instances"}),
                            (seglab.build_model, {"in_channels", "num_classes", "base_channels", "encoder"})):
        parameters = inspect.signature(function).parameters
        assert names <= set(parameters) and all(parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names)
    assert inspect.signature(seglab.load).parameters["tta"].default == "none"
    assert "seed_threshold: instances: boundary probability" in seglab.load.__doc__
    assert "base_channels: [unet] " in seglab.build_model.__doc__


@pytest.mark.parametrize("call, nearest", [
    (lambda: seglab.train("data/isbi2012", lr=1e-3), "learning_rate"),
    (lambda: seglab.prepare("data/isbi2012", epoch=3), "epochs"),
    (lambda: seglab.load("best.pt", treshold=0.4), "threshold"),
    (lambda: seglab.evaluate("best.pt", "data/isbi2012", overlapp=0.25), "overlap"),
    (lambda: seglab.predict_files("best.pt", ["x.png"], overlays=True), "overlay"),
    (lambda: seglab.check("data/isbi2012", num_class=2), "num_classes"),
    (lambda: seglab.build_model("unet", classes=3), "num_classes"),
    (lambda: serve("best.pt", max_bach=4), "max_batch"),
])
def test_a_misspelt_keyword_is_one_error_naming_the_nearest(call, nearest):
    with pytest.raises(ConfigError, match=f"did you mean '{nearest}'") as error:
        call()
    assert "\n" not in str(error.value)


def test_an_unknown_keyword_far_from_any_points_to_the_help_not_a_dump():
    with pytest.raises(ConfigError) as error:
        seglab.train("data/isbi2012", frobnicate=1)
    assert "help()" in str(error.value) and len(str(error.value)) < 160


def test_smp_models_take_smps_own_keyword_names():
    import torch

    model = seglab.build_model("smp-unet", encoder_name="resnet18", classes=3, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_the_plan_decides_what_the_help_calls_planned():
    chosen = {node.args[0].value for node in ast.walk(ast.parse(PLAN_SOURCE.read_text()))
              if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "choose"
              and node.args and isinstance(node.args[0], ast.Constant)}
    assert chosen == PLANNED
    result = run_cli("train", "-h")
    assert result.rc == 0
    helped = " ".join(result.output.split())
    assert "--epochs N" in helped or "--epochs" in helped
    assert helped.count("(default: planned from the data and the machine)") == len(PLANNED) - 1  # --model says it
    assert "(default: planned; unet)" in helped
