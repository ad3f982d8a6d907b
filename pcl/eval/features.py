"""Frozen-feature extraction, shared by the kNN monitor, the kNN tool and the linear probe."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from pcl.model.features import iter_features


@torch.no_grad()
def extract(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    desc: str = "features",
    show: bool = True,
) -> torch.Tensor:
    """Features of every item of ``loader`` (items ``(images, index)``), in loader order: ``(N, D)`` float32.

    The result stays on ``device`` (the model's device).
    """
    return torch.cat([f.float() for f, _ in iter_features(features_fn, loader, device, autocast, desc, show)])
