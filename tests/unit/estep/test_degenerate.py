"""Concentrations of a degenerate E-step (issue 27, defect 8): collapsed features, empty or one-point clusters and
zero distances give finite, positive phi of mean = temperature; the official values are kept otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcl.estep.clustering import KMeansConfig, concentration, degenerate
from pcl.estep.estep import EStepConfig, cluster_store
from pcl.estep.feature_store import ShardWriter
from pcl.utils.distributed import DistInfo

T = 0.2


def check(phi: torch.Tensor, k: int) -> None:
    assert phi.shape == (k,) and phi.dtype == torch.float32
    assert bool(torch.isfinite(phi).all()) and bool((phi > 0).all())
    assert float(phi.double().mean()) == pytest.approx(T, rel=1e-6)


@pytest.mark.parametrize(
    ("counts", "sums", "expected"),
    [
        ([5, 5, 5, 5], [0, 0, 0, 0], [T] * 4),  # every member on its centroid (all features equal)
        ([20, 0, 0, 0, 0], [0, 0, 0, 0, 0], [T] * 5),  # one non-empty cluster, zero spread
        ([1, 1, 0, 1], [0, 0, 0, 0], [T] * 4),  # every cluster of size <= 1
        ([0, 0, 0], [0, 0, 0], [T] * 3),  # nothing assigned at all
        ([30, 0, 0], [3.0, 0, 0], [T] * 3),  # a single non-empty cluster with spread: every phi its max
    ],
)
def test_degenerate_statistics_give_the_temperature_everywhere(
    counts: list[float], sums: list[float], expected: list[float]
) -> None:
    phi = concentration(torch.tensor(counts, dtype=torch.float64), torch.tensor(sums, dtype=torch.float64), T)
    check(phi, len(counts))
    np.testing.assert_allclose(phi.numpy(), expected, rtol=1e-6)


def test_zero_spread_in_most_clusters_is_raised_to_the_smallest_positive_phi() -> None:
    """Nine of ten clusters collapsed: the 10th-90th percentile clamp alone would leave phi = 0 (logits / 0)."""
    counts = torch.full((10,), 4.0, dtype=torch.float64)
    sums = torch.zeros(10, dtype=torch.float64)
    sums[3] = 2.0
    phi = concentration(counts, sums, T)
    check(phi, 10)
    np.testing.assert_allclose(phi.numpy(), T, rtol=1e-6)  # clamped to one positive value, then rescaled
    counts, sums = torch.tensor([4.0, 4, 4, 4, 4, 4, 4, 4, 4, 4]), torch.tensor([0.0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
    phi = concentration(counts, sums, T)
    check(phi, 10)
    assert float(phi[0]) == pytest.approx(float(phi[1])) == pytest.approx(float(phi[3]))  # zeros take the smallest


def test_healthy_statistics_keep_the_official_values() -> None:
    counts = torch.tensor([12.0, 7.0, 1.0, 0.0, 30.0, 3.0, 9.0, 15.0, 4.0, 22.0], dtype=torch.float64)
    sums = counts * torch.linspace(0.2, 0.9, 10, dtype=torch.float64)
    phi = concentration(counts, sums, T)
    check(phi, 10)
    raw = torch.where(counts > 1, sums / counts / torch.log(counts + 10), torch.zeros_like(counts))
    raw = torch.where(counts > 1, raw, raw.max())
    lo, hi = np.percentile(raw.numpy(), [10, 90])
    expected = raw.clamp(float(lo), float(hi))
    np.testing.assert_allclose(phi.numpy(), (T * expected / expected.mean()).numpy(), rtol=1e-6)
    assert degenerate(counts, sums) is None


def test_degenerate_says_why() -> None:
    assert degenerate(torch.tensor([1.0, 0.0]), torch.zeros(2)) == "no cluster has more than one member"
    why = degenerate(torch.tensor([5.0, 5.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert why == "1 of 2 clusters have every member on their centroid (collapsed features?)"


def test_an_estep_of_identical_features_gives_finite_concentrations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All features equal (a collapsed encoder): faiss k-means and the streamed assignment put every row at
    distance 0; the result must still be usable by ProtoNCE (finite, positive phi)."""
    x = np.tile(np.eye(8, dtype=np.float32)[:1], (64, 1))
    w = ShardWriter(tmp_path, 8, shard_rows=32)
    w.add(torch.from_numpy(x), torch.arange(len(x)))
    cfg = EStepConfig(num_cluster=[3, 5], feature_dir=tmp_path, kmeans=KMeansConfig(niter=5, nredo=1))
    result = cluster_store(w.close(), len(x), cfg, DistInfo(), epoch=0, temperature=T, show=False)
    for level in result.levels:
        check(level.concentration, level.k)
        assert bool(torch.isfinite(level.centroids).all())
    assert "warning: E-step k=3:" in capsys.readouterr().out
