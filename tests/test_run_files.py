"""The run folder's files have one owner (runtime.run_files), and "best" one rule, in the direction the
monitored metric declares."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from seglab.config import MONITORS, monitor_mode
from seglab.errors import SeglabError
from seglab.runtime import run_files

SRC = Path(__file__).resolve().parents[1] / "src" / "seglab"
ROWS = [{"epoch": 1, "val_dice": 0.5, "val_loss": 0.40}, {"epoch": 2, "val_dice": math.nan, "val_loss": 0.30},
        {"epoch": 3, "val_dice": 0.7, "val_loss": 0.35}, {"epoch": 4, "val_dice": 0.7, "val_loss": 0.30},
        {"epoch": 5, "train_loss": 0.1}]


def test_best_row_follows_the_metrics_declared_direction():
    assert run_files.best_row(ROWS, "val_dice")["epoch"] == 3       # max; NaN skipped; the first of equals
    assert run_files.best_row(ROWS, "val_loss")["epoch"] == 2       # min
    assert run_files.best_row(ROWS, "val_miou") is None             # never scored
    assert set(MONITORS.values()) == {"max", "min"}
    with pytest.raises(SeglabError, match="cannot monitor 'val_lose'"):
        monitor_mode("val_lose")


def test_metrics_rows_round_trip_and_a_broken_line_is_named(tmp_path):
    run_files.start_metrics(tmp_path, ROWS[:2])
    run_files.append_metrics_row(tmp_path, ROWS[2])
    assert [r["epoch"] for r in run_files.read_metrics(tmp_path)] == [1, 2, 3]
    with open(tmp_path / run_files.METRICS_FILE, "a") as handle:
        handle.write('{"epoch": 4, "val_d\n')
    with pytest.raises(SeglabError, match="line 4 is not JSON"):
        run_files.read_metrics(tmp_path)
    assert run_files.read_summary(tmp_path) == {}


@pytest.mark.parametrize("name", ["metrics.jsonl", "summary.json", "split.json", "plan.json"])
def test_only_run_files_names_the_run_folders_files(name):
    """No other module spells these names: they read and write them through runtime.run_files."""
    spelling = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == name:
                spelling.setdefault(path.relative_to(SRC).as_posix(), []).append(node.lineno)
    spelling.pop("runtime/run_files.py", None)
    assert spelling == {}
