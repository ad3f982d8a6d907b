"""The frozen features every feature protocol shares: one extraction of the train and test splits.

``pcl.model.features.extract`` of the frozen backbone on the center-cropped (eval view) images gives raw
average-pooled features; kNN, the ``features`` linear probe, the low-shot SVMs and k-means all read them.
``--feature-cache DIR`` keeps them on disk, keyed by the weights, the image size and the two splits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pcl.data.datasets import IndexedImages, eval_loader, eval_transform
from pcl.data.sources import resolve_data
from pcl.eval.pretrained import Pretrained
from pcl.model.features import extract
from pcl.utils.atomic import write_atomic
from pcl.utils.errors import PCLError


@dataclass
class FrozenFeatures:
    """Raw backbone features of the train ``(N, D)`` and test ``(M, D)`` splits with their labels."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def eval_sets(
    data: str | None, image_size: int, labels: str = "auto", val: str | None = None
) -> tuple[IndexedImages, IndexedImages]:
    """Train and eval images of ``data`` (None = bundled subset; any ``sources.resolve_data`` form, ``val`` as
    its eval set) under the center-crop eval transform; both need class labels."""
    source = resolve_data(data, labels, val)
    reason = source.knn_off_reason()
    if reason is not None:
        raise PCLError(f"cannot evaluate on {data or 'the bundled subset'}: {reason}")
    tf = eval_transform(image_size)
    return IndexedImages(source.train, tf), IndexedImages(source.eval, tf)


def _cache_file(cache_dir: Path, pre: Pretrained, train: IndexedImages, test: IndexedImages) -> Path:
    key = json.dumps([pre.ident, pre.image_size, train.root, len(train), test.root, len(test)])
    return cache_dir / f"features-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def frozen_features(
    pre: Pretrained,
    data: str | None,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 2,
    cache_dir: Path | None = None,
    show: bool = True,
    labels: str = "auto",
    val: str | None = None,
) -> FrozenFeatures:
    """Extract (or load from ``cache_dir``) the backbone features of both splits once, on ``device``."""
    train, test = eval_sets(data, pre.image_size, labels, val)
    cache = _cache_file(cache_dir, pre, train, test) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        t = torch.load(cache, map_location=device, weights_only=True)
        return FrozenFeatures(t["train"], t["train_labels"], t["test"], t["test_labels"], len(train.classes))
    net = pre.backbone.to(device).eval()
    feats = FrozenFeatures(
        extract(net, eval_loader(train, batch_size, workers), device, desc="train features", show=show),
        torch.tensor(train.targets, device=device),
        extract(net, eval_loader(test, batch_size, workers), device, desc="test features", show=show),
        torch.tensor(test.targets, device=device),
        len(train.classes),
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu() for k, v in asdict(feats).items() if isinstance(v, torch.Tensor)}
        write_atomic(cache, lambda f: torch.save(state, f), "feature cache")
    return feats
