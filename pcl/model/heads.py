"""Projection heads: the shared MoCo v2 head (instance task) and the optional cluster head (cluster task).

Cluster-head variants (``--cluster-head``):

- ``none``: original PCL; clustering and ProtoNCE use the shared head's output.
- ``mlp``: ``Linear-ReLU-Linear`` on top of the shared head (no final ReLU, so features are not confined
  to the positive orthant before L2-normalisation).
- ``report``: the research report's exact ``Linear(dim, dim) + ReLU``.
"""

from __future__ import annotations

from torch import nn

CLUSTER_HEADS = ("none", "mlp", "report")


def projection_head(in_dim: int, out_dim: int, mlp: bool) -> nn.Module:
    """MoCo v2 head ``Linear(d,d)-ReLU-Linear(d,out)`` when ``mlp``, else MoCo v1's ``Linear(d,out)``."""
    if not mlp:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


def cluster_head(kind: str, dim: int) -> nn.Module | None:
    """Extra head for the cluster task, mapping ``(B, dim) -> (B, dim)``; ``None`` for ``kind='none'``."""
    if kind == "none":
        return None
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
    if kind == "report":
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
    raise ValueError(f"unknown cluster head {kind!r}; choose from {', '.join(CLUSTER_HEADS)}")
