"""Prepare once, then fit: `seglab plan` writes the recipe that `seglab train --recipe` trains exactly,
`seglab train DATA` decodes each data file once before its first batch, and a bad recipe is one line."""
from __future__ import annotations

import builtins
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

import seglab.data.io as io
from conftest import TINY_FLAGS, assert_clean_failure, run_main
from seglab.engine.trainer import Trainer

# One epoch; the rest is the plan's. The plan picks the memory layout by timing both, which two plans
# on a busy machine may measure differently: the layout is given, so the configs compare exactly.
FLAGS = ("--epochs", 1, "--no-channels-last", *TINY_FLAGS)


@pytest.fixture(scope="module")
def counted_run(tmp_path_factory, isbi_subset) -> tuple[Path, dict[Path, int], dict[Path, int]]:
    """`seglab train DATA FLAGS` in this process (seglab.cli.main), with every decode of a data file
    (data.io's one Pillow decoder, behind read_image and read_mask) and every opening of one (by
    anything: `open`, which Pillow, tifffile and a PNG header read all call) counted per path until
    the first training step. Returns the run folder and those two counts."""
    out = tmp_path_factory.mktemp("counted") / "run"
    data_files = {str(path.resolve()) for path in isbi_subset.rglob("*.png")}
    decodes: Counter[Path] = Counter()
    opens: Counter[Path] = Counter()
    at_first_step: dict[str, dict[Path, int]] = {}
    real_decode, real_open, real_step = io._read_pil, builtins.open, Trainer._forward_backward

    def counting_decode(path, name=None):
        decodes[Path(path).resolve()] += 1
        return real_decode(path, name)

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and os.path.realpath(file) in data_files:
            opens[Path(os.path.realpath(file))] += 1
        return real_open(file, *args, **kwargs)

    def first_step(self, *args):
        if not at_first_step:
            at_first_step.update(decodes=dict(decodes), opens=dict(opens))
        return real_step(self, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(io, "_read_pil", counting_decode)
        patch.setattr(builtins, "open", counting_open)
        patch.setattr(Trainer, "_forward_backward", first_step)
        result = run_main("train", isbi_subset, "--out", out, *FLAGS)
    assert result.rc == 0, result.output
    return out, at_first_step["decodes"], at_first_step["opens"]


def test_seglab_train_reads_each_data_file_once_before_its_first_batch(counted_run, isbi_subset):
    run_dir, decodes, opens = counted_run
    files = {path.resolve() for kind in ("images", "masks") for path in (isbi_subset / kind).iterdir()}
    # the check, the class map, the fingerprint, the training batches and the validation images
    # all needed every file; each was decoded once, and its header (sizes, channels) read once
    assert decodes == {path: 1 for path in files}
    assert opens == {path: 2 for path in files}
    assert (run_dir / "recipe.yaml").is_file() and (run_dir / "config.yaml").is_file()


def test_plan_then_train_recipe_reproduces_the_run_of_train_data(counted_run, isbi_subset, tmp_path):
    run_dir = counted_run[0]
    recipe = tmp_path / "recipe.yaml"
    planned = run_main("plan", isbi_subset, *FLAGS, "-o", recipe)
    assert planned.rc == 0, planned.output
    assert f"seglab train --recipe {recipe}" in planned.stdout and "4 train / 1 val images" in planned.stdout
    text = recipe.read_text()
    assert text.startswith("# seglab recipe") and "reason:" in text  # the plan's choices, with their reasons

    trained = run_main("train", "--recipe", recipe, "--out", tmp_path / "run", "--no-progress")
    assert trained.rc == 0, trained.output

    def config(folder: Path) -> dict:
        values = yaml.safe_load((folder / "config.yaml").read_text())
        values.pop("out")
        return values

    assert config(tmp_path / "run") == config(run_dir)
    assert json.loads((tmp_path / "run" / "split.json").read_text()) == json.loads((run_dir / "split.json").read_text())


@pytest.mark.parametrize("change, flags, expected", [
    (lambda r, tmp: r["train"].update(epoch=3), (),
     "unknown option 'epoch' in config section 'train'; did you mean 'epochs'?"),
    (lambda r, tmp: r["split"]["train"][0].__setitem__(0, str(tmp / "gone.png")), (),
     "lists '{tmp}/gone.png', which does not exist"),
    (lambda r, tmp: r.update(splits=r["split"]), (), "unknown option 'splits' in the recipe; did you mean 'split'?"),
    (lambda r, tmp: None, ("--validation", 20), "--validation changes which files train"),
], ids=["unknown key", "missing file", "unknown section", "split flag beside it"])
def test_a_bad_recipe_is_one_line(counted_run, tmp_path, change, flags, expected):
    values = yaml.safe_load((counted_run[0] / "recipe.yaml").read_text())
    change(values, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values, sort_keys=False))
    result = run_main("train", "--recipe", recipe, "--out", tmp_path / "run", *flags, *TINY_FLAGS)
    assert_clean_failure(result)
    assert expected.format(tmp=tmp_path) in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr
    assert not (tmp_path / "run").exists()
