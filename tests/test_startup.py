"""The command starts at once: help, --version and `seglab check` import no torch, `import seglab` imports
it only when a name needs it, and a prediction imports nothing it does not use.

Each case runs in a fresh interpreter, as a user starts the command, and reads which top-level
packages the process imported by the time it exited. Wall times are bounded generously, for a
busy shared machine; the quiet targets (2-core machine, BENCHMARKS.md, `benchmarks/startup.py`)
are 0.3 s for `seglab --version` and `seglab train -h` and 0.5 s for `import seglab`, where
importing torch alone takes 2.2 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SUBPROCESS_ENV
from seglab.cli import build_parser

# Runs `seglab ARGS` through the command's entry point, then writes the top-level packages the
# process imported (when it exits, whatever the exit) to the file named by the first argument.
PROBE = """
import atexit, json, sys
out, sys.argv = sys.argv[1], ["seglab", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted({m.split(".")[0] for m in sys.modules}))))
from seglab.cli import main
sys.exit(main())
"""
# What costs start-up time: none of it is needed to print help or the version.
HEAVY = {"torch", "torchvision", "numpy", "PIL", "scipy", "skimage", "matplotlib", "tifffile", "yaml",
         "segmentation_models_pytorch", "timm", "fastapi", "uvicorn", "tensorboard"}
# `seglab check` reads images (numpy, Pillow) and needs nothing else of that list.
HEAVY_FOR_CHECK = HEAVY - {"numpy", "PIL"}
# A one-image prediction needs torch, numpy and Pillow; instances (scipy, skimage), figures
# (matplotlib), TIFF files, YAML configs, torchvision's backbones, SMP and the server are for others.
UNUSED_BY_PREDICT = HEAVY - {"torch", "numpy", "PIL"}
BOUND_SECONDS = 1.5  # five times the quiet target of 0.3 s


def imported_by(tmp_path: Path, *args) -> tuple[int, set[str], str]:
    """(exit code, top-level packages imported, stderr) of `seglab ARGS` in a fresh interpreter."""
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **SUBPROCESS_ENV}, timeout=300)
    return done.returncode, set(json.loads(out.read_text())), done.stderr


def fastest_run(*command: str, runs: int = 3) -> float:
    """The shortest wall time of `command` in a fresh process over `runs` tries (the least disturbed)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, env={**os.environ, **SUBPROCESS_ENV}, timeout=120)
        times.append(time.perf_counter() - start)
        assert done.returncode == 0, done.stderr
    return min(times)


@pytest.mark.parametrize("args", [["--version"], ["-h"]] + [[name, "-h"] for name in sorted(build_parser().subcommands)]
                         + [["weights", "fetch", "-h"]], ids=" ".join)
def test_help_and_version_import_nothing_heavy(tmp_path, args):
    rc, modules, stderr = imported_by(tmp_path, *args)
    assert rc == 0, stderr
    assert modules & HEAVY == set(), f"`seglab {' '.join(args)}` imported {sorted(modules & HEAVY)}"


def test_check_reads_a_folder_without_torch(tmp_path, isbi_subset):
    rc, modules, stderr = imported_by(tmp_path, "check", isbi_subset)
    assert rc == 0, stderr
    assert modules & HEAVY_FOR_CHECK == set(), f"`seglab check` imported {sorted(modules & HEAVY_FOR_CHECK)}"


def test_a_one_image_prediction_imports_only_what_it_uses(tmp_path, checkpoint, isbi_subset):
    rc, modules, stderr = imported_by(tmp_path, "predict", "-m", checkpoint, "-i", isbi_subset / "images" / "00.png",
                                      "-o", tmp_path / "mask.png", "--device", "cpu")
    assert rc == 0 and (tmp_path / "mask.png").is_file(), stderr
    assert "torch" in modules
    assert modules & UNUSED_BY_PREDICT == set(), f"`seglab predict` imported {sorted(modules & UNUSED_BY_PREDICT)}"


# Names resolved lazily, then every public name; writes what it saw at each step.
IMPORT_PROBE = """
import json, sys
import seglab
seen = {"after_import": "torch" in sys.modules, "missing_from_dir": sorted(set(seglab.__all__) - set(dir(seglab)))}
report = seglab.check(sys.argv[1])
seen["check"] = [report.ok, "torch" in sys.modules]
seen["models"] = [seglab.list_models()[:3], "torch" in sys.modules]
from seglab import *  # noqa: F403  every name of __all__
from seglab.api import predict_files
from seglab.inference.predictor import Predictor
from seglab.models import DeepLabV3, UNet
seen["resolved"] = [Predictor is seglab.Predictor, predict_files is seglab.predict_files, callable(predict_files),
                    UNet.__module__, DeepLabV3.__module__, "UNet" in dir(seglab.models)]
print(json.dumps(seen))
"""


def test_import_seglab_imports_torch_only_when_a_name_needs_it(isbi_subset):
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(isbi_subset)], capture_output=True, text=True,
                          env={**os.environ, **SUBPROCESS_ENV}, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["after_import"] is False and seen["missing_from_dir"] == []
    assert seen["check"] == [True, False]
    assert seen["models"] == [["deeplabv3", "smp-deeplabv3", "smp-deeplabv3plus"], False]
    assert seen["resolved"] == [True, True, True, "seglab.models.unet", "seglab.models.deeplabv3", True]


@pytest.mark.parametrize("command", [["-m", "seglab", "--version"], ["-m", "seglab", "train", "-h"],
                                     ["-c", "import seglab"]], ids=" ".join)
def test_the_command_starts_within_its_bound(command):
    seconds = fastest_run(sys.executable, *command)
    assert seconds < BOUND_SECONDS, f"`python {' '.join(command)}` took {seconds:.2f} s (quiet target: 0.3-0.5 s)"
