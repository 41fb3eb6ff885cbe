"""The config stops at the runners: no function of the library (`sampling.py`, `sde_lib.py`, `baselines.py`,
`losses.py`, `models/`, `utils/`) takes or reads a `config`, except a documented `from_config` constructor.

Read with `ast`: a parameter named `config`/`cfg`, a read of a name `config`/`cfg` or of an attribute `.config`, and
an import of `ml_collections` count; the body of a `from_config` function with a docstring is allowed.
"""
from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_FILES = ("sampling.py", "sde_lib.py", "baselines.py", "losses.py")
LIBRARY_FOLDERS = ("models", "utils")
NAMES = {"config", "cfg"}


def library_paths() -> list[str]:
    paths = [os.path.join(REPO, name) for name in LIBRARY_FILES]
    for folder in LIBRARY_FOLDERS:
        root = os.path.join(REPO, folder)
        paths += [os.path.join(root, f) for f in sorted(os.listdir(root)) if f.endswith(".py")]
    return paths


def config_uses(source: str, name: str) -> list[str]:
    """`"<name>:<line> <what>"` for every use of a config outside a documented `from_config` function."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "from_config" \
                and ast.get_docstring(node):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if arg is not None and arg.arg in NAMES:
                    found.append(f"{name}:{node.lineno} {getattr(node, 'name', 'lambda')} takes {arg.arg}")
        elif isinstance(node, ast.Name) and node.id in NAMES:
            found.append(f"{name}:{node.lineno} reads {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in NAMES and isinstance(node.ctx, ast.Load):
            found.append(f"{name}:{node.lineno} reads .{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "ml_collections" for m in modules):
                found.append(f"{name}:{node.lineno} imports ml_collections")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source, name))
    return found


def test_library_takes_no_config():
    found = []
    for path in library_paths():
        with open(path, encoding="utf-8") as f:
            found += config_uses(f.read(), os.path.relpath(path, REPO))
    assert not found, "the config reaches the library (resolve it in runners/build.py):\n" + "\n".join(found)


def test_checker_finds_every_kind_of_use():
    assert config_uses("def f(config):\n    pass\n", "x.py") == ["x.py:1 f takes config"]
    assert config_uses("def f(x, *, cfg=None):\n    return x\n", "x.py") == ["x.py:1 f takes cfg"]
    assert config_uses("def f(x):\n    return config.sampling.snr\n", "x.py") == ["x.py:2 reads config"]
    assert config_uses("class A:\n    def f(self):\n        return self.config.x\n", "x.py") == [
        "x.py:3 reads .config"]
    assert config_uses("import ml_collections\n", "x.py") == ["x.py:1 imports ml_collections"]
    assert config_uses("g = lambda config: 1\n", "x.py") == ["x.py:1 lambda takes config"]
    # A from_config constructor must say what it reads; a bare one counts.
    documented = ('class A:\n    @classmethod\n    def from_config(cls, config):\n        """Doc."""\n'
                  '        return config\n')
    assert config_uses(documented, "x.py") == []
    bare = "class A:\n    @classmethod\n    def from_config(cls, config):\n        return config\n"
    assert len(config_uses(bare, "x.py")) == 2
    assert config_uses("def f(settings):\n    return settings.config_path\n", "x.py") == []
