"""What the pictures show, computed from features: a 2-D map, cluster-gallery rows, retrieval neighbours.

Pure functions on arrays (no images, no plotting; :mod:`pcl.analysis.render` draws them). Used by
``tools/visualize.py`` and, for the gallery, by the TensorBoard images of ``--log-cluster-images``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

GALLERY_SORTS = ("size", "concentration")


@dataclass
class GalleryRow:
    """One prototype of one granularity and its members nearest to it.

    ``members``: dataset indices, nearest first (at most the requested number); ``distances``: their L2
    distances to the L2-normalised prototype; ``phi``: the cluster's concentration.
    """

    k: int
    cluster: int
    size: int
    phi: float
    members: np.ndarray
    distances: np.ndarray

    def label(self) -> str:
        """The row label: granularity, cluster, size and concentration."""
        return f"k={self.k} #{self.cluster}\n{self.size} image{'s' if self.size != 1 else ''}\nφ={self.phi:.3g}"


def subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded uniform subsample of ``range(n)`` of at most ``max_points`` (all when fewer)."""
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def umap_available() -> bool:
    """True when ``umap-learn`` is importable."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def embed_2d(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates ``(n, 2)`` of the L2-normalised rows of ``x (n, D)`` and the method used.

    ``auto``: UMAP when ``umap-learn`` is importable, else t-SNE (scikit-learn, cosine metric, PCA init,
    perplexity at most ``(n - 1) / 3``). Seeded: the same input and seed give the same map.
    """
    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = x.shape[0]
    if method == "auto":
        method = "umap" if umap_available() else "tsne"
    if n < 3:  # nothing to fit: spread the points on a line
        return np.stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)], axis=1), method
    if method == "umap":
        if not umap_available():
            raise ValueError("the UMAP map needs umap-learn (pip install umap-learn==0.5.12); tsne needs nothing more")
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(x), method
    if method != "tsne":
        raise ValueError(f"unknown 2-D method {method!r}; choose auto, tsne or umap")
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return tsne.fit_transform(x).astype(np.float32), method


def groups_by_size(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` largest groups of ``ids (m,)`` and their sizes, largest first (ties: smaller id first)."""
    groups, counts = np.unique(np.asarray(ids), return_counts=True)
    order = np.lexsort((groups, -counts))[:n]
    return groups[order], counts[order]


def medoid(xy: np.ndarray) -> int:
    """Row of ``xy (m, 2)`` nearest to the points' coordinate-wise median (where a group's thumbnail goes)."""
    return int(np.argmin(np.linalg.norm(xy - np.median(xy, axis=0), axis=1)))


def kmeans_ids(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster ids ``(n,)`` of the L2-normalised rows of ``x (n, D)`` by k-means (scikit-learn, seeded), to
    colour a map of unlabeled images: ``min(k, n)`` clusters."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = max(1, min(k, x.shape[0]))
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x).astype(np.int64)


def pick_clusters(im2cluster: np.ndarray, concentration: np.ndarray, n: int, sort: str = "size") -> np.ndarray:
    """The ``n`` non-empty clusters to show: largest first (``size``), or most concentrated first
    (``concentration``: smallest phi, ties by size). ``im2cluster (N,)``, ``concentration (k,)`` -> ``(<= n,)``."""
    if sort not in GALLERY_SORTS:
        raise ValueError(f"unknown gallery sort {sort!r}; choose from {', '.join(GALLERY_SORTS)}")
    sizes = np.bincount(im2cluster, minlength=len(concentration))
    ids = np.flatnonzero(sizes > 0)
    keys = (ids, -sizes[ids]) if sort == "size" else (ids, -sizes[ids], concentration[ids])  # last key sorts first
    order = np.lexsort(keys)
    return ids[order[:n]]


def gallery_rows(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    im2cluster: np.ndarray,
    centroids: np.ndarray,
    concentration: np.ndarray,
    n_clusters: int,
    n_members: int,
    sort: str = "size",
) -> list[GalleryRow]:
    """The gallery of one granularity: for each of ``n_clusters`` clusters (:func:`pick_clusters`), its
    ``n_members`` members nearest to the L2-normalised prototype, nearest first (ties by index).

    ``chunks`` yields ``(indices (n,), features (n, d))`` pieces of the clustered features (one array, or the
    E-step's shards, or one rank's share: members are sought among the given rows only); ``im2cluster (N,)``,
    ``centroids (k, d)``, ``concentration (k,)`` are the granularity's E-step result.
    """
    im2cluster = np.asarray(im2cluster, dtype=np.int64)
    k = centroids.shape[0]
    c = np.asarray(centroids, dtype=np.float32)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    chosen = pick_clusters(im2cluster, np.asarray(concentration), n_clusters, sort)
    best: dict[int, tuple[np.ndarray, np.ndarray]] = {int(j): (np.empty(0, np.int64), np.empty(0)) for j in chosen}
    wanted = np.zeros(k, dtype=bool)
    wanted[chosen] = True
    for idx, feats in chunks:
        idx = np.asarray(idx, dtype=np.int64)
        ids = im2cluster[idx]
        keep = np.flatnonzero(wanted[ids])
        if keep.size == 0:
            continue
        x = np.asarray(feats[keep], dtype=np.float32)
        d = np.linalg.norm(x - c[ids[keep]], axis=1).astype(np.float64)
        for j in np.unique(ids[keep]):
            sel = ids[keep] == j
            old_i, old_d = best[int(j)]
            all_i, all_d = np.concatenate([old_i, idx[keep][sel]]), np.concatenate([old_d, d[sel]])
            top = np.lexsort((all_i, all_d))[:n_members]
            best[int(j)] = (all_i[top], all_d[top])
    sizes = np.bincount(im2cluster, minlength=k)
    return [GalleryRow(k, int(j), int(sizes[j]), float(concentration[j]), *best[int(j)]) for j in chosen]


def pick_queries(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct seeded query indices in ``range(n)`` (all of them when fewer), in drawing order."""
    return np.random.default_rng(seed).permutation(n)[: min(count, n)]


def retrieve(bank: np.ndarray, queries: np.ndarray, m: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``m`` cosine neighbours in ``bank (N, D)`` of each row of ``queries (Q, D)``, bank row ``exclude[q]``
    left out (the query itself; -1: none): ``(indices (Q, m), similarities (Q, m))``, most similar first (ties by
    index)."""

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    b, q = unit(bank), unit(queries)
    sims = q @ b.T  # (Q, N)
    rows = np.flatnonzero(np.asarray(exclude) >= 0)
    sims[rows, np.asarray(exclude)[rows]] = -np.inf
    m = min(m, b.shape[0] - (1 if len(rows) else 0))
    order = np.stack([np.lexsort((np.arange(b.shape[0]), -row))[:m] for row in sims]) if len(q) else np.empty((0, m))
    order = order.astype(np.int64)
    return order, np.take_along_axis(sims, order, axis=1)
