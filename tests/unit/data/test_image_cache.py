"""In-memory uint8 image cache: exact pixels, bit-identical training batches, budget, corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcl.data.augment import AugConfig
from pcl.data.datasets import IndexedImageFolder, MultiView, load_rgb, train_loader
from pcl.data.image_cache import ImageCache, attach_cache
from pcl.utils.errors import PCLError


def _mixed_folder(root: Path) -> Path:
    """JPEG, PNG (RGBA), grayscale and palette images of different sizes in two classes."""
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (20, 12, 3), dtype=np.uint8)).save(root / "a" / "0.jpg")
    Image.fromarray(rng.integers(0, 255, (9, 17, 4), dtype=np.uint8), "RGBA").save(root / "a" / "1.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(root / "b" / "2.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert("P").save(root / "b" / "3.png")
    return root


def test_cache_holds_exactly_the_decoded_pixels(tmp_path: Path) -> None:
    ds = IndexedImageFolder(_mixed_folder(tmp_path / "mixed"))
    paths = [p for p, _ in ds.samples]
    cache = ImageCache(paths, workers=2, show=False)
    assert len(cache) == 4 and cache.uniform_shape() is None
    for i, p in enumerate(paths):
        ref = np.asarray(load_rgb(p))
        assert cache[i].mode == "RGB"
        assert np.array_equal(np.asarray(cache[i]), ref), p
    assert cache.nbytes == sum(np.asarray(load_rgb(p)).size for p in paths)
    with pytest.raises(PCLError, match="one size"):
        cache.as_tensor()


@pytest.mark.parametrize("workers", [0, 2])
def test_cached_loader_gives_bit_identical_batches(tiny_data: Path, workers: int) -> None:
    """Same seed, same batches (both views, indices), with and without the cache, over two epochs."""
    cfg = AugConfig(image_size=16, blur_prob=0.5)  # every op of the MoCo v2 recipe, blur included

    def batches(cached: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ds = IndexedImageFolder(tiny_data / "train", MultiView.from_spec(cfg.view_spec(), cfg))
        if cached:
            assert attach_cache([ds], "yes", 64, show=False)
        torch.manual_seed(0)
        loader = train_loader(ds, 8, workers, seed=0)
        out = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            out += [(q, k, i) for (q, k), i in loader]
        return out

    plain, cached = batches(False), batches(True)
    assert len(plain) == len(cached) == 2 * (48 // 8)
    for a, b in zip(plain, cached, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_cache_budget_and_auto(tiny_data: Path) -> None:
    ds = IndexedImageFolder(tiny_data / "train")  # 48 images of 16x16x3 = 36,864 bytes
    assert not attach_cache([ds], "auto", budget_mb=0.01, show=False) and ds.cache is None
    with pytest.raises(PCLError, match="more than --cache-budget-mb"):
        attach_cache([ds], "yes", budget_mb=0.01, show=False)
    assert not attach_cache([ds], "no", budget_mb=64, show=False)
    assert attach_cache([ds], "auto", budget_mb=1, show=False) and ds.cache.nbytes == 48 * 16 * 16 * 3
    assert ds.with_transform(lambda x: x).cache is ds.cache  # E-step / kNN views share it
    assert tuple(ds.cache.as_tensor().shape) == (48, 3, 16, 16)


def test_cache_names_a_corrupt_file(tiny_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "x" / "0.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    good = str(next((tiny_data / "train").rglob("*.jpg")))
    with pytest.raises(PCLError, match=f"corrupt or unreadable image file {bad}"):
        ImageCache([good, str(bad)], show=False)
