"""seglab as users install it: a wheel, outside any checkout.

`python -m build` makes an sdist and a wheel from that sdist. The wheel carries the ISBI 2012 slices
as package data, so the installed `seglab demo` trains on them with no data folder, and `seglab
serve` serves the model it trained. The installed venv is fresh and lies outside the source tree;
its dependencies are this test venv's packages (a .pth line puts them on its path: no second torch
is installed), and pip resolves the wheel's declared requirements against them with no index and no
settings, so a requirement the wheel needs and nothing provides fails the install as it would for a
user. The checkout's editable seglab is not on that path: seglab itself comes from the wheel alone.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from conftest import REPO, SUBPROCESS_ENV, start_server
from seglab.version import __version__

pytestmark = pytest.mark.packaging
BUNDLED = REPO / "data" / "isbi2012"


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """`python -m build` of the checkout: the sdist, and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend is this venv's setuptools (the test extra names it), so the
    # test reaches no package index.
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = {"sdist": out / f"seglab-{__version__}.tar.gz", "wheel": out / f"seglab-{__version__}-py3-none-any.whl"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in built.values())
    return built


def test_the_wheel_carries_the_isbi_slices_the_licence_and_the_version(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        for source in (p for p in BUNDLED.rglob("*") if p.is_file()):
            packaged = f"seglab/data/isbi2012/{source.relative_to(BUNDLED).as_posix()}"
            assert wheel.read(packaged) == source.read_bytes(), packaged
        info = f"seglab-{__version__}.dist-info"
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert sum(name.endswith(".png") for name in names if "/isbi2012/" in name) == 90
    assert {"seglab/serve/static/index.html", f"{info}/licenses/LICENSE"} <= names
    assert metadata["Version"] == __version__ and metadata["License-Expression"] == "MIT"
    assert "serve" in metadata.get_all("Provides-Extra")
    assert any(r.startswith("torch") for r in metadata.get_all("Requires-Dist"))
    assert "seglab = seglab.cli:main" in entry_points
    with tarfile.open(dist["sdist"]) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"setup.py", "LICENSE", "CHANGELOG.md", "CITATION.cff", "data/isbi2012/train/masks/29.png"} <= members


def test_the_release_files_name_the_version_of_version_py():
    """src/seglab/version.py is the one place: pyproject reads it, and this test holds the others to it
    (the newest numbered CHANGELOG section; an [Unreleased] one may stand above it)."""
    citation = (REPO / "CITATION.cff").read_text()
    assert re.search(r'^version: "?([^"\n]+)"?$', citation, re.M).group(1) == __version__
    assert re.search(r"^## \[(\d[^\]]*)\]", (REPO / "CHANGELOG.md").read_text(), re.M).group(1) == __version__
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "the seglab authors" in licence
    assert 'license = "MIT"' in (REPO / "pyproject.toml").read_text()


def test_the_dockerfile_pins_the_torch_of_the_makefile():
    makefile = re.search(r"^TORCH_PINS := (.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    dockerfile = re.search(r'^ARG TORCH_PINS="(.+)"$', (REPO / "Dockerfile").read_text(), re.M).group(1)
    assert dockerfile.split() == makefile.split()


def installed_env() -> dict[str, str]:
    """A user's environment: no checkout data folder, no path into the source tree, no pip settings."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("SEGLAB_DATA", "PYTHONPATH") and not key.startswith("PIP_")}
    return {**env, **SUBPROCESS_ENV, "PIP_CONFIG_FILE": os.devnull}


def install_wheel(wheel: Path, venv: Path) -> Path:
    """A fresh venv at `venv` holding the wheel (with the serve extra); returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test-venv-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([python, "-m", "pip", "install", "--no-index", f"{wheel}[serve]"], capture_output=True,
                          text=True, env=installed_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Successfully installed seglab-{__version__}\n" in done.stdout, done.stdout[-3000:]
    return site


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_and_serves_its_model_outside_the_checkout(dist, tmp_path):
    site = install_wheel(dist["wheel"], tmp_path / "venv")
    seglab = tmp_path / "venv" / "bin" / "seglab"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=elsewhere, env=installed_env(), capture_output=True,
                              text=True, timeout=timeout)

    where = run(tmp_path / "venv" / "bin" / "python", "-c", "import seglab; print(seglab.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    assert run(seglab, "--version").stdout.strip() == f"seglab {__version__}"

    demo = run(seglab, "demo", "--time-budget", 2, "--no-progress", "--out", "demo", "--device", "cpu", timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert f" on {(site / 'seglab' / 'data' / 'isbi2012').resolve()}, slices 00-24 train" in demo.stdout
    summary = json.loads((elsewhere / "demo" / "demo_summary.json").read_text())
    assert 0.0 <= summary["pixel_error"] <= 1.0
    assert len(list((elsewhere / "demo" / "predictions").glob("*_mask.png"))) == 30

    server = start_server("-m", "demo/last.pt", "--device", "cpu", program=seglab, cwd=elsewhere)
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=30) as reply:
            assert reply.status == 200 and json.load(reply)["status"] == "ok"
    finally:
        assert server.stop() == 0, "".join(server.stderr)[-3000:]
