"""Projection heads: the shared MoCo v2 head (instance task), the optional cluster head (cluster task), and the
heads of SwAV (projection) and DINO (MLP + weight-normalised last layer).

Cluster-head variants (``--cluster-head``):

- ``none``: original PCL; clustering and ProtoNCE use the shared head's output.
- ``mlp``: ``Linear-ReLU-Linear`` on top of the shared head (no final ReLU, so features are not confined
  to the positive orthant before L2-normalisation).
- ``report``: the research report's exact ``Linear(dim, dim) + ReLU``.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
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


def swav_projection_head(in_dim: int, out_dim: int, hidden_dim: int | None = None) -> nn.Module:
    """SwAV's projection ``Linear(d, h)-BN-ReLU-Linear(h, out)``; ``h`` = ``d`` unless given (2048 at ResNet-50, as
    the reference's ``hidden_mlp``)."""
    h = in_dim if hidden_dim is None else hidden_dim
    return nn.Sequential(nn.Linear(in_dim, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, out_dim))


class WeightNormLinear(nn.Module):
    """``x -> g * (x . v_k / |v_k|)`` for each of ``out_dim`` rows ``v_k``, no bias: a weight-normalised linear layer
    (as ``torch.nn.utils.weight_norm`` with ``dim=0``). ``g`` starts at 1 and is trained only when ``train_norm``."""

    def __init__(self, in_dim: int, out_dim: int, train_norm: bool = False) -> None:
        super().__init__()
        self.v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())  # (out, in)
        self.g = nn.Parameter(torch.ones(out_dim), requires_grad=train_norm)

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """``(N, in) -> (N, out)``; ``frozen``: no gradient reaches ``v`` and ``g`` (the layer is frozen)."""
        v, g = (self.v.detach(), self.g.detach()) if frozen else (self.v, self.g)
        return F.linear(x, F.normalize(v, dim=1) * g[:, None])


class DINOHead(nn.Module):
    """DINO's head: an MLP ``d -> hidden -> hidden -> bottleneck`` (GELU, ``layers`` linear layers), L2-normalised,
    then a weight-normalised linear layer of ``out_dim`` outputs (its norm fixed at 1 unless ``not norm_last``)."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, layers: int = 3, norm_last: bool = True
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            mods += [nn.Linear(a, b)] + ([nn.GELU()] if i < layers - 1 else [])
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # the reference's initialisation: truncated normal, std 0.02, zero bias
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, train_norm=not norm_last)

    def forward(self, h: torch.Tensor, frozen_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, d)`` features -> ``(bottleneck (N, b) L2-normalised, logits (N, out_dim))``; ``frozen_last``: the
        last layer gets no gradient (DINO's first epoch)."""
        z = F.normalize(self.mlp(h), dim=-1)
        return z, self.last_layer(z, frozen=frozen_last)
