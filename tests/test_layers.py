"""Layers point down: a module never imports one from a higher layer.

The layers and the forbidden imports are read from the import-linter contracts in
``pyproject.toml`` (which ``.ci/run`` checks with ``lint-imports``); this test parses every
module's imports with :mod:`ast`, function-level and ``TYPE_CHECKING`` ones included, so an
upward import also fails under plain pytest.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sttrouter"


def _contracts() -> list[dict[str, Any]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _layer_contract() -> dict[str, Any]:
    (contract,) = [c for c in _contracts() if c["type"] == "layers"]
    return contract


def layer_index(layers: Sequence[str]) -> dict[str, int]:
    """Top-level module name -> rank (0 = lowest layer). Layers are listed highest first."""
    ranks: dict[str, int] = {}
    for rank, layer in enumerate(reversed(layers)):
        for name in layer.replace("|", ":").split(":"):
            ranks[name.strip().strip("()")] = rank
    return ranks


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every module ``source`` imports, absolute, with its line (``from x import y`` yields
    ``x.y``, which may be a module or a name in ``x``)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def _top(name: str) -> str | None:
    """The top-level module of the package ``name`` lies in, or None outside it. Importing a
    name from the package root (``from sttrouter import X``) is the application API, which
    re-exports every layer: only the top layer may use it."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else ""


def upward_imports(root: Path, layers: Sequence[str]) -> list[str]:
    """``"a (layer) imports b (higher layer), line n"`` for every upward import under
    ``root/sttrouter``; a module in no layer is reported too."""
    ranks = layer_index(layers)
    top_rank = max(ranks.values())  # the package root: only the faces may import from it
    problems: list[str] = []
    pkg_dir = root / PACKAGE
    modules = {p.stem if p.is_file() else p.name for p in pkg_dir.iterdir()}
    for path in sorted(pkg_dir.rglob("*.py")):
        module = module_name(path, root)
        own = module.split(".")[1] if "." in module else ""
        if own == "":
            continue  # the package root re-exports the application API from every layer
        if own not in ranks:
            problems.append(f"{module} is in no layer")
            continue
        source = path.read_text(encoding="utf-8")
        for target, line in imported_modules(source, module, path.name == "__init__.py"):
            top = _top(target)
            if top is None or top == own:
                continue
            if top == "" or top not in modules:
                rank, where = top_rank, PACKAGE
            else:
                rank, where = ranks.get(top, top_rank), f"{PACKAGE}.{top}"
            if rank > ranks[own]:
                problems.append(
                    f"{module} imports {target} (from {where}, a higher layer), line {line}"
                )
    return problems


def forbidden_imports(root: Path, contract: Mapping[str, Any]) -> list[str]:
    forbidden = tuple(contract["forbidden_modules"])
    problems: list[str] = []
    for source_module in contract["source_modules"]:
        base = root.joinpath(*source_module.split("."))
        paths = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
        for path in paths:
            module = module_name(path, root)
            source = path.read_text(encoding="utf-8")
            for target, line in imported_modules(source, module, path.name == "__init__.py"):
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    problems.append(f"{module} imports {target}, line {line}")
    return problems


def test_no_module_imports_from_a_higher_layer() -> None:
    assert upward_imports(ROOT, _layer_contract()["layers"]) == []


@pytest.mark.parametrize(
    "contract",
    [c for c in _contracts() if c["type"] == "forbidden"],
    ids=lambda c: str(c["name"]),
)
def test_forbidden_imports(contract: dict[str, Any]) -> None:
    assert forbidden_imports(ROOT, contract) == []


# --- the checker itself --------------------------------------------------------------------------


def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


LAYERS = ["cli : gateway", "panel", "errors : endpoint"]


def test_the_checker_flags_an_upward_import_in_every_spelling(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "from sttrouter.cli import main\n",
            "errors.py": "def f():\n    from sttrouter.panel import router\n",
            "endpoint.py": "import sttrouter.errors\nfrom . import errors\n",
            "panel/__init__.py": "",
            "panel/router.py": "from ..cli import main\nfrom sttrouter import Router\n",
            "cli/__init__.py": "from sttrouter.panel import router\nfrom .. import gateway\n",
            "gateway.py": "from sttrouter import cli\n",
        },
    )
    assert upward_imports(root, LAYERS) == [
        "sttrouter.errors imports sttrouter.panel.router (from sttrouter.panel, a higher layer), "
        "line 2",
        "sttrouter.panel.router imports sttrouter.cli.main (from sttrouter.cli, a higher layer), "
        "line 1",
        "sttrouter.panel.router imports sttrouter.Router (from sttrouter, a higher layer), line 2",
    ]


def test_the_checker_reports_a_module_in_no_layer(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"errors.py": "", "stray.py": "import sttrouter.errors\n"})
    assert upward_imports(root, LAYERS) == ["sttrouter.stray is in no layer"]


def test_the_forbidden_checker(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {"panel/__init__.py": "", "panel/a.py": "import asyncio.tasks\nimport asyncore\n"},
    )
    contract = {"source_modules": ["sttrouter.panel"], "forbidden_modules": ["asyncio"]}
    assert forbidden_imports(root, contract) == ["sttrouter.panel.a imports asyncio.tasks, line 1"]
