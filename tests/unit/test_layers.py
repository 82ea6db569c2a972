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


SERVER_KINDS = {"llama", "ollama"}
KIND_BRANCHES_ALLOWED: set[str] = set()


def kind_branches(path: Path) -> list[int]:
    """Lines comparing something's ``kind`` with a server kind's name."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names = {s.value for s in sides if isinstance(s, ast.Constant)}
        kinds = [s for s in sides if isinstance(s, ast.Attribute | ast.Name)
                 and (getattr(s, "attr", None) or getattr(s, "id", None)) == "kind"]  # fmt: skip
        if kinds and names & SERVER_KINDS:
            lines.append(node.lineno)
    return lines


def test_no_server_kind_branch_outside_the_backends() -> None:
    found = []
    for path in sorted(PROXY.rglob("*.py")):
        relative = path.relative_to(PROXY).as_posix()
        if relative.startswith("backends/") or relative in KIND_BRANCHES_ALLOWED:
            continue
        found += [f"{relative}:{line}" for line in kind_branches(path)]
    assert found == []


def test_the_branch_check_sees_a_kind_branch(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('if up.kind == "llama":\n    pass\nx = "ollama" != kind\n')
    assert kind_branches(module) == [1, 3]


def test_the_packaged_templates_are_found() -> None:
    from proxy.backends.embedded import NAMED_TEMPLATES

    assert all(path.is_file() for path in NAMED_TEMPLATES.values())
