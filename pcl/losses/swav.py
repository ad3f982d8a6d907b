"""SwAV's losses (Caron et al., 2020): codes by Sinkhorn-Knopp equipartition, and the swapped prediction.

For a batch of ``B`` samples (every rank's together) and ``K`` prototypes, the codes ``Q (B, K)`` solve an
entropy-regularised transport problem on the scores ``z . c / eps``: every sample's code sums to 1 and every
prototype receives ``B / K`` of the mass (approximately, after a few iterations). Under torchrun the sums over
samples are all-reduced, so the codes of the distributed batch equal those of one process holding all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pcl.utils import distributed as pdist


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Codes ``(B, K)`` of the scores ``(B, K)`` (this rank's rows; the sums over rows span every rank).

    ``Q = exp(scores / epsilon)`` scaled to total mass 1, then ``iterations`` rounds of: each prototype's mass to
    ``1 / K``, each sample's mass to ``1 / B_total``. Returned scaled by ``B_total``: each row sums to 1 and each
    column to about ``B_total / K`` (this rank's part of it). Float32 whatever the scores' dtype; the exponent is
    taken after subtracting the global maximum (a constant factor, which the normalisation removes).
    """
    s = scores.float()
    top = s.max().reshape(1)
    if pdist.is_distributed():
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    q = torch.exp((s - top) / epsilon).T  # (K, B): the paper's notation
    k = q.shape[0]
    b_total = pdist.all_reduce_sum(torch.tensor([float(q.shape[1])], device=q.device))
    q /= pdist.all_reduce_sum(q.sum().reshape(1))
    for _ in range(iterations):
        q /= pdist.all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: mass 1 / K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample: mass 1 / B
        q /= b_total
    return (q * b_total).T


def swapped_prediction(
    scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor], assign: Sequence[int], temperature: float
) -> torch.Tensor:
    """SwAV's loss: the code of each assignment crop predicted from every other crop.

    Args:
        scores: one ``(B, K)`` tensor of prototype scores ``z . c`` per crop (``V`` crops).
        codes: the ``(B, K)`` codes of the assignment crops, in the order of ``assign``.
        assign: the crop indices the codes come from (the global crops).
        temperature: ``tau`` of the softmax over prototypes.
    Returns:
        ``mean_i mean_{v != i} mean_b -sum_k Q_i[b, k] log softmax(scores_v[b] / tau)_k`` (a crop never predicts
        its own code).
    """
    if len(scores) < 2:
        raise ValueError("the swapped prediction needs at least two crops")
    logp = [F.log_softmax(s / temperature, dim=1) for s in scores]
    total = scores[0].new_zeros(())
    for i, q in zip(assign, codes, strict=True):
        others = [v for v in range(len(scores)) if v != i]
        total = total + sum(-(q * logp[v]).sum(dim=1).mean() for v in others) / len(others)
    return total / len(assign)


def swapped_hits(scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor], assign: Sequence[int]) -> torch.Tensor:
    """Samples (mean over the (assignment crop, other crop) pairs) whose top-scoring prototype in the other crop is
    the top prototype of the code: a float count out of ``B``."""
    hits = [
        (scores[v].argmax(dim=1) == q.argmax(dim=1)).sum()
        for i, q in zip(assign, codes, strict=True)
        for v in range(len(scores))
        if v != i
    ]
    return torch.stack(hits).float().mean()
