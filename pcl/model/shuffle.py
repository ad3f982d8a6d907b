"""Shuffle BN (MoCo): key embeddings computed on a shuffled batch and returned in input order, so that batch
norm cannot use the batch's composition to match a query with its key."""

from __future__ import annotations

import torch
from torch import nn

from pcl.utils import distributed as pdist


@torch.no_grad()
def shuffled_forward(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``encoder(images)`` ``(B, d)`` computed on a random permutation of the batch, returned in input order.

    In one process the permutation is of this batch (split BN then emulates MoCo's multi-GPU shuffle); under
    torchrun the batch is gathered from all ranks, permuted globally, and each rank encodes its share.
    """
    if pdist.is_distributed():
        return _shuffled_forward_ddp(encoder, images)
    perm = torch.randperm(images.shape[0], device=images.device)
    k = encoder(images[perm])
    return torch.empty_like(k).index_copy_(0, perm, k)


@torch.no_grad()
def _shuffled_forward_ddp(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """MoCo's cross-rank batch shuffle: gather all keys' images, permute globally, unshuffle after."""
    b = images.shape[0]
    x_all = pdist.concat_all_gather(images)
    perm = torch.randperm(x_all.shape[0], device=images.device)
    pdist.broadcast(perm, src=0)
    rank = pdist.rank()
    mine = perm.view(-1, b)[rank]
    k = encoder(x_all[mine])
    k_all = pdist.concat_all_gather(k)
    out = torch.empty_like(k_all).index_copy_(0, perm, k_all)
    return out[rank * b : (rank + 1) * b]
