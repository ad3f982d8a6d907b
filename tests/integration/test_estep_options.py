"""Training with ``--kmeans-init previous`` and ``--knn-encoder key``: the E-step gets the previous result, the
kNN bank comes from the E-step's pass, and a resumed run is bit-identical to an uninterrupted one."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from pcl import cli
from pcl.estep.clustering import ClusterResult
from pcl.methods import pcl as engine
from pcl.train import monitor
from tests.helpers import TINY_ARGS, scalars

FLAGS = ["--epochs", "3", "--warmup-epochs", "1", "--kmeans-init", "previous", "--knn-encoder", "key"]


def run(data: Path, exp_dir: Path, *extra: str) -> int:
    return cli.main([str(data), *TINY_ARGS, "--exp-dir", str(exp_dir), *FLAGS, *extra])


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Records the engine's E-steps ``("estep", epoch, warm-start centroids, with bank)`` and feature
    extractions ``("extract", desc)`` in order."""
    seen: list[tuple] = []
    real_estep, real_extract = engine.run_estep, monitor.extract

    def estep(*args: object, **kw: object) -> ClusterResult:
        bound = inspect.signature(real_estep).bind(*args, **kw).arguments
        prev = bound.get("previous")
        starts = [None, None] if prev is None else prev.warm_start([3, 5], 16)
        seen.append(("estep", bound["epoch"], starts, bound.get("bank") is not None))
        return real_estep(*args, **kw)

    def extract(*args: object, **kw: object) -> torch.Tensor:
        seen.append(("extract", inspect.signature(real_extract).bind(*args, **kw).arguments["desc"]))
        return real_extract(*args, **kw)

    monkeypatch.setattr(engine, "run_estep", estep)
    monkeypatch.setattr(monitor, "extract", extract)
    return seen


def test_warm_start_and_one_pass_bank_resume_bit_identically(tiny_data: Path, tmp_path: Path, calls: list) -> None:
    assert run(tiny_data, tmp_path / "full") == 0
    full = list(calls)
    # epoch 0 (warmup): its monitor waits for epoch 1's E-step pass; only the val split is extracted then;
    # epoch 2 is the last: its monitor extracts bank and val itself; then the untrained reference's kNN (the
    # end-of-run line) extracts both splits once more, through the same monitor
    assert [c[:2] if c[0] == "estep" else c for c in full] == [
        ("estep", 1),
        ("extract", "kNN eval"),
        ("estep", 2),
        ("extract", "kNN eval"),
        ("extract", "kNN bank"),
        ("extract", "kNN eval"),
        ("extract", "untrained kNN bank"),
        ("extract", "untrained kNN eval"),
    ]
    assert [c[3] for c in full if c[0] == "estep"] == [True, True]
    first, second = (c[2] for c in full if c[0] == "estep")
    assert first == [None, None]  # the first E-step starts at random
    assert [c.shape for c in second] == [(3, 16), (5, 16)]  # the second from the first one's centroids
    assert [s for s, _ in scalars(tmp_path / "full")["eval/knn_top1"]] == [0, 1, 2]

    calls.clear()
    assert run(tiny_data, tmp_path / "resumed", "--stop-after-epochs", "2") == 0
    assert run(tiny_data, tmp_path / "resumed", "--resume", "auto") == 0
    assert [c[:2] for c in calls] == [c[:2] for c in full]  # the same work, split over two invocations
    resumed_second = [c[2] for c in calls if c[0] == "estep"][1]
    assert all(np.array_equal(a, b) for a, b in zip(second, resumed_second, strict=True))
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.pth", weights_only=False) for d in ("full", "resumed"))
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    for la, lb in zip(a["cluster_result"]["levels"], b["cluster_result"]["levels"], strict=True):
        for key in ("im2cluster", "centroids", "centroid_norms", "density"):
            assert torch.equal(la[key], lb[key]), key
    assert scalars(tmp_path / "full")["eval/knn_top1"] == scalars(tmp_path / "resumed")["eval/knn_top1"]
