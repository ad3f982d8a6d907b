"""Momentum (EMA) encoders: a frozen copy of a module, updated as ``theta_k <- m theta_k + (1 - m) theta_q``."""

from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(module: nn.Module | None) -> nn.Module | None:
    """A deep copy of ``module`` whose parameters get no gradient (the momentum side starts equal)."""
    if module is None:
        return None
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad = False
    return twin


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, m: float) -> None:
    """``target <- m * target + (1 - m) * online``, parameter by parameter (buffers are left alone)."""
    q_params, k_params = list(online.parameters()), list(target.parameters())
    torch._foreach_mul_(k_params, m)
    torch._foreach_add_(k_params, q_params, alpha=1.0 - m)
