"""k-means E-step: streamed clustering on shards, cluster-result round trip (phi: see test_reference.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pcl.estep.clustering import ClusterResult, Granularity, KMeansConfig
from pcl.estep.estep import EStepConfig, FeaturePass, cluster_store, run_estep
from pcl.estep.feature_store import FeatureStore, ShardWriter
from pcl.utils.distributed import DistInfo


def blobs(n_per: int, centres: np.ndarray, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(centres)), n_per)
    x = centres[labels] + noise * rng.standard_normal((len(labels), centres.shape[1]))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


def test_streamed_clustering_recovers_blobs_and_is_consistent(tmp_path: Path) -> None:
    centres = np.eye(8, dtype=np.float32)[:5] * 3
    x, labels = blobs(40, centres, 0.1, seed=0)
    w = ShardWriter(tmp_path, 8, shard_rows=64)
    w.add(torch.from_numpy(x), torch.arange(len(x)))
    store = w.close()
    cfg = EStepConfig(
        num_cluster=[5, 10],
        feature_dir=tmp_path,
        max_points=120,  # sampled k-means
        kmeans=KMeansConfig(niter=10, nredo=2),
    )
    result = cluster_store(store, len(x), cfg, DistInfo(), epoch=0, temperature=0.2, show=False)
    g5 = result.levels[0]
    # each true blob maps to exactly one cluster and vice versa
    pairs = {(int(a), int(b)) for a, b in zip(labels, g5.im2cluster, strict=True)}
    assert len(pairs) == 5
    torch.testing.assert_close(g5.centroids.norm(dim=1), torch.ones(5))
    assert abs(float(g5.concentration.mean()) - 0.2) < 1e-6
    assert g5.stats["empty_clusters"] == 0 and g5.stats["largest_cluster"] == 40
    # the reported objective is the mean squared distance to the assigned (unnormalised) centroid
    assert 0 < g5.stats["objective"] < 8 * 0.1**2 * 2
    assert result.levels[1].im2cluster.max() < 10


def test_run_estep_deletes_shards_unless_kept(tmp_path: Path) -> None:
    x = torch.randn(40, 3, 8, 8)
    loader = torch.utils.data.DataLoader(list(zip(x, range(40), strict=True)), batch_size=16)

    def features_fn(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(images.flatten(1)[:, :6], dim=1)

    for keep in (False, True):
        cfg = EStepConfig(
            num_cluster=[4],
            feature_dir=tmp_path / str(keep),
            keep_features=keep,
            kmeans=KMeansConfig(niter=5, nredo=1),
        )
        result = run_estep(FeaturePass(features_fn, loader, 40, 6, DistInfo()), cfg, epoch=3, temperature=0.2)
        shards = list((tmp_path / str(keep)).glob("epoch0003/*.npy"))
        assert (len(shards) > 0) == keep
        assert result.levels[0].im2cluster.shape == (40,) and result.epoch == 3


def test_cluster_result_state_dict_round_trip() -> None:
    g = Granularity(3, torch.tensor([0, 2, 1, 2]), torch.eye(3), torch.tensor([0.1, 0.2, 0.3]), {"objective": 1.5})
    back = ClusterResult.from_state_dict(ClusterResult(7, [g]).state_dict())
    assert back.epoch == 7 and back.levels[0].k == 3 and back.levels[0].stats == {"objective": 1.5}
    assert back.levels[0].im2cluster.dtype == torch.long
    torch.testing.assert_close(back.levels[0].centroids, g.centroids)


def _store(tmp_path: Path, x: np.ndarray, name: str) -> FeatureStore:
    w = ShardWriter(tmp_path / name, x.shape[1], shard_rows=256)
    w.add(torch.from_numpy(x), torch.arange(len(x)))
    return w.close()


def _drifting_blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of two consecutive E-steps: 30 unit-norm blobs in 16-d (noise 0.04 squared per row), then every
    blob moved a little; also the true centres ``(30, 16)``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, 16)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x1, labels = blobs(30, centres, 0.05, seed=seed + 1)
    drift = 0.02 * rng.standard_normal(centres.shape).astype(np.float32)
    x2 = x1 + drift[labels] + 0.005 * rng.standard_normal(x1.shape).astype(np.float32)
    return x1, x2.astype(np.float32), centres


def _cfg(tmp_path: Path, init: str, nredo: int) -> EStepConfig:
    return EStepConfig(num_cluster=[30, 8], feature_dir=tmp_path, kmeans=KMeansConfig(niter=20, nredo=nredo, init=init))


def test_warm_start_from_previous_centroids_beats_one_cold_run(tmp_path: Path) -> None:
    x1, x2, centres = _drifting_blobs()
    s1, s2 = _store(tmp_path, x1, "e1"), _store(tmp_path, x2, "e2")
    first = cluster_store(s1, len(x1), _cfg(tmp_path, "random", 5), DistInfo(), 0, 0.2, show=False)
    cold = cluster_store(s2, len(x2), _cfg(tmp_path, "random", 1), DistInfo(), 1, 0.2, show=False)
    warm = cluster_store(s2, len(x2), _cfg(tmp_path, "previous", 1), DistInfo(), 1, 0.2, False, previous=first)
    for w, c in zip(warm.levels, cold.levels, strict=True):
        assert w.stats["objective"] <= c.stats["objective"]
    assert warm.levels[0].stats["objective"] < cold.levels[0].stats["objective"]
    # the warm start really starts from the previous centroids: from the true blob centres (which random
    # restarts miss on these data, objective ~0.1) it stays at the noise level 0.04
    truth = Granularity(30, torch.zeros(len(x1), dtype=torch.long), torch.from_numpy(centres), torch.ones(30))
    from_truth = cluster_store(
        s2, len(x2), _cfg(tmp_path, "previous", 1), DistInfo(), 1, 0.2, False, previous=ClusterResult(0, [truth])
    )
    assert from_truth.levels[0].stats["objective"] < 0.045 < cold.levels[0].stats["objective"]
    # from converged centroids on the same features, Lloyd's iterations cannot raise the objective
    again = cluster_store(s1, len(x1), _cfg(tmp_path, "previous", 5), DistInfo(), 1, 0.2, False, previous=first)
    for a, f in zip(again.levels, first.levels, strict=True):
        assert a.stats["objective"] <= f.stats["objective"] * (1 + 1e-5)


def test_warm_start_without_previous_result_is_the_cold_clustering(tmp_path: Path) -> None:
    x1, _, _ = _drifting_blobs()
    store = _store(tmp_path, x1, "e1")
    cold = cluster_store(store, len(x1), _cfg(tmp_path, "random", 2), DistInfo(), 0, 0.2, show=False)
    first = cluster_store(store, len(x1), _cfg(tmp_path, "previous", 2), DistInfo(), 0, 0.2, False, previous=None)
    for a, b in zip(first.levels, cold.levels, strict=True):
        assert torch.equal(a.im2cluster, b.im2cluster) and torch.equal(a.centroids, b.centroids)
        assert torch.equal(a.concentration, b.concentration) and a.stats == b.stats


def test_warm_start_centroids_survive_the_state_dict_bit_for_bit(tmp_path: Path) -> None:
    x1, _, _ = _drifting_blobs()
    result = cluster_store(_store(tmp_path, x1, "e1"), len(x1), _cfg(tmp_path, "random", 1), DistInfo(), 0, 0.2, False)
    back = ClusterResult.from_state_dict(result.state_dict())
    cfg = _cfg(tmp_path, "previous", 1)
    for a, b in zip(result.warm_start(cfg.num_cluster, 16), back.warm_start(cfg.num_cluster, 16), strict=True):
        assert a is not None and a.dtype == np.float32 and np.array_equal(a, b)
    # the stored norms give back the unnormalised k-means centroids: their rows are the members' means
    g = result.levels[0]
    members = x1[g.im2cluster.numpy() == 0]
    np.testing.assert_allclose(g.kmeans_centroids()[0], members.mean(0), atol=1e-5)
    # a granularity the previous result lacks starts cold
    assert back.warm_start([30, 12], 16)[1] is None and back.warm_start([30], 8) == [None]
