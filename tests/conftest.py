"""Shared fixtures: tiny ImageFolder data sets (the helpers themselves are in ``tests/helpers.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `import pcl` / `import main_pcl` without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from tests.helpers import make_image_folder  # noqa: E402 - needs the path above


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 train + 12 test images of 16x16 px in 3 classes."""
    root = tmp_path_factory.mktemp("tiny")
    make_image_folder(root / "train", per_class=16, seed=0)
    make_image_folder(root / "test", per_class=4, seed=1)
    return root
