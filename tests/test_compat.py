"""Files written by seglab 0.1.0 keep working: a checkpoint predicts as it did, a config.yaml loads;
and a run folder of seglab 0.2 (no recipe.yaml) resumes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import seglab
from conftest import TINY_FLAGS, TRAINED_EPOCHS, run_main
from seglab.config import config_to_dict, load_config
from seglab.data.io import read_mask

FIXTURE = Path(__file__).parent / "fixtures" / "v0.1.0"  # written by seglab 0.1.0 (commit 6d0420b)


def test_a_checkpoint_of_seglab_0_1_0_predicts_as_it_did():
    prediction = seglab.load(FIXTURE / "unet_tiny.pt", device="cpu").predict(FIXTURE / "input.png")
    np.testing.assert_allclose(prediction.probabilities, np.load(FIXTURE / "probabilities.npy"), atol=1e-6)
    assert np.array_equal(prediction.mask, read_mask(FIXTURE / "expected_mask.png"))


def test_the_cli_predicts_with_a_checkpoint_of_seglab_0_1_0(run_seglab, tmp_path):
    result = run_seglab("predict", "-m", FIXTURE / "unet_tiny.pt", "-i", FIXTURE / "input.png",
                        "-o", tmp_path / "mask.png", "--device", "cpu")
    assert result.rc == 0, result.output
    assert np.array_equal(read_mask(tmp_path / "mask.png"), read_mask(FIXTURE / "expected_mask.png"))


def test_a_config_yaml_of_seglab_0_1_0_loads_with_its_own_models_options():
    config = load_config(FIXTURE / "config.yaml")  # its model section lists every model's options
    assert config.model.name == "unet"
    assert config.model.resolved() == {"base_channels": 4, "depth": 2, "up": "transpose", "padding": "same",
                                       "batch_norm": True}
    assert config.data.crop == [64] and config.train.epochs == 2
    assert "backbone" not in config_to_dict(config)["model"]


def test_a_run_folder_of_seglab_0_2_without_a_recipe_resumes_on_its_own_split(trained_run, checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run_dir, ignore=shutil.ignore_patterns("recipe.yaml", "plan.json"))
    result = run_main("train", "--resume", run_dir, "--epochs", TRAINED_EPOCHS + 1, *TINY_FLAGS)
    assert result.rc == 0, result.output
    assert json.loads((run_dir / "split.json").read_text()) == json.loads(
        (trained_run.run_dir / "split.json").read_text())
    assert seglab.Recipe.load(run_dir / "recipe.yaml").config.train.epochs == TRAINED_EPOCHS + 1  # written now


def test_the_threshold_moved_to_postprocess_and_old_files_keep_theirs(tmp_path):
    """Checkpoints of seglab <= 0.2 kept the threshold in preprocess; newer ones under postprocess.
    Both load with their own threshold, and a Predictor holds it in its one InferenceOptions."""
    import torch

    from seglab.inference.options import InferenceOptions
    from seglab.runtime.checkpoint import make_checkpoint, postprocess_of, save_checkpoint

    old = torch.load(FIXTURE / "unet_tiny.pt", map_location="cpu", weights_only=True)
    assert "postprocess" not in old
    old["preprocess"]["threshold"] = 0.3
    save_checkpoint(old, tmp_path / "old.pt")
    model = seglab.load(tmp_path / "old.pt", device="cpu")
    assert model.threshold == 0.3 and model.options.threshold == 0.3 and model.options.scale == 1.0
    new = make_checkpoint(seglab.build_model("unet", **old["model"]["kwargs"]), "unet", old["model"]["kwargs"],
                          seglab.load(FIXTURE / "unet_tiny.pt", device="cpu").class_map, {"channels": 1},
                          postprocess={"threshold": 0.2})
    assert postprocess_of(new) == {"threshold": 0.2} and "threshold" not in new["preprocess"]
    save_checkpoint(new, tmp_path / "new.pt")
    assert seglab.load(tmp_path / "new.pt", device="cpu", scale=0.5).options == InferenceOptions(
        threshold=0.2, scale=0.5)


def test_an_old_option_name_in_a_config_loads_with_a_one_line_note(tmp_path, caplog):
    """data.ignore_value is data.ignore_index now (the flag's name); files with the old key keep loading."""
    path = tmp_path / "old.yaml"
    path.write_text("data:\n  root: data/isbi2012\n  ignore_value: 11\ntrain:\n  epochs: 2\n")
    with caplog.at_level("WARNING", logger="seglab"):
        config = load_config(path)
    assert config.data.ignore_index == 11
    assert [r.getMessage() for r in caplog.records] == [
        "note: data.ignore_value is now called data.ignore_index; the value is read as that"]
