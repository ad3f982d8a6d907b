"""kNN monitor: weighted k-nearest-neighbour top-1 on frozen features (InstDisc protocol, k=200, tau=0.1)."""

from __future__ import annotations

import torch


@torch.no_grad()
def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted kNN labels: ``query (n, D)``, ``bank (N, D)`` L2-normalised, ``bank_labels (N,)`` -> ``(n,)``.

    Each of the ``k`` most similar bank items votes ``exp(sim / t)`` for its label.
    """
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=sim.dtype)
        votes.scatter_add_(1, bank_labels[top_idx], (top_sim / t).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
) -> float:
    """Top-1 accuracy in percent of the weighted kNN classifier."""
    pred = knn_predict(test_feats, train_feats, train_labels.to(train_feats.device), num_classes, k, t)
    return 100.0 * float((pred.cpu() == test_labels.cpu()).float().mean())
