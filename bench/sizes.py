"""`make sizes`: the modules and functions in proxy/ over issue 18's bounds.

A module over ``MODULE_LINES`` lines, or a function (or method) over ``FUNCTION_LINES``
lines from its ``def`` to its last line, is printed with its size, longest first. Read with
``ast``, so nothing is imported. Exit 0 either way: this reports, the reviewer decides.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_LINES = 450
FUNCTION_LINES = 50

Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Size:
    where: str  # path, or path:line qualified.name
    lines: int


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, Function]]:
    """Every function and method, nested ones included, with its qualified name."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def function_lines(node: Function) -> int:
    return (node.end_lineno or node.lineno) - node.lineno + 1


def oversized(package: Path, module_lines: int, function_lines_max: int
              ) -> tuple[list[Size], list[Size]]:  # fmt: skip
    """(modules, functions) over the bounds, longest first."""
    modules, funcs = [], []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(package.parent).as_posix()
        n = len(text.splitlines())
        if n > module_lines:
            modules.append(Size(name, n))
        for qualified, node in functions(ast.parse(text, filename=str(path))):
            size = function_lines(node)
            if size > function_lines_max:
                funcs.append(Size(f"{name}:{node.lineno} {qualified}", size))
    key = lambda s: (-s.lines, s.where)  # noqa: E731
    return sorted(modules, key=key), sorted(funcs, key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=ROOT / "proxy")
    parser.add_argument("--module-lines", type=int, default=MODULE_LINES)
    parser.add_argument("--function-lines", type=int, default=FUNCTION_LINES)
    args = parser.parse_args()
    modules, funcs = oversized(args.package, args.module_lines, args.function_lines)
    print(f"modules over {args.module_lines} lines: {len(modules)}")
    for size in modules:
        print(f"  {size.lines:5d}  {size.where}")
    print(f"functions over {args.function_lines} lines: {len(funcs)}")
    for size in funcs:
        print(f"  {size.lines:5d}  {size.where}")


if __name__ == "__main__":
    main()
