"""The README's Python API script runs as written (with a tiny time budget), so the docs cannot drift."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO, SUBPROCESS_ENV

BUDGET = "time_budget=120"


def readme_block(heading: str) -> str:
    """The first ```python block under `heading` in README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


def test_the_python_api_script_of_the_readme_runs(tmp_path):
    code = readme_block("## Python API")
    assert BUDGET in code, "the README script's time budget changed: update BUDGET here"
    (tmp_path / "data").mkdir()
    os.symlink(REPO / "data" / "isbi2012", tmp_path / "data" / "isbi2012")
    script = tmp_path / "readme_script.py"
    script.write_text(code.replace(BUDGET, "time_budget=2"))
    env = {**os.environ, **SUBPROCESS_ENV, "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best val_dice" in done.stdout and "(512, 512) uint8 (1, 512, 512)" in done.stdout
    assert "membrane" in done.stdout and "pixel error" in done.stdout
    run_dir = tmp_path / "runs" / "python-api"
    assert all((run_dir / name).is_file() for name in ("best.pt", "last.pt", "report.html", "split.json"))


def test_the_python_client_of_the_serving_section_runs_against_a_server(served, tmp_path):
    code = readme_block("## Serving")
    (tmp_path / "data").mkdir()
    os.symlink(REPO / "data" / "isbi2012", tmp_path / "data" / "isbi2012")
    (tmp_path / "README.md").write_text("not an image\n")
    script = tmp_path / "client.py"
    script.write_text(code)
    env = {**os.environ, **SUBPROCESS_ENV, "SEGLAB_SERVER": served.url, "SEGLAB_TOKEN": served.token}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "class 0 (0, mask value 0):" in done.stdout and "class 1 (255, mask value 255):" in done.stdout
    assert "415 'upload' is not an image" in done.stdout, done.stdout
    assert (tmp_path / "00_mask.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
