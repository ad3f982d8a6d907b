"""Data stage, decoded-image cache: every image of a data set decoded once into one uint8 buffer in RAM.

JPEG/PNG decoding is then paid once per run instead of once per epoch (and per E-step and kNN pass).
The buffer is a single numpy array, so forked DataLoader workers share it copy-on-write without copying.
``Image.fromarray`` of the cached pixels is the image ``load_rgb`` decodes, so batches are bit-identical
to the uncached loader's for the same seed (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from pcl.data.decode import to_rgb
from pcl.utils.errors import PCLError
from pcl.utils.logs import progress

HEADER_SAMPLE = 64  # images whose headers estimate the size of a data set for --cache-images auto


def _size(path: str) -> tuple[int, int]:
    """``(width, height)`` from the file header (no decoding); ``PCLError`` naming an unreadable file."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as e:
        raise PCLError(f"corrupt or unreadable image file {path}: {e}") from None


def estimate_bytes(paths: Sequence[str]) -> int:
    """Decoded RGB size of all ``paths``, estimated from the headers of up to ``HEADER_SAMPLE`` of them."""
    if not paths:
        return 0
    step = max(1, len(paths) // HEADER_SAMPLE)
    sizes = [_size(p) for p in paths[::step][:HEADER_SAMPLE]]
    return int(len(paths) * np.mean([w * h * 3 for w, h in sizes]))


class ImageCache:
    """Decoded RGB pixels of ``paths``: ``cache[i]`` is image ``i`` as a PIL image (any sizes mixed).

    Building it decodes every file (``workers`` threads), so it also verifies the data set: a corrupt
    file raises ``PCLError`` naming it. ``budget_bytes`` is checked from the headers before decoding.
    """

    def __init__(
        self, paths: Sequence[str], workers: int = 8, budget_bytes: int | None = None, show: bool = True
    ) -> None:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            sizes = np.array(list(pool.map(_size, paths, chunksize=256)), dtype=np.int64).reshape(-1, 2)
            self.shapes = sizes[:, ::-1].copy()  # (N, 2): height, width
            self.offsets = np.concatenate([[0], np.cumsum(sizes[:, 0] * sizes[:, 1] * 3)])
            if budget_bytes is not None and self.nbytes > budget_bytes:
                raise PCLError(
                    f"--cache-images: the {len(paths)} decoded images need {self.nbytes / 2**20:.0f} MiB, more than "
                    f"--cache-budget-mb {budget_bytes / 2**20:.0f}; raise the budget or use --cache-images no"
                )
            self.buffer = np.empty(int(self.offsets[-1]), dtype=np.uint8)
            jobs = pool.map(self._decode_into, range(len(paths)), paths, chunksize=64)
            for _ in progress(jobs, "decode images to RAM", len(paths), show):
                pass

    def _decode_into(self, i: int, path: str) -> None:
        try:
            with open(path, "rb") as f:
                arr = np.asarray(to_rgb(Image.open(f)))
        except Exception as e:
            raise PCLError(f"corrupt or unreadable image file {path}: {e}") from None
        if arr.shape[:2] != tuple(self.shapes[i]):
            raise PCLError(f"image file {path} changed size while being cached")
        self.buffer[self.offsets[i] : self.offsets[i + 1]] = arr.reshape(-1)

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self.shapes)

    def array(self, i: int) -> np.ndarray:
        """Image ``i`` as a read-only ``(H, W, 3)`` uint8 view of the buffer."""
        h, w = self.shapes[i]
        view = self.buffer[self.offsets[i] : self.offsets[i + 1]].reshape(h, w, 3)
        view.flags.writeable = False
        return view

    def __getitem__(self, i: int) -> Image.Image:
        return Image.fromarray(self.array(i), "RGB")

    def uniform_shape(self) -> tuple[int, int] | None:
        """``(H, W)`` when every image has it, else None."""
        if len(self) == 0 or not (self.shapes == self.shapes[0]).all():
            return None
        return int(self.shapes[0, 0]), int(self.shapes[0, 1])

    def as_tensor(self) -> torch.Tensor:
        """All images as one ``(N, 3, H, W)`` uint8 tensor (a view of the buffer); needs a uniform size."""
        shape = self.uniform_shape()
        if shape is None:
            raise PCLError("the images have different sizes; --gpu-aug needs one size (e.g. CIFAR's 32x32)")
        return torch.from_numpy(self.buffer).view(len(self), *shape, 3).permute(0, 3, 1, 2)


def attach_cache(datasets: Sequence, mode: str, budget_mb: float, show: bool = True) -> bool:
    """``--cache-images auto|yes|no``: give each dataset (with ``samples``) an ``ImageCache``; True if cached.

    ``auto`` caches when the decoded images of all ``datasets`` together are estimated (from file headers)
    to fit ``budget_mb``; ``yes`` caches whatever the size (the budget still guards against running out
    of memory); ``no`` never does.
    """
    if mode == "no":
        return False
    budget = int(budget_mb * 2**20)
    paths = [[p for p, _ in ds.samples] for ds in datasets]
    if mode == "auto" and estimate_bytes([p for ps in paths for p in ps]) > budget:
        return False
    for ds, ps in zip(datasets, paths, strict=True):
        ds.cache = ImageCache(ps, budget_bytes=budget, show=show)
        budget -= ds.cache.nbytes
    return True
