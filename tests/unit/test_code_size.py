"""Function size in the package: no function or method of ``pcl/`` is longer than 80 lines (``ast`` line spans,
docstring included); cyclomatic complexity is capped at 20 by ruff's C901 rule (``make lint``, pyproject.toml)."""

from __future__ import annotations

import ast

from tests.helpers import ROOT

MAX_LINES = 80


def long_functions(source: str, where: str, limit: int = MAX_LINES) -> list[str]:
    """``"where:line name (n lines)"`` for every function of ``source`` spanning more than ``limit`` lines."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append(f"{where}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_of_the_package_is_over_80_lines() -> None:
    found = []
    for path in sorted((ROOT / "pcl").rglob("*.py")):
        found += long_functions(path.read_text(), path.relative_to(ROOT).as_posix())
    assert found == []


def test_the_check_finds_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert long_functions(f"def f():\n{body}\n", "m.py") == [f"m.py:1 f ({MAX_LINES + 1} lines)"]
    assert long_functions("def g():\n    return 1\n", "m.py") == []
