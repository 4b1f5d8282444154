"""DVC sees everything a stage reads: every project module a stage imports (directly, through other
modules, or inside functions) lies under one of that stage's deps in dvc.yaml. And the layers hold:
models/ imports no other project package, flows/ import no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = ("tasks", "models", "service", "genloop", "flows")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), or None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def name_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Project modules `path` imports anywhere in it (module level or inside functions). A module that
    imports by name at run time (importlib) is taken to import every module of its package."""
    me = name_of(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            folder = path.parent
            found |= {name_of(p) for p in folder.glob("*.py")}
    return {name for name in found if module_file(name) is not None}


def closure(module: str) -> set[Path]:
    """Every project source file loaded when `module` and what it imports are: its parents' __init__.py
    files included."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += imported(path)
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_imports_is_one_of_its_deps(stage):
    deps = STAGES[stage]["deps"]
    files = closure(f"tasks.{stage}")
    assert REPO / "tasks" / f"{stage}.py" in files
    missing = sorted(str(p.relative_to(REPO)) for p in files if not covered(p, deps))
    assert not missing, f"dvc.yaml: stage {stage} imports these but does not list them in its deps: {missing}"
    for dep in deps:
        assert (REPO / dep).exists() or dep.startswith(("data/", "artifacts/")), (
            f"{stage}: {dep} does not exist"
        )


def test_the_walk_follows_imports_inside_functions_and_packages():
    """The walker itself: evaluate imports torch-side code only inside run(), and must still see it."""
    files = {str(p.relative_to(REPO)) for p in closure("tasks.evaluate")}
    assert {"tasks/quality/gate.py", "tasks/registry/card.py", "tasks/__init__.py"} <= files
    assert {"models/vae.py", "models/gpt.py", "models/gan.py"} <= files  # through export's importlib
    assert not covered(REPO / "tasks/registry/card.py", ["tasks/evaluate.py", "tasks/core"])


def test_layers():
    """models/ imports only its own modules (torch, numpy); flows/ compose tasks and import no torch."""
    for path in (REPO / "models").glob("*.py"):
        assert {m.split(".")[0] for m in imported(path)} <= {"models"}, path
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert all(n.split(".")[0] not in ("prefect", "dvc", "bentoml", "pydantic") for n in names), (
                    path
                )
    for path in (REPO / "flows").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "lightning" not in text, path


def test_a_stage_imports_no_prefect_and_its_task_is_prefects():
    """`genloop stage <name>` (what DVC runs, once per stage) imports the stage's module for its `run`:
    Prefect, 2 s to import, comes in only when a flow calls the task, which is then Prefect's own."""
    import subprocess
    import sys

    stages = [name for name in STAGES if (REPO / "tasks" / f"{name}.py").is_file()] + ["deploy", "monitor"]
    code = (
        "import importlib, sys\n"
        f"for name in {stages!r}: importlib.import_module('tasks.' + name)\n"
        "assert 'prefect' not in sys.modules, 'prefect imported'\n"
        "from tasks.collect import collect_task\n"
        "from prefect import Task\n"
        "assert isinstance(collect_task._task, Task) and collect_task.name == 'collect'\n"
        "assert collect_task.retries == 2 and collect_task.__name__ == 'collect_task'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
