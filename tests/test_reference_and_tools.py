"""The official-E-step reference, the E-step benchmark and the cluster inspection tool."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcl.clustering import ClusterResult, Granularity, concentration
from pcl.reference import concentration_loop, official_run_kmeans

REPO = Path(__file__).resolve().parents[1]


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
    ref = concentration_loop(im2cluster, sq, k, temperature=0.2)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_official_run_kmeans_shapes() -> None:
    x = np.random.default_rng(1).standard_normal((500, 8)).astype(np.float32)
    (res,) = official_run_kmeans(x, [5], 0.2, niter=3, nredo=1)
    assert res["im2cluster"].shape == (500,) and res["im2cluster"].dtype == np.int64
    assert res["centroids"].shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(res["centroids"], axis=1), 1.0, rtol=1e-5)
    assert res["density"].shape == (5,) and res["sq_dist"].shape == (500,)
    assert abs(float(res["density"].mean()) - 0.2) < 1e-5


def test_bench_estep_tiny(tmp_path: Path) -> None:
    work = tmp_path / "bench"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "bench_estep.py"),
        "--n",
        "3000",
        "--k",
        "20",
        "--dim",
        "16",
        "--nredo",
        "1",
        "--niter",
        "5",
        "--shard-rows",
        "1000",
        "--work-dir",
        str(work),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO, timeout=120).stdout
    row = json.loads(out.strip().splitlines()[-1])
    assert {"n", "k", "dim", "mode", "seconds", "peak_rss_mib", "nmi"} <= row.keys()
    assert {"write", "cluster", "total"} <= row["seconds"].keys()
    assert row["mode"] == "streamed" and row["n"] == 3000 and row["peak_rss_mib"] > 0
    assert row["nmi"] > 0.8
    assert not work.exists()  # shards cleaned up


def _tiny_image_folder(root: Path, per_class: int = 8) -> list[int]:
    """3 classes of random 12x12 images (PNG and JPEG); returns labels in ImageFolder order."""
    rng = np.random.default_rng(0)
    labels = []
    for c, name in enumerate(("cat", "dog", "frog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
            img.save(root / name / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
            labels.append(c)
    return labels


def _load_tool(name: str) -> object:
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inspect_clusters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = np.asarray(_tiny_image_folder(tmp_path / "train"))
    n = len(labels)
    im2cluster = labels.copy()  # k=3 is perfect; k=5 splits classes
    im2cluster5 = labels * 2 - (np.arange(n) % 2) * (labels > 0)
    levels = [
        Granularity(
            k,
            torch.from_numpy(a),
            torch.nn.functional.normalize(torch.randn(k, 4), dim=1),
            torch.rand(k) + 0.1,
            {"objective": 0.5},
        )
        for k, a in ((3, im2cluster), (5, im2cluster5))
    ]
    path = tmp_path / "epoch_0003.pth"
    torch.save(ClusterResult(3, levels).state_dict(), path)
    out_dir = tmp_path / "out"
    argv = [
        str(path),
        "--labels-from",
        str(tmp_path / "train"),
        "--out-dir",
        str(out_dir),
        "--grid-clusters",
        "2",
        "--grid-members",
        "4",
    ]
    _load_tool("inspect_clusters").main(argv)  # in-process: the imports are shared with the test session
    out = capsys.readouterr().out
    assert "NMI 1.0000" in out and "purity 1.0000" in out
    assert "k=5: 5 non-empty clusters" in out
    for k in (3, 5):
        for kind in ("stats", "grid"):
            png = out_dir / f"epoch_0003_k{k}_{kind}.png"
            assert png.is_file() and png.stat().st_size > 0
            assert str(png) in out
