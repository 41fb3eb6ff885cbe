"""The import graph points down only (docs/ARCHITECTURE.md, "Layers"): `main.py` → `runners/` → core modules →
`models/`, `multicoil/` → `utils/`.

Every import statement of the project's source files (module level or inside functions) is read with `ast`.
"""
from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = {"sde_lib", "sampling", "losses", "datasets", "baselines"}
# Layer of a file (by its top-level module or folder) -> the project modules it may import.
ALLOWED = {
    "utils": {"utils"},
    "models": {"utils", "models"},
    "multicoil": {"utils", "multicoil"},
    "core": {"utils", "models", "multicoil"},
    "configs": {"configs"},
    "data_prepare": {"utils", "models", "multicoil", "data_prepare", "configs"} | CORE,
    "runners": {"utils", "models", "multicoil", "runners", "configs"} | CORE,
    "main": {"runners"},
}


def project_modules() -> set[str]:
    """Top-level module names of the repository: `*.py` files and folders with `__init__.py` or Python files."""
    names = set()
    for entry in os.listdir(REPO):
        path = os.path.join(REPO, entry)
        if entry.endswith(".py"):
            names.add(entry[:-3])
        elif os.path.isdir(path) and not entry.startswith(".") and any(f.endswith(".py") for f in os.listdir(path)):
            names.add(entry)
    return names


def layer(relpath: str) -> str | None:
    """The layer of a file path relative to the repository (None: not layered, e.g. tests and bench)."""
    top = relpath.split(os.sep)[0]
    top = top[:-3] if top.endswith(".py") else top
    if top in CORE:
        return "core"
    return top if top in ALLOWED else None


def imported_modules(source: str, relpath: str) -> set[str]:
    """Top-level names of every module imported by `source` (relative imports resolved against `relpath`)."""
    names = set()
    for node in ast.walk(ast.parse(source, relpath)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(relpath.split(os.sep)[0] if node.level else node.module.split(".")[0])
    return names


def violations(source: str, relpath: str, project: set[str]) -> list[str]:
    """`"<file> imports <module>"` for each project import that the file's layer does not allow."""
    own = layer(relpath)
    if own is None:
        return []
    bad = (imported_modules(source, relpath) & project) - ALLOWED[own]
    return [f"{relpath} ({own}) imports {name} ({layer(name + '.py') or name})" for name in sorted(bad)]


def test_imports_point_down_only():
    project = project_modules()
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "bench", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    found += violations(f.read(), os.path.relpath(path, REPO), project)
    assert not found, ("imports against the layering (main → runners → core → models, multicoil → utils):\n"
                       + "\n".join(found))


def test_checker_finds_upward_imports():
    project = {"utils", "models", "runners", "datasets", "sampling", "main"}
    assert violations("import datasets\n", os.path.join("utils", "x.py"), project) == [
        f"{os.path.join('utils', 'x.py')} (utils) imports datasets (core)"]
    assert violations("def f():\n    from runners import train\n", "sampling.py", project)
    assert violations("from sampling import pc_sampler\n", "datasets.py", project)  # core imports no core
    assert violations("import sampling\n", "main.py", project)
    assert violations("import datasets\n", os.path.join("multicoil", "x.py"), project | {"multicoil"})
    assert not violations("from models import get_score_fn\nimport torch\n", "losses.py", project)
    assert not violations("import datasets\nfrom utils.mri import fft2c\n", os.path.join("runners", "x.py"), project)
