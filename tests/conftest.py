"""Shared fixtures: tiny ImageFolder data sets (the helpers themselves are in ``tests/helpers.py``)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `import pcl` / `import main_pcl` without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from tests.helpers import make_image_folder  # noqa: E402 - needs the path above


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Marks the module of a failing test, so that ``module_tmp`` keeps its folder for a post-mortem."""
    report = yield
    if report.failed:
        item.module.pcl_failed = True  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for one test module's shared run, removed when the module is done unless one of its tests failed.

    Every tiny training run writes ~180 MB of checkpoints (two ResNet-18 encoders and the optimizer state); kept
    until the session ends, the suite's runs once filled a CI machine's disk.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    if not getattr(request.module, "pcl_failed", False):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 train + 12 test images of 16x16 px in 3 classes."""
    root = tmp_path_factory.mktemp("tiny")
    make_image_folder(root / "train", per_class=16, seed=0)
    make_image_folder(root / "test", per_class=4, seed=1)
    return root


@pytest.fixture
def toy_protocol() -> Iterator[ModuleType]:
    """The test-only ``toy`` protocol (``tests/toy_protocol.py``) in the registry for one test, then gone again."""
    import tests.toy_protocol as toy  # registers it on first import, as any protocol module does
    from pcl.eval.protocols import PROTOCOLS, register_protocol

    register_protocol(toy.PROTOCOL)  # again, when an earlier test removed it (a no-op otherwise)
    try:
        yield toy
    finally:
        PROTOCOLS.pop("toy", None)
