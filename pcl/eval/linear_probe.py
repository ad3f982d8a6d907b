"""Linear probe, ``features`` protocol: multinomial logistic regression on cached frozen features.

Features are standardised with the training set's mean and std, the L2 strength ``wd`` is picked on a
held-out split of the training set (seeded), and the classifier is refitted on the whole training set
with that strength. Full-batch L-BFGS in torch, on whatever device the features are on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

DEFAULT_WDS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class ProbeResult:
    """Test accuracies in percent, the chosen L2 strength and the held-out accuracy of every candidate."""

    top1: float
    top5: float
    wd: float
    val_top1: dict[float, float] = field(default_factory=dict)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percent of rows of ``logits (n, C)`` whose label ``(n,)`` is among the ``min(k, C)`` largest."""
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * float(hit.float().mean())


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Shift and scale every column by the mean and std of ``train (n, D)``; applies the same to ``others``."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    wd: float,
    max_iter: int = 200,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``mean CE(x W + b, y) + wd/2 * ||W||^2`` by full-batch L-BFGS (at most ``max_iter`` iterations).

    ``x (n, D)``, ``y (n,)`` -> ``W (D, C)``, ``b (C,)``; ``init`` warm-starts from a previous solution.
    """
    if init is None:
        w = torch.zeros(x.shape[1], num_classes, device=x.device, dtype=x.dtype)
        b = torch.zeros(num_classes, device=x.device, dtype=x.dtype)
    else:
        w, b = init[0].clone(), init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * wd * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def holdout_split(n: int, fraction: float, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into (fit, held-out) index tensors; at least one row each."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).to(device)
    n_val = min(n - 1, max(1, round(fraction * n)))
    return perm[n_val:], perm[:n_val]


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    wds: tuple[float, ...] = DEFAULT_WDS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
) -> ProbeResult:
    """Pick ``wd`` on a held-out ``val_fraction`` of the training set, refit on all of it, score the test set.

    ``train_x (n, D)``, ``train_y (n,)``, ``test_x (m, D)``, ``test_y (m,)``; features are used as float32
    on their own device. Ties in held-out accuracy go to the stronger regularisation.
    """
    dev = train_x.device
    train_x, test_x = train_x.float(), test_x.float().to(dev)
    train_y, test_y = train_y.long().to(dev), test_y.long().to(dev)
    fit_idx, val_idx = holdout_split(train_x.shape[0], val_fraction, seed, dev)
    xf, xv = standardize(train_x[fit_idx], train_x[val_idx])
    val_top1: dict[float, float] = {}
    init = None
    for wd in sorted(wds, reverse=True):  # strong to weak, each warm-started from the previous solution
        init = fit_logistic(xf, train_y[fit_idx], num_classes, wd, max_iter, init)
        val_top1[wd] = topk_accuracy(xv @ init[0] + init[1], train_y[val_idx], 1)
    best = max(sorted(val_top1, reverse=True), key=lambda wd: val_top1[wd])  # max keeps the first (largest) tie
    xtr, xte = standardize(train_x, test_x)
    w, b = fit_logistic(xtr, train_y, num_classes, best, max_iter)
    logits = xte @ w + b
    return ProbeResult(topk_accuracy(logits, test_y, 1), topk_accuracy(logits, test_y, 5), best, val_top1)
