"""ProtoNCE for one clustering granularity, with negative prototypes sampled on the tensors' device."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_negative_prototypes(positives: torch.Tensor, num_clusters: int, r: int) -> torch.Tensor:
    """Up to ``r`` distinct cluster ids that are no sample's positive, drawn uniformly without replacement.

    Args:
        positives: ``(B,)`` positive cluster ids of the batch.  num_clusters: ``k``.
    Returns:
        ``(min(r, k - #distinct positives),)`` long ids on ``positives.device`` (all candidates when
        fewer than ``r`` exist). Uses the global torch RNG, so it is seeded and resumable.
    """
    free = torch.ones(num_clusters, dtype=torch.bool, device=positives.device)
    free[positives] = False
    candidates = free.nonzero().squeeze(1)
    if candidates.numel() <= r:
        return candidates
    pick = torch.randperm(candidates.numel(), device=positives.device)[:r]
    return candidates[pick]


def proto_nce(
    q: torch.Tensor,
    positives: torch.Tensor,
    centroids: torch.Tensor,
    density: torch.Tensor,
    r: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ProtoNCE loss and the number of queries whose top prototype is their own cluster's.

    Args:
        q: ``(B, d)`` L2-normalised queries.  positives: ``(B,)`` cluster id of each query's image.
        centroids: ``(k, d)`` L2-normalised prototypes.  density: ``(k,)`` concentrations phi.
        r: number of negative prototypes.
    Returns:
        ``(loss, correct)``. Row ``i`` of the logits is ``q_i . [c_pos(0..B-1), c_neg(1..r)] / phi``
        with target ``i`` (as in the official code). ``correct`` counts rows whose arg-max prototype is
        the query's own cluster, so duplicated positive columns are not counted as errors.
    """
    neg = sample_negative_prototypes(positives, centroids.shape[0], r)
    proto_ids = torch.cat([positives, neg])
    logits = (q @ centroids[proto_ids].T) / density[proto_ids]
    target = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, target)
    with torch.no_grad():
        correct = (proto_ids[logits.argmax(dim=1)] == positives).sum()
    return loss, correct
