"""Shared fixtures: tiny ImageFolder data sets and an in-process runner for ``main_pcl.main``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_image_folder(root: Path, per_class: int, classes: int = 3, size: int = 16, seed: int = 0) -> Path:
    """Write ``classes * per_class`` small JPEGs whose class sets the dominant colour; returns ``root``."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            img[..., c % 3] += 150
            Image.fromarray(img).save(d / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 train + 12 test images of 16x16 px in 3 classes."""
    root = tmp_path_factory.mktemp("tiny")
    make_image_folder(root / "train", per_class=16, seed=0)
    make_image_folder(root / "test", per_class=4, seed=1)
    return root


TINY_ARGS = [
    "--image-size",
    "16",
    "--batch-size",
    "8",
    "--pcl-r",
    "16",
    "--bn-splits",
    "2",
    "--num-cluster",
    "3,5",
    "--workers",
    "0",
    "--epochs",
    "2",
    "--warmup-epochs",
    "1",
    "--low-dim",
    "16",
    "--eval-batch-size",
    "16",
    "--kmeans-nredo",
    "1",
    "--kmeans-niter",
    "5",
    "--print-freq",
    "1",
]
