"""The layout holds: imports point down the layers only, and modules and classes stay small.

The layers, top to bottom (docs/ARCHITECTURE.md draws them):

    cli -> serve, tasks -> training -> inference -> runs -> models, text -> errors, config, files, hardware

(serve, the HTTP server, uses inference and runs; only cli, which starts it, imports it.) A module may import its own layer and any layer below it, never one above; models and text
sit side by side and do not import each other. The training engine in particular never
imports charlm.tasks: a task plugs into it through training/task.py's interface.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "charlm"
LAYERS = {"cli": 7, "serve": 6, "tasks": 5, "training": 4, "inference": 3, "runs": 2, "models": 1, "text": 1}
CORE = 0  # errors.py, config.py, files.py, hardware.py
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(module: str) -> tuple[str, int]:
    """("tasks", 5) for charlm.tasks.lanes; ("core", 0) for charlm.errors and the like."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1], LAYERS[parts[1]]
    return "core", CORE


def imported_modules(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "charlm":
            if node.module == "charlm":
                found += [f"charlm.{alias.name}" for alias in node.names]
            elif node.module in (f"charlm.{name}" for name in LAYERS):  # from charlm.training import x
                found += [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "charlm"]
    return found


def module_name(path: Path) -> str:
    return ".".join(("charlm", *path.relative_to(PACKAGE).with_suffix("").parts))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    me = module_name(path)
    if me in ("charlm.__init__", "charlm.__main__"):
        return  # the front door re-exports from every layer
    my_name, my_rank = layer_of(me)
    for target in imported_modules(path):
        name, rank = layer_of(target)
        assert rank <= my_rank, f"{me} (layer {my_name}) imports {target} from the higher layer {name}"
        if rank == my_rank and rank != CORE:
            assert name == my_name, f"{me} imports {target}: {my_name} and {name} sit side by side"


def test_the_engine_knows_no_task():
    for path in (PACKAGE / "training").glob("*.py"):
        for target in imported_modules(path):
            assert not target.startswith("charlm.tasks"), f"{path.name} imports {target}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_small(path):
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines; split it by concern"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"class {node.name} in {path.name} has {size} lines"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_says_what_it_owns(path):
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring and len(docstring.split()) >= 5, f"{path.name} needs a docstring saying what it owns"


def test_library_code_never_prints():
    for path in modules():
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                raise AssertionError(f"{path.relative_to(PACKAGE)} line {node.lineno} prints; only charlm/cli talks")
