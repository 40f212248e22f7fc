"""Imports point one way: a module may import its own package and the layers below it, never above,
and the modules of a package import each other without a circle.

The layers (ARCHITECTURE.md): errors, version < options, padding, progress < data < metrics, models < losses
< config < runtime < engine, inference < viz < api < demo, serve < cli. Function-level imports count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "seglab"
RANKS = {
    "errors": 0, "version": 0, "lazy": 0,
    "options": 1, "padding": 1, "yaml_files": 1, "progress": 1,
    "data": 2,
    "metrics": 3, "models": 3,
    "losses": 4,
    "config": 5,
    "runtime": 6,
    "engine": 7, "inference": 7,
    "viz": 8,
    "api": 9,
    "__init__": 10,  # the package root re-exports the API
    "demo": 10,
    "serve": 10,     # the HTTP server: a user of the API, started by the cli
    "cli": 11,
    "__main__": 12,
}


def layer_of(path: Path, root: Path) -> str:
    """'engine' for engine/trainer.py, 'config' for config.py."""
    first = path.relative_to(root).parts[0]
    return first.removesuffix(".py")


def imported_layers(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, layer) of every seglab import in a module, at any depth."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "seglab":
                names = [f"seglab.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "seglab":
                found.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
    return found


def violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = layer_of(path, root)
        if source not in RANKS:
            problems.append(f"{path.relative_to(root)}: layer {source!r} has no rank in RANKS")
            continue
        for line, target in imported_layers(ast.parse(path.read_text())):
            if target == source:
                continue
            if target not in RANKS:
                problems.append(f"{path.relative_to(root)}:{line} imports unknown layer {target!r}")
            elif RANKS[target] >= RANKS[source]:
                problems.append(f"{path.relative_to(root)}:{line} ({source}) imports {target}, "
                                f"which is not below it")
    return problems


def test_imports_point_down_the_layers():
    assert violations(SRC) == []


def module_name(path: Path, root: Path) -> str:
    """'engine.trainer' for engine/trainer.py, 'api' for api/__init__.py."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(root: Path) -> dict[str, set[str]]:
    """Each module's imports of other modules of its own package, at any depth (a function-level
    import only hides a circle until that function runs)."""
    modules = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module.removeprefix("seglab").lstrip(".")
                if node.module.split(".")[0] == "seglab":
                    for alias in node.names:  # `from seglab.engine import runs` imports the module runs
                        full = f"{base}.{alias.name}" if base else alias.name
                        targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets |= {alias.name.removeprefix("seglab.") for alias in node.names
                            if alias.name.startswith("seglab.")}
        package = name.split(".")[0]
        graph[name] = {t for t in targets if t in modules and t != name and t.split(".")[0] == package}
    return graph


def import_circles(root: Path) -> list[str]:
    """Every circle of imports inside a package, once each: 'a -> b -> a'."""
    graph, circles = package_imports(root), set()

    def walk(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                circle = path[path.index(target):]
                start = circle.index(min(circle))  # one rotation per circle
                circles.add(" -> ".join(circle[start:] + circle[:start] + [min(circle)]))
            elif target > path[0]:  # each circle is found from its smallest module only
                walk(target, path + [target])

    for module in sorted(graph):
        walk(module, [module])
    return sorted(circles)


def test_no_package_imports_itself_in_a_circle():
    assert import_circles(SRC) == []


def test_the_circle_check_finds_a_function_level_circle(tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "training.py").write_text("def fit():\n    from seglab.api.folds import train_folds\n")
    (tmp_path / "api" / "folds.py").write_text("from seglab.api.training import Run\n")
    (tmp_path / "api" / "tools.py").write_text("from seglab.api import training\n")
    assert import_circles(tmp_path) == ["api.folds -> api.training -> api.folds"]


@pytest.mark.parametrize("module, line, expected", [
    ("engine/runlog.py", "    from seglab.viz.report import write_report\n", "imports viz"),
    ("inference/predictor.py", "from seglab.engine.checkpoint import load_checkpoint\n", "imports engine"),
    ("data/io.py", "import seglab.models\n", "imports models"),
    ("inference/export.py", "from seglab.demo import locate_isbi\n", "imports demo"),
    ("api/training.py", "from seglab import cli\n", "imports cli"),
])
def test_the_layer_check_catches_an_upward_import(tmp_path, module, line, expected):
    path = tmp_path / module
    path.parent.mkdir(parents=True)
    path.write_text("def late():\n    pass\n" + (line if not line.startswith(" ") else f"def f():\n{line}"))
    assert any(expected in problem for problem in violations(tmp_path))


MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def test_functions_and_modules_stay_small():
    """The house rules, kept by a test: no function over 60 lines, no module over 400 (split by role)."""
    long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {lines} lines")
    assert long == []
