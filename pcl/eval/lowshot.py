"""Low-shot transfer: one-vs-rest linear SVMs on k frozen features per class (PCL's Table 1 protocol).

As the official ``eval_svm_voc.py``: L2-normalised backbone features, one ``LinearSVC`` per class (labels +1 / -1,
squared hinge, ``class_weight={1: 2, -1: 1}``, ``max_iter=2000``). For each k and each of ``draws`` seeded draws,
k training images per class are sampled; the draw depends only on the labels, the seed, k and the draw index, so
every cost and every encoder sees the same images. Reported: test top-1 (argmax of the per-class decision values)
and mean per-class average precision (scikit-learn's AP, not VOC07's 11-point AP), mean ± std over the draws.

The cost is chosen without the test set: by stratified cross-validation inside the k-shot sample (mean per-class
AP over ``min(k, 5)`` folds) when k >= 2, and the official fixed 0.5 when k = 1 (nothing to split). The official
script instead reports, for each k, the best *test* mAP over its costs, which inflates its figures.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pcl.utils.errors import PCLError
from pcl.utils.flags import flag, float_list, int_list

OFFICIAL_COST = 0.5
DEFAULT_COSTS = (0.01, 0.1, 0.5, 1.0, 10.0)
DEFAULT_KS = (1, 2, 4, 8, 16)
MAX_FOLDS = 5


@dataclass(frozen=True)
class LowShotConfig:
    """Which k, how many draws, which costs (cross-validated when k >= 2) and the draws' base seed."""

    ks: tuple[int, ...] = flag(DEFAULT_KS, "--lowshot", type=int_list, gt=0, help="k images per class; turns it on")
    draws: int = flag(5, "--lowshot-draws", gt=0, help="seeded draws per k (mean +- std)")
    costs: tuple[float, ...] = flag(
        DEFAULT_COSTS, "--lowshot-costs", type=float_list, gt=0, help="SVM costs, cross-validated in the k-shot sample"
    )
    seed: int = 0  # the evaluation's --seed


def lowshot_draw(labels: np.ndarray, k: int, draw: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``k`` samples of every class of ``labels (N,)``, drawn without replacement.

    Seeded by ``(seed, k, draw)`` only: two calls, two costs or two encoders on the same labels get the same draw.
    Raises ``PCLError`` when a class has fewer than ``k`` samples.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if k < 1 or k > counts.min():
        smallest = classes[counts.argmin()]
        raise PCLError(f"--lowshot k = {k} needs 1 <= k <= {counts.min()} (the train images of class {smallest})")
    rng = np.random.default_rng([seed, k, draw])
    picks = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c in classes]
    return np.sort(np.concatenate(picks))


def _svm(cost: float) -> object:
    from sklearn.svm import LinearSVC

    return LinearSVC(
        C=cost, class_weight={1: 2, -1: 1}, loss="squared_hinge", penalty="l2", dual=True, max_iter=2000, tol=1e-4
    )


def svm_scores(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: np.ndarray, cost: float
) -> np.ndarray:
    """Decision values ``(m, C)`` of one-vs-rest SVMs trained on ``train_x (n, D)`` / ``train_y (n,)``, one column
    per entry of ``classes``."""
    cols = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(converge|Liblinear).*")  # max_iter 2000 as the official one
        for c in classes:
            svm = _svm(cost).fit(train_x, np.where(train_y == c, 1, -1))
            cols.append(svm.decision_function(test_x))
    return np.stack(cols, axis=1)


def mean_ap(scores: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    """Mean over ``classes`` of the average precision of column j of ``scores (m, C)`` for class ``classes[j]``
    (percent); classes absent from ``y`` are skipped."""
    from sklearn.metrics import average_precision_score

    aps = [average_precision_score(y == c, scores[:, j]) for j, c in enumerate(classes) if (y == c).any()]
    return 100.0 * float(np.mean(aps))


def choose_cost(
    x: np.ndarray, y: np.ndarray, classes: np.ndarray, k: int, costs: tuple[float, ...], seed: int
) -> tuple[float, str]:
    """The cost for a k-shot sample ``x (kC, D)``: the best mean per-class AP over ``min(k, 5)`` stratified folds
    of the sample itself (ties go to the cost nearest 0.5, then the smaller one), or 0.5 when ``k < 2``.

    Returns ``(cost, "cv" | "fixed")``.
    """
    if k < 2 or len(costs) == 1:
        return (costs[0] if len(costs) == 1 else OFFICIAL_COST), "fixed"
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(min(k, MAX_FOLDS), shuffle=True, random_state=seed).split(x, y))
    order = sorted(costs, key=lambda c: (abs(np.log(c / OFFICIAL_COST)), c))  # preference on ties
    cv = {
        c: np.mean([mean_ap(svm_scores(x[f], y[f], x[v], classes, c), y[v], classes) for f, v in folds]) for c in order
    }
    return max(order, key=lambda c: cv[c]), "cv"  # max keeps the first of equal values


def lowshot_svm(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, cfg: LowShotConfig
) -> dict[str, dict]:
    """The low-shot protocol on raw frozen features ``train_x (N, D)``, ``test_x (M, D)`` with labels ``(N,)``,
    ``(M,)``; keyed by ``str(k)``::

        {"<k>": {"top1": mean %, "top1_std": std, "map": mean %, "map_std": std, "cost_selection": "cv"|"fixed",
                 "draws": [{"top1", "map", "cost"}, ...]}}

    The std is the population std over the draws. Every k is checked against the smallest class first.
    """
    xtr = F.normalize(train_x.float(), dim=1).cpu().numpy().astype(np.float64)
    xte = F.normalize(test_x.float(), dim=1).cpu().numpy().astype(np.float64)
    ytr, yte = train_y.cpu().numpy(), test_y.cpu().numpy()
    classes = np.unique(ytr)
    if len(classes) < 2:
        raise PCLError("--lowshot needs class labels: the train split has a single class")
    if cfg.draws < 1 or not cfg.costs or min(cfg.costs) <= 0:
        raise PCLError("--lowshot needs >= 1 draw and positive costs")
    for k in cfg.ks:
        lowshot_draw(ytr, k, 0, cfg.seed)  # refuse a too-large k before any work
    out: dict[str, dict] = {}
    for k in cfg.ks:
        runs = []
        for d in range(cfg.draws):
            idx = lowshot_draw(ytr, k, d, cfg.seed)
            cost, how = choose_cost(xtr[idx], ytr[idx], classes, k, cfg.costs, cfg.seed + d)
            scores = svm_scores(xtr[idx], ytr[idx], xte, classes, cost)
            top1 = 100.0 * float((classes[scores.argmax(1)] == yte).mean())
            runs.append({"top1": top1, "map": mean_ap(scores, yte, classes), "cost": cost})
        top1s, maps = np.array([r["top1"] for r in runs]), np.array([r["map"] for r in runs])
        out[str(k)] = {
            "top1": float(top1s.mean()),
            "top1_std": float(top1s.std()),
            "map": float(maps.mean()),
            "map_std": float(maps.std()),
            "cost_selection": how,
            "draws": runs,
        }
    return out
