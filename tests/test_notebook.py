"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient), with a shorter
budget, and is committed without outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_the_notebook_is_committed_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)


@pytest.mark.slow
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    parameters.source = f'BUDGET = 2\nOUT = "{tmp_path / "run"}"'
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for kind, value in output.get("data", {}).items():
                shown.setdefault(kind, []).append(value)
    assert any("<pre>run " in value and "<img src='data:image/png;base64," in value  # the run and its curves
               for value in shown["text/html"])
    assert any("<img src='data:image/png;base64," in value for value in shown["text/html"])  # the prediction
    assert any("<table>" in value for value in shown["text/html"])                           # the evaluation
    agreement = float(notebook.cells[-1].outputs[0]["data"]["text/plain"].removeprefix("np.float64(").rstrip(")"))
    assert agreement > 0.99   # the ONNX export predicts the checkpoint's mask
