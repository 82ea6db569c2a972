"""The packages are layers along the request path: a module imports only from its own
package, or from a package below it (siblings on one level do not import each other)."""

from __future__ import annotations

import ast
from pathlib import Path

PROXY = Path(__file__).resolve().parents[2] / "proxy"
# Top to bottom; packages on one row are siblings.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("testing",),
    ("cli",),
    ("web",),
    ("flow",),
    ("config",),
    ("slots",),
    ("backends",),
    ("rewrite", "dialects", "tokens", "records"),
    ("core",),
)
RANK = {package: rank for rank, row in enumerate(LAYERS) for package in row}


def imported_packages(path: Path) -> set[str]:
    """The proxy packages a module imports (``proxy.X...``), its own excluded."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "proxy" and len(parts) > 1 and parts[1] in RANK:
                out.add(parts[1])
    return out


def violations() -> list[str]:
    found = []
    for path in sorted(PROXY.rglob("*.py")):
        relative = path.relative_to(PROXY)
        if len(relative.parts) < 2:
            continue  # proxy/__init__.py, __main__.py
        own = relative.parts[0]
        assert own in RANK, f"{relative}: package {own!r} is in no layer"
        for other in imported_packages(path) - {own}:
            if RANK[other] <= RANK[own]:
                found.append(f"{relative} imports proxy.{other}")
    return found


def test_every_package_is_a_layer() -> None:
    packages = {p.name for p in PROXY.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK)


def test_no_module_imports_a_layer_above_or_a_sibling() -> None:
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from proxy.web.app import create_app\nimport proxy.core.log\n")
    assert imported_packages(module) == {"web", "core"}
