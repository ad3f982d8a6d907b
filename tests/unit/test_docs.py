"""The README and ``docs/*.md`` stay true to the tree: short README, every linked file, repository path and
``pcl.`` name they mention exists."""

from __future__ import annotations

import importlib
import itertools
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# paths the programs create on first use (git-ignored), named in the docs on purpose
GENERATED = {"data/.cache"}
# a repository path in prose or code: starts at a top-level folder, not preceded by a path character
REPO_PATH = re.compile(r"(?<![\w/.$<-])((?:pcl|tools|tests|experiments|docs|data)/[\w./{},*-]*)")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
PCL_NAME = re.compile(r"(?<![\w./])(pcl(?:\.\w+)+)")  # not a path such as pcl/methods/pcl.py


def expand_braces(path: str) -> list[str]:
    """``pcl/{data,model}/x`` -> ``["pcl/data/x", "pcl/model/x"]`` (one or more brace groups)."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def exists(path: str) -> bool:
    """A repository path (globs allowed) exists in the tree, or is one the programs generate."""
    path = path.rstrip(".,:;")
    if path.rstrip("/") in GENERATED:
        return True
    if any(c in path for c in "*?["):
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def resolves(name: str) -> bool:
    """``pcl.a.b.attr`` names a module or an attribute of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_readme_is_short_and_points_into_docs() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in sorted((ROOT / "docs").glob("[!_]*.md")):  # docs/_*.md: drafts to fold into another page
        assert f"(docs/{page.name})" in text, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_and_path_in_the_page_exists(page: Path) -> None:
    text = page.read_text()
    missing = [link for link in LINK.findall(text) if "://" not in link and not (page.parent / link).exists()]
    missing += [p for raw in REPO_PATH.findall(text) for p in expand_braces(raw) if not exists(p)]
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_pcl_name_in_the_page_resolves(page: Path) -> None:
    names = set(PCL_NAME.findall(page.read_text()))
    assert [n for n in sorted(names) if not resolves(n)] == []


def test_the_checks_catch_a_wrong_path() -> None:
    assert expand_braces("pcl/{data,model}/x.py") == ["pcl/data/x.py", "pcl/model/x.py"]
    assert exists("pcl/data/") and exists("pcl/analysis/knn.py,") and exists("data/.cache/")
    assert not exists("pcl/no_such_module.py")
    assert exists("experiments/results/*/results.md") and not exists("experiments/results/*/nope.md")
    assert REPO_PATH.findall("see `tests/unit/<package>/` and /data/imagenet or runs/x/pcl/y") == ["tests/unit/"]
    assert resolves("pcl.cli.main") and not resolves("pcl.cli.no_such_function")
