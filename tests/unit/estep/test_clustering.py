"""k-means E-step: streamed clustering on shards, cluster-result round trip (phi: see test_reference.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pcl.estep.clustering import ClusterResult, KMeansConfig
from pcl.estep.estep import EStepConfig, cluster_store, run_estep
from pcl.estep.feature_store import ShardWriter
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
    assert abs(float(g5.density.mean()) - 0.2) < 1e-6
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
        result = run_estep(features_fn, loader, 40, 6, cfg, DistInfo(), epoch=3, temperature=0.2)
        shards = list((tmp_path / str(keep)).glob("epoch0003/*.npy"))
        assert (len(shards) > 0) == keep
        assert result.levels[0].im2cluster.shape == (40,) and result.epoch == 3


def test_cluster_result_state_dict_round_trip() -> None:
    from pcl.estep.clustering import Granularity

    g = Granularity(3, torch.tensor([0, 2, 1, 2]), torch.eye(3), torch.tensor([0.1, 0.2, 0.3]), {"objective": 1.5})
    back = ClusterResult.from_state_dict(ClusterResult(7, [g]).state_dict())
    assert back.epoch == 7 and back.levels[0].k == 3 and back.levels[0].stats == {"objective": 1.5}
    assert back.levels[0].im2cluster.dtype == torch.long
    torch.testing.assert_close(back.levels[0].centroids, g.centroids)
