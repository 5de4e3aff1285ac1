"""Imports run downward between the packages (docs/architecture.md, "Layers").

serving_runtime < registry < components < pipelines < app: a package imports itself and the
packages below it, never one above. ``shipyard.zoo`` (the built-in models) is a leaf: it imports
no other package, and only components, pipelines, app and benchmarks import it. Every import
statement counts, also the ones inside functions (ast walks the whole module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Root folder -> layer name (the folder's import name is in pyproject's package-dir).
FOLDERS = {
    "serving_runtime": "serving_runtime",
    "registry": "registry",
    "components": "components",
    "pipelines": "pipelines",
    "app": "app",
    "zoo": "zoo",
    "benchmarks": "benchmarks",
}
ORDER = ["serving_runtime", "registry", "components", "pipelines", "app"]
ZOO_USERS = {"zoo", "components", "pipelines", "app", "benchmarks"}


def target_layer(module: str) -> str | None:
    """The layer a ``shipyard...`` module belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] != "shipyard":
        return None
    if len(parts) > 1 and parts[1] in ("serving_runtime", "registry", "components", "pipelines", "zoo"):
        return parts[1]
    return "app"  # shipyard, shipyard.cli, shipyard.demo: the root package is app/


def allowed(importer: str, target: str) -> bool:
    if importer == target or importer == "benchmarks":
        return True
    if target == "zoo":
        return importer in ZOO_USERS
    if importer == "zoo":
        return False
    return ORDER.index(target) < ORDER.index(importer)


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``tree``; ``from shipyard import x`` counts as shipyard.x."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "shipyard":
                found.extend((node.lineno, f"shipyard.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, node.module))
    return found


def violations(importer: str, source: str, filename: str) -> list[str]:
    """One line per upward import in ``source`` (a module of layer ``importer``)."""
    bad = []
    for line, module in imported_modules(ast.parse(source, filename)):
        target = target_layer(module)
        if target is not None and not allowed(importer, target):
            bad.append(f"{filename}:{line}: {importer} imports {module} ({target} is not below {importer})")
    return bad


def test_no_package_imports_upward() -> None:
    bad: list[str] = []
    checked = 0
    for folder, layer in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad.extend(violations(layer, path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))))
            checked += 1
    assert checked > 100  # the walk found the packages
    assert not bad, "imports that run upward (see docs/architecture.md, Layers):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        ("registry", "from shipyard.components.digest import sha256_file\n", 1),
        ("components", "def f():\n    from shipyard.pipelines.steps import export_step\n", 1),
        ("serving_runtime", "from shipyard import registry\n", 1),
        ("serving_runtime", "import shipyard.zoo\n", 1),
        ("zoo", "from shipyard.serving_runtime import errors\n", 1),
        ("app", "from shipyard.pipelines import steps\nfrom shipyard.zoo import torch_model\n", 0),
        ("components", "from shipyard.registry import record_lineage\nimport numpy\n", 0),
        ("pipelines", "from shipyard.components import stages\n", 0),
    ],
)
def test_the_check_sees_upward_imports(importer: str, source: str, expected: int) -> None:
    assert len(violations(importer, source, "x.py")) == expected


def test_the_typecheck_tree_mirrors_the_package() -> None:
    """mypy checks ``typecheck/shipyard`` (pyproject), a tree of symlinks laid out as the installed
    package, so that ``shipyard.*`` imports resolve and types are checked across modules; every
    module of app/ and every subpackage folder must be linked there."""
    tree = ROOT / "typecheck" / "shipyard"
    expected = {p.name for p in (ROOT / "app").glob("*.py")} | {"serving_runtime", "registry", "components",
                                                                "pipelines", "zoo"}  # fmt: skip
    linked = {p.name for p in tree.iterdir()}
    assert linked == expected, f"typecheck/shipyard differs from the package: add or remove {linked ^ expected}"
    for entry in tree.iterdir():
        assert entry.is_symlink() and entry.exists(), f"{entry} must be a symlink that resolves"
