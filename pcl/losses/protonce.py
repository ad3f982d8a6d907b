"""ProtoNCE for one clustering granularity, with negative prototypes sampled on the tensors' device.

Neither path below synchronises with the host in the usual configurations (``k <= r``: every free cluster
is a negative; ``k - B >= r``: ``r`` are drawn), so on a GPU the backward pass is queued while the forward
pass still runs. Only ``r < k < r + B`` needs the count of free clusters on the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_negative_prototypes(positives: torch.Tensor, num_clusters: int, r: int) -> torch.Tensor:
    """Up to ``r`` distinct cluster ids that are no sample's positive, drawn uniformly without replacement.

    Args:
        positives: ``(B,)`` positive cluster ids of the batch.  num_clusters: ``k``.
    Returns:
        ``(min(r, k - #distinct positives),)`` long ids on ``positives.device`` (all candidates, ascending,
        when fewer than ``r`` exist). Uses the global torch RNG, so it is seeded and resumable.

    When at least ``r`` clusters are free whatever the batch (``k - B >= r``) the ids are the ``r`` smallest
    of ``k`` i.i.d. uniform float64 scores, positives scored 2: every ``r``-subset of the free clusters is
    equally likely (as with a random permutation, 10x faster on CPU), and the shape is known without a sync.
    """
    if num_clusters - positives.numel() >= r:
        scores = torch.rand(num_clusters, dtype=torch.float64, device=positives.device)
        scores[positives] = 2.0
        return scores.topk(r, largest=False, sorted=False).indices
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
    concentration: torch.Tensor,
    r: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ProtoNCE loss and the number of queries whose top prototype is their own cluster's.

    Args:
        q: ``(B, d)`` L2-normalised queries.  positives: ``(B,)`` cluster id of each query's image.
        centroids: ``(k, d)`` L2-normalised prototypes.  concentration: ``(k,)`` concentrations phi.
        r: number of negative prototypes.
    Returns:
        ``(loss, correct)``. Row ``i`` of the logits is ``q_i . [c_pos(0..B-1), c_neg(1..r)] / phi``
        with target ``i`` (as in the official code). ``correct`` counts rows whose arg-max prototype is
        the query's own cluster, so duplicated positive columns are not counted as errors.

    With ``k <= r`` every cluster that is no positive is a negative: the columns are then all ``k``
    clusters with the positives' columns at ``-inf`` (weight 0 in the softmax and its gradient), which is
    the same loss at a shape that does not depend on the batch. phi divides the gathered ``(B + r, d)``
    prototypes rather than the ``(B, B + r)`` logits (equal up to float rounding, fewer operations).
    """
    b, k = q.shape[0], centroids.shape[0]
    if k <= r:
        proto_ids = torch.cat([positives, torch.arange(k, device=q.device)])
        mask = torch.zeros(b + k, dtype=q.dtype, device=q.device)
        mask[b + positives] = float("-inf")
    else:
        proto_ids = torch.cat([positives, sample_negative_prototypes(positives, k, r)])
        mask = torch.zeros((), dtype=q.dtype, device=q.device)
    protos = centroids[proto_ids] / concentration[proto_ids].unsqueeze(1)
    logits = torch.addmm(mask, q, protos.T)
    target = torch.arange(b, device=q.device)
    loss = F.cross_entropy(logits, target)
    with torch.no_grad():
        correct = (proto_ids[logits.argmax(dim=1)] == positives).sum()
    return loss, correct
