"""InfoNCE over one positive key and a queue of negatives (MoCo)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE loss and its logits.

    Args:
        q: ``(B, d)`` L2-normalised queries.  k: ``(B, d)`` L2-normalised positive keys.
        queue: ``(d, r)`` L2-normalised negatives.  temperature: ``T``.
    Returns:
        ``(loss, logits)``: mean cross-entropy with target 0, and ``(B, 1 + r)`` logits
        ``[q.k+, q.queue] / T``.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.detach()
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target), logits
