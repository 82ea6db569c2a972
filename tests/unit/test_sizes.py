"""bench/sizes.py (`make sizes`): what it counts as a module's and a function's size."""

from __future__ import annotations

from pathlib import Path

from bench.sizes import Size, oversized


def body(n: int) -> str:
    return "".join(f"    x{i} = {i}\n" for i in range(n))


def test_modules_and_functions_over_the_bounds(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "small.py").write_text("def f():\n" + body(3))  # 4 lines
    (package / "sub" / "big.py").write_text(
        "class C:\n"
        "    async def m(self):\n" + body(5).replace("    ", "        ")  # m: 6 lines
        + "def outer():\n"
        "    def inner():\n" + body(2).replace("    ", "        ")  # inner: 3, outer: 4
    )  # fmt: skip
    modules, functions = oversized(package, module_lines=5, function_lines_max=3)
    assert modules == [Size("pkg/sub/big.py", 11)]
    assert functions == [
        Size("pkg/sub/big.py:2 C.m", 6),
        Size("pkg/small.py:1 f", 4),
        Size("pkg/sub/big.py:8 outer", 4),
    ]
