"""Cluster quality against class labels: NMI, AMI and purity of an assignment (scikit-learn's metrics).

Used after each E-step (TensorBoard ``cluster/k{K}/{nmi,ami,purity}``), by ``tools/evaluate.py`` and by
``tools/inspect_clusters.py``. At N = 50k and k = 2,000 one granularity takes about 0.05 s on a CPU
(docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np
import torch

from pcl.estep.clustering import ClusterResult

METRICS = ("nmi", "ami", "purity")


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
