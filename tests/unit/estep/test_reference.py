"""The official E-step (``tools/reference.py``) and ``pcl.estep.clustering`` against it."""

from __future__ import annotations

import numpy as np
import torch

from pcl.estep.clustering import concentration
from tests.helpers import load_tool

reference = load_tool("reference")


def test_concentration_matches_official_loop() -> None:
    rng = np.random.default_rng(0)
    k, n = 50, 2000
    im2cluster = rng.integers(0, 40, size=n)  # clusters 40..49 stay empty
    im2cluster[:3] = [40, 41, 42]  # three singletons
    im2cluster[3:] = np.where(im2cluster[3:] >= 40, 0, im2cluster[3:])
    sq = rng.uniform(0.0, 2.0, size=n).astype(np.float32)
    counts = torch.from_numpy(np.bincount(im2cluster, minlength=k)).double()
    sums = torch.from_numpy(np.bincount(im2cluster, weights=np.sqrt(sq.astype(np.float64)), minlength=k))
    ours = concentration(counts, sums, temperature=0.2).numpy()
    ref = reference.concentration_loop(im2cluster, sq, k, temperature=0.2)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    assert abs(ours.mean() - 0.2) < 1e-6


def test_official_run_kmeans_shapes() -> None:
    x = np.random.default_rng(1).standard_normal((500, 8)).astype(np.float32)
    (res,) = reference.official_run_kmeans(x, [5], 0.2, niter=3, nredo=1)
    assert res["im2cluster"].shape == (500,) and res["im2cluster"].dtype == np.int64
    assert res["centroids"].shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(res["centroids"], axis=1), 1.0, rtol=1e-5)
    assert res["density"].shape == (5,) and res["sq_dist"].shape == (500,)
    assert abs(float(res["density"].mean()) - 0.2) < 1e-5
