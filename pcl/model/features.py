"""Frozen features of an encoder over a loader, batch by batch: the one loop behind the E-step's feature
shards (:func:`pcl.estep.estep.extract_features`), the kNN monitor and the evaluation features (:func:`extract`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from pcl.utils.logs import progress


@torch.no_grad()
def iter_features(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    desc: str = "features",
    show: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(features_fn(images) (B, D) on device, index (B,))`` for each item ``(images, index)`` of ``loader``."""
    for images, index in progress(loader, desc, show=show):
        with autocast():
            feats = features_fn(images.to(device, non_blocking=True))
        yield feats, index


@torch.no_grad()
def extract(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    desc: str = "features",
    show: bool = True,
) -> torch.Tensor:
    """Features of every item of ``loader`` (items ``(images, index)``), in loader order: ``(N, D)`` float32 on
    ``device`` (the model's device)."""
    return torch.cat([f.float() for f, _ in iter_features(features_fn, loader, device, autocast, desc, show)])
