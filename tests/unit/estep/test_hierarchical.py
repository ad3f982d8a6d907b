"""``--kmeans-hierarchical``: the same partition as flat k-means on separable data, nested levels, concentrations
from the images, fewer k-means rows, warm start per level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcl.estep.clustering import KMeansConfig, concentration
from pcl.estep.estep import EStepConfig, cluster_store
from pcl.estep.feature_store import ShardWriter
from pcl.utils.distributed import DistInfo

GROUPS, SUBS, PER = 4, 3, 40  # 4 well-separated groups of 3 tight sub-blobs of 40 points


def separable(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x (480, 16), group (480,), sub-blob (480,))``: groups 10 apart, sub-blobs 1 apart, noise 0.02."""
    rng = np.random.default_rng(seed)
    group_c = 10.0 * np.eye(16)[:GROUPS]
    sub_c = np.concatenate([g + np.eye(16)[GROUPS : GROUPS + SUBS] for g in group_c])  # (24, 16)
    sub = np.repeat(np.arange(GROUPS * SUBS), PER)
    x = sub_c[sub] + 0.02 * rng.standard_normal((len(sub), 16))
    perm = rng.permutation(len(sub))
    return x[perm].astype(np.float32), (sub // SUBS)[perm], sub[perm]


def same_partition(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> bool:
    """True when ``a`` and ``b`` (N,) label the same partition (up to renaming the clusters)."""
    b = torch.as_tensor(b)
    pairs = {(int(x), int(y)) for x, y in zip(a, b, strict=True)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def clusters(tmp_path: Path, x: np.ndarray, hierarchical: bool, ks: list[int], nredo: int = 5) -> object:
    w = ShardWriter(tmp_path / f"h{hierarchical}", x.shape[1], shard_rows=200)
    w.add(torch.from_numpy(x), torch.arange(len(x)))
    kmeans = KMeansConfig(niter=20, nredo=nredo, hierarchical=hierarchical)
    cfg = EStepConfig(num_cluster=ks, feature_dir=tmp_path, kmeans=kmeans)
    return cluster_store(w.close(), len(x), cfg, DistInfo(), epoch=0, temperature=0.2, show=False)


def test_hierarchical_finds_the_flat_partition_on_separable_data(tmp_path: Path) -> None:
    """Both levels of flat k-means are the true groups and sub-blobs here (20 restarts), and so are the
    hierarchical ones: its finest level is the flat one (the same faiss run), its coarse one the groups."""
    x, group, sub = separable()
    flat = clusters(tmp_path, x, False, [GROUPS, GROUPS * SUBS], nredo=20)
    hier = clusters(tmp_path, x, True, [GROUPS, GROUPS * SUBS], nredo=20)
    assert torch.equal(flat.levels[1].im2cluster, hier.levels[1].im2cluster)
    for f, h, truth in zip(flat.levels, hier.levels, (group, sub), strict=True):
        assert f.k == h.k
        assert same_partition(f.im2cluster, truth) and same_partition(h.im2cluster, truth)
        torch.testing.assert_close(h.concentration.mean(), torch.tensor(0.2))
    # the coarse centroids are the groups' means: as flat k-means finds them (up to the cluster order)
    order = [int(h) for h in hier.levels[0].im2cluster[[int(np.argmax(group == g)) for g in range(GROUPS)]]]
    flat_order = [int(f) for f in flat.levels[0].im2cluster[[int(np.argmax(group == g)) for g in range(GROUPS)]]]
    torch.testing.assert_close(hier.levels[0].centroids[order], flat.levels[0].centroids[flat_order], atol=1e-4, rtol=0)


def test_levels_are_nested_and_concentrations_come_from_the_images(tmp_path: Path) -> None:
    """On data without clear groups the coarse level still is a union of fine clusters, and its phi is PCL's
    eq. 12 over the images' distances to the coarse centroids (not the fine centroids')."""
    x = np.random.default_rng(3).standard_normal((500, 8)).astype(np.float32)
    hier = clusters(tmp_path, x, True, [5, 40, 12])  # any order: each k on the next larger one
    k5, k40, k12 = hier.levels
    assert (k5.k, k40.k, k12.k) == (5, 40, 12)
    for coarse, fine in ((k12, k40), (k5, k12)):
        pairs = {(int(f), int(c)) for f, c in zip(fine.im2cluster, coarse.im2cluster, strict=True)}
        assert len(pairs) == len({f for f, _ in pairs})  # each fine cluster lies in one coarse cluster
    for g in hier.levels:
        c = g.centroids * g.centroid_norms[:, None]  # the k-means centroids
        d = (torch.from_numpy(x) - c[g.im2cluster]).norm(dim=1).double()
        counts = torch.bincount(g.im2cluster, minlength=g.k).double()
        sums = torch.zeros(g.k, dtype=torch.float64).index_add_(0, g.im2cluster, d)
        torch.testing.assert_close(g.concentration, concentration(counts, sums, 0.2), rtol=1e-5, atol=1e-7)
        assert g.stats["objective"] == pytest.approx(float((d**2).mean()), rel=1e-5)


def test_coarse_levels_train_on_the_finer_centroids_weighted_by_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What faiss is given: the largest k gets the features; each smaller k the next larger level's centroids
    with their sizes as weights (seed = the granularity's position, as the flat E-step)."""
    import pcl.estep.estep as estep

    seen: list[tuple[int, int, int, float | None]] = []
    real = estep.train_kmeans

    def spy(x: np.ndarray, k: int, seed: int, cfg: KMeansConfig, init: object = None, weights: object = None) -> object:
        seen.append((len(x), k, seed, None if weights is None else float(np.sum(weights))))
        return real(x, k, seed, cfg, init, weights)

    monkeypatch.setattr(estep, "train_kmeans", spy)
    x = np.random.default_rng(4).standard_normal((400, 8)).astype(np.float32)
    clusters(tmp_path, x, True, [4, 30, 10])
    assert seen[0] == (400, 30, 1, None)
    assert seen[1][1:] == (10, 2, 400.0) and seen[1][0] <= 30  # non-empty k=30 clusters, weights sum to N
    assert seen[2][1:] == (4, 0, 400.0) and seen[2][0] == 10


def test_hierarchical_warm_start_starts_every_level_from_the_previous_centroids(tmp_path: Path) -> None:
    x = separable(1)[0]
    first = clusters(tmp_path, x, True, [GROUPS, GROUPS * SUBS])
    w = ShardWriter(tmp_path / "again", 16, shard_rows=200)
    w.add(torch.from_numpy(x), torch.arange(len(x)))
    kmeans = KMeansConfig(niter=20, nredo=5, hierarchical=True, init="previous")
    cfg = EStepConfig(num_cluster=[GROUPS, GROUPS * SUBS], feature_dir=tmp_path, kmeans=kmeans)
    again = cluster_store(w.close(), len(x), cfg, DistInfo(), 1, 0.2, False, previous=first)
    for a, b in zip(first.levels, again.levels, strict=True):  # converged: the same clusters, the same ids
        assert torch.equal(a.im2cluster, b.im2cluster)
        torch.testing.assert_close(a.centroids, b.centroids, atol=1e-5, rtol=0)
