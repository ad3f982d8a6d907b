"""REFERENCE ONLY: the official PCL E-step (salesforce/PCL ``main_pcl.py: run_kmeans``) on CPU faiss.

Not part of the ``pcl`` package and not used by training. It is kept verbatim in spirit (one in-memory
``(N, d)`` array, faiss ``Clustering`` with an ``IndexFlatL2``, a full ``index.search`` and the per-sample
Python loop for the concentration) so that tests can check ``pcl.estep.clustering`` against it and
``tools/bench_estep.py`` can compare the streamed E-step's time and memory with it. The only changes: CPU
index instead of ``GpuIndexFlatL2``, ``verbose=False``, numpy outputs instead of CUDA tensors, and the
squared distances are returned too.
"""

from __future__ import annotations

import numpy as np


def concentration_loop(im2cluster: np.ndarray, sq_dist: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """Official concentration phi, per-sample loop: ``im2cluster (N,)``, ``sq_dist (N,)`` -> ``(k,)`` float32."""
    Dcluster = [[] for c in range(k)]
    for im, i in enumerate(im2cluster):
        Dcluster[i].append(sq_dist[im])

    density = np.zeros(k)
    for i, dist in enumerate(Dcluster):
        if len(dist) > 1:
            d = (np.asarray(dist) ** 0.5).mean() / np.log(len(dist) + 10)
            density[i] = d

    dmax = density.max()  # a cluster with one point (or none) gets the max
    for i, dist in enumerate(Dcluster):
        if len(dist) <= 1:
            density[i] = dmax

    density = density.clip(np.percentile(density, 10), np.percentile(density, 90))
    density = temperature * density / density.mean()
    return density.astype(np.float32)


def _normalize_rows(c: np.ndarray) -> np.ndarray:
    """``(k, d)`` -> rows divided by their L2 norm (as ``torch.nn.functional.normalize``, eps 1e-12)."""
    norms = np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return (c / norms).astype(np.float32)


def official_run_kmeans(
    x: np.ndarray,
    num_cluster: list[int],
    temperature: float,
    niter: int = 20,
    nredo: int = 5,
    max_points_per_centroid: int = 1000,
    min_points_per_centroid: int = 10,
) -> list[dict[str, np.ndarray]]:
    """Official ``run_kmeans`` on ``x (N, d)`` float32, one dict per granularity.

    Returns per ``k``: ``im2cluster (N,) int64``, ``centroids (k, d) float32`` L2-normalised,
    ``density (k,) float32`` and ``sq_dist (N,) float32`` (squared L2 to the assigned centroid).
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    results = []
    for seed, num in enumerate(num_cluster):
        d, k = x.shape[1], int(num)
        clus = faiss.Clustering(d, k)
        clus.verbose = False
        clus.niter = niter
        clus.nredo = nredo
        clus.seed = seed
        clus.max_points_per_centroid = max_points_per_centroid
        clus.min_points_per_centroid = min_points_per_centroid
        index = faiss.IndexFlatL2(d)
        clus.train(x, index)

        D, I = index.search(x, 1)  # noqa: E741 - the official names
        im2cluster = [int(n[0]) for n in I]
        centroids = faiss.vector_to_array(clus.centroids).reshape(k, d)
        density = concentration_loop(im2cluster, D[:, 0], k, temperature)
        results.append(
            {
                "im2cluster": np.asarray(im2cluster, dtype=np.int64),
                "centroids": _normalize_rows(centroids),
                "density": density,
                "sq_dist": np.ascontiguousarray(D[:, 0], dtype=np.float32),
            }
        )
    return results
