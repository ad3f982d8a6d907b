"""Cluster quality against class labels: NMI, AMI and purity of an assignment (scikit-learn's metrics), and the
clustering-accuracy protocol (ACC by Hungarian matching, NMI, ARI, AMI) of k-means with k = number of classes.

Used after each E-step (TensorBoard ``cluster/k{K}/{nmi,ami,purity}``), by ``tools/evaluate.py`` and by
``tools/inspect_clusters.py``. At N = 50k and k = 2,000 one granularity takes about 0.05 s on a CPU
(docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np
import torch

from pcl.estep.clustering import ClusterResult, KMeansConfig, assign, train_kmeans
from pcl.utils.errors import PCLError

METRICS = ("nmi", "ami", "purity")
ACCURACY_METRICS = ("acc", "nmi", "ari", "ami")  # the clustering-accuracy protocol (ProPos reports NMI/ACC/ARI)


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def label_scores(im2cluster: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[str, float]:
    """NMI, AMI (scikit-learn, arithmetic normalisation) and purity of ``im2cluster (N,)`` against ``labels (N,)``.

    Purity: the fraction of samples whose cluster's majority class is their own class. All three lie in
    ``[0, 1]`` (AMI can dip slightly below 0 for a worse-than-chance assignment).
    """
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    a, y = _numpy(im2cluster).astype(np.int64), _numpy(labels).astype(np.int64)
    if a.shape != y.shape or a.ndim != 1:
        raise ValueError(f"assignment {a.shape} and labels {y.shape} must be the same 1-d shape")
    table = contingency_matrix(a, y, sparse=True)  # (clusters, classes)
    return {
        "nmi": float(normalized_mutual_info_score(y, a)),
        "ami": float(adjusted_mutual_info_score(y, a)),
        "purity": float(table.max(axis=1).sum() / len(y)),
    }


def has_classes(labels: np.ndarray | torch.Tensor | None) -> bool:
    """True when ``labels`` exist and hold more than one class (otherwise the metrics say nothing)."""
    return labels is not None and len(np.unique(_numpy(labels))) > 1


def cluster_scores(result: ClusterResult, labels: np.ndarray | torch.Tensor) -> dict[int, dict[str, float]]:
    """``{k: {"nmi", "ami", "purity"}}`` for every granularity of ``result`` against ``labels (N,)``."""
    return {g.k: label_scores(g.im2cluster, labels) for g in result.levels}


def cluster_scalars(result: ClusterResult, labels: np.ndarray | torch.Tensor) -> dict[str, float]:
    """TensorBoard scalars ``cluster/k{K}/{nmi,ami,purity}`` for every granularity of ``result``."""
    return {f"cluster/k{k}/{m}": v for k, s in cluster_scores(result, labels).items() for m, v in s.items()}


def clustering_accuracy(im2cluster: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """ACC in ``[0, 1]``: the fraction of samples whose cluster maps to their class under the one-to-one mapping
    of clusters to classes that maximises it (Hungarian matching, ``scipy.optimize.linear_sum_assignment``).

    ``im2cluster (N,)`` and ``labels (N,)``; with more clusters than classes the unmatched clusters count as
    wrong, with fewer the unmatched classes do.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    a, y = _numpy(im2cluster).astype(np.int64), _numpy(labels).astype(np.int64)
    if a.shape != y.shape or a.ndim != 1:
        raise ValueError(f"assignment {a.shape} and labels {y.shape} must be the same 1-d shape")
    table = contingency_matrix(a, y)  # (clusters, classes) counts
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(y))


def accuracy_scores(im2cluster: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[str, float]:
    """ACC (Hungarian), NMI, ARI and AMI (scikit-learn, arithmetic normalisation) of ``im2cluster (N,)`` against
    ``labels (N,)``."""
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    a, y = _numpy(im2cluster).astype(np.int64), _numpy(labels).astype(np.int64)
    return {
        "acc": clustering_accuracy(a, y),
        "nmi": float(normalized_mutual_info_score(y, a)),
        "ari": float(adjusted_rand_score(y, a)),
        "ami": float(adjusted_mutual_info_score(y, a)),
    }


def kmeans_scores(
    x: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...], seed: int = 0, restarts: int = 5
) -> dict[str, dict]:
    """The clustering-accuracy protocol: faiss k-means with the E-step's official settings (each run the best
    objective of 5 redos) on the L2-normalised rows of ``x (N, D)``, ``restarts`` runs seeded ``seed, seed + 1,
    ...``, each scored against ``labels (N,)``; keyed by ``str(k)``::

        {"<k>": {"acc": mean, "acc_std": std, "nmi": ..., "nmi_std": ..., "ari", "ami", "purity" (same),
                 "restarts": R, "runs": [{"acc", "nmi", "ari", "ami", "purity"}, ...]}}

    The std is the population std over restarts (0 for one restart).
    """
    if restarts < 1:
        raise PCLError(f"--kmeans-restarts must be >= 1, got {restarts}")
    rows = torch.nn.functional.normalize(x.float(), dim=1).cpu()
    y = labels.cpu()
    out: dict[str, dict] = {}
    for k in ks:
        if not 2 <= k <= rows.shape[0]:
            raise PCLError(f"--kmeans: k = {k} needs 2 <= k <= {rows.shape[0]} (the number of train images)")
        runs = []
        for r in range(restarts):
            centroids = torch.from_numpy(train_kmeans(rows.numpy(), k, seed + r, KMeansConfig(use_gpu=False)))
            ids, _ = assign(rows, centroids)
            runs.append({**accuracy_scores(ids, y), "purity": label_scores(ids, y)["purity"]})
        block: dict = {}
        for m in (*ACCURACY_METRICS, "purity"):
            values = np.array([run[m] for run in runs])
            block[m], block[f"{m}_std"] = float(values.mean()), float(values.std())
        out[str(k)] = {**block, "restarts": restarts, "runs": runs}
    return out
