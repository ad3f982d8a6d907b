"""A backbone and a head over a batch's list of views: one backbone forward per resolution, one head forward.

Multi-crop batches hold views of several sizes (``pcl.data.views.ViewSpec``: global crops, then local ones);
consecutive views of one size go through the backbone together (``torch.cat``), and the head sees every view's
features at once (its BatchNorm, if any, over all of them), as SwAV's and DINO's reference code do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def size_runs(views: list[torch.Tensor]) -> list[slice]:
    """Runs of consecutive views of one shape, as slices of ``views`` (one backbone forward each)."""
    runs: list[slice] = []
    for i, v in enumerate(views):
        if runs and views[runs[-1].start].shape[1:] == v.shape[1:]:
            runs[-1] = slice(runs[-1].start, i + 1)
        else:
            runs.append(slice(i, i + 1))
    return runs


def multicrop_features(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """``V`` views ``(B, 3, H_v, W_v)`` -> ``(V * B, D)`` backbone features, view by view in order."""
    return torch.cat([backbone(torch.cat(views[s])) for s in size_runs(views)])


class MultiCropNet(nn.Module):
    """``backbone`` (``(N, 3, H, W) -> (N, D)``) followed by ``head``; ``feat_dim`` = ``D``."""

    def __init__(self, backbone: nn.Module, feat_dim: int, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.feat_dim, self.head = backbone, feat_dim, head

    def forward(self, views: list[torch.Tensor], **head_kw: Any) -> Any:
        """``V`` views of ``B`` images -> the head's output of every view, ``(V * B, ...)`` in view order
        (``head_kw``: passed to the head)."""
        return self.head(multicrop_features(self.backbone, views), **head_kw)
