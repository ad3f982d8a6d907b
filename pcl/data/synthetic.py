"""Image sets built to be hard for the instance task (collapse tests, the recipe search of
``experiments/suites/recipes.toml``): low-detail classes and near-duplicates, written as JPEG folders.

- **Low detail** (:func:`write_low_detail`): each class one flat colour, each image that colour plus a faint
  blurred blob of random place and tint, so that images differ in little but the blob: the classes are trivial to
  tell apart, the images of a class are not (the failure of issue 26's held-out set: kNN high, InfoNCE at chance).
- **Near duplicates** (:func:`write_near_duplicates`): one random picture plus faint pixel noise (std 2 of 255),
  one unlabeled folder: no two images can be told apart, so no recipe learns the instance task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# class colours (RGB); the first three are one channel bright, the others mixes
PALETTE = (
    (180, 60, 60), (60, 180, 60), (60, 60, 180), (180, 180, 60), (180, 60, 180),
    (60, 180, 180), (120, 120, 120), (200, 120, 60), (60, 120, 200), (120, 200, 60),
)  # fmt: skip


def write_low_detail(root: Path, per_class: int, classes: int = 3, size: int = 16, seed: int = 0,
                     detail: float = 30.0) -> Path:  # fmt: skip
    """``classes * per_class`` low-detail JPEGs in ``root/classC/IIII.jpg`` (``classes`` <= 10); ``detail``: the
    blob's largest tint (of 255), all that tells two images of a class apart; returns ``root``."""
    if not 1 <= classes <= len(PALETTE):
        raise ValueError(f"classes must be in 1..{len(PALETTE)}, got {classes}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.asarray(PALETTE[c], np.float32)
        for i in range(per_class):
            cy, cx = rng.uniform(0, size, 2)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 4) ** 2))[..., None]
            img = base + detail * blob * rng.uniform(-1, 1, 3).astype(np.float32)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:04d}.jpg", quality=90)
    return root


def write_near_duplicates(root: Path, count: int, size: int = 16, seed: int = 0) -> Path:
    """``count`` near-duplicate JPEGs in one unlabeled folder ``root/IIII.jpg``; returns ``root``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size, size, 3)).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i:04d}.jpg", quality=95)
    return root
