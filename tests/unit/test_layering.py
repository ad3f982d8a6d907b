"""The package's import order (docs/design.md, "Packages"): a stage imports only itself and the stages below it.

Checked on the source with ``ast`` (every ``import pcl.X`` / ``from pcl.X import ...``, type-checking imports
included), so a new upward import fails here, whatever imports at run time happen to be exercised.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

# low -> high; pcl/__init__.py and pcl/__main__.py belong to the top (cli)
ORDER = ("utils", "data", "model", "losses", "estep", "analysis", "methods", "run", "train", "config", "eval", "cli")


def stage_of(module: str) -> str:
    """``pcl.train.engine`` -> ``train``; ``pcl.config`` -> ``config``; ``pcl`` / ``pcl.__main__`` -> ``cli``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return "cli"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a ``pcl`` module in ``tree`` (relative imports resolved)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pcl"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name.split(".")[0] == "pcl":
                targets = [name] if name.count(".") >= 1 else [f"{name}.{a.name}" for a in node.names]
                out += [(node.lineno, t) for t in targets]
    return out


def upward_imports(files: dict[str, str]) -> list[str]:
    """``"module:line imports target (stage a < stage b)"`` for every import of a higher stage in ``files``
    (``{path relative to the repository: source}``)."""
    bad = []
    for rel, source in sorted(files.items()):
        path = ROOT / rel
        module = module_name(path)
        mine = ORDER.index(stage_of(module))
        for line, target in imported(ast.parse(source), module, path.name == "__init__.py"):
            theirs = stage_of(target)
            if theirs not in ORDER:
                bad.append(f"{rel}:{line} imports {target}: no stage {theirs!r} in the order")
            elif ORDER.index(theirs) > mine:
                bad.append(f"{rel}:{line} imports {target} ({stage_of(module)} < {theirs})")
    return bad


def package_sources() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / "pcl").rglob("*.py"))}


def test_every_stage_imports_only_itself_and_lower_stages() -> None:
    assert upward_imports(package_sources()) == []


def test_every_package_is_a_stage_of_the_order() -> None:
    stages = {stage_of(module_name(ROOT / rel)) for rel in package_sources()}
    assert stages <= set(ORDER) and set(ORDER) <= stages


@pytest.mark.parametrize(
    ("rel", "line"),
    [
        ("pcl/estep/estep.py", "from pcl.eval.evaluation import evaluate_run"),  # the circle of issue 25
        ("pcl/run/resume_check.py", "from pcl.config import Config"),
        ("pcl/model/encoder.py", "import pcl.train.engine"),
        ("pcl/train/engine.py", "from ..config import Config"),  # relative
    ],
)
def test_a_planted_upward_import_fails(rel: str, line: str) -> None:
    files = package_sources()
    files[rel] += f"\n{line}\n"
    bad = upward_imports(files)
    assert len(bad) == 1 and bad[0].startswith(f"{rel}:"), bad
