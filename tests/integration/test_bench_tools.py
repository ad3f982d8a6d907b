"""The benchmark tools run on tiny settings and print well-formed JSON; bad flags give one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, TINY_ARGS, load_tool, tool_env

TINY_STEP = [
    *("--stem", "imagenet", "--image-size", "16", "--batch-size", "8", "--bn-splits", "2", "--pcl-r", "32"),
    *("--num-cluster", "3,40", "--num-train", "100", "--steps", "1", "--rounds", "2", "--warmup", "1"),
]


def _tool(*argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=tool_env())


def test_bench_step_compares_moco_and_pcl_and_profiles() -> None:
    out = _tool("tools/bench_step.py", *TINY_STEP, "--compare", "moco,pcl,pcl+channels_last", "--profile", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    names = {"moco", "pcl", "pcl+channels_last"}
    assert set(res["s_per_step"]) == set(res["ratio_to_moco"]) == set(res["cpu_ratio_to_moco"]) == names
    assert all(len(v) == 2 and min(v) > 0 for v in res["s_per_step_rounds"].values())
    assert res["ratio_to_moco"]["moco"] == 1.0 and res["settings"]["num_cluster"] == "3,40"
    assert res["profile_top_ops"] and {"op", "calls", "self_ms_per_step"} <= set(res["profile_top_ops"][0])


def test_bench_step_bad_variant_is_one_error_line() -> None:
    out = _tool("tools/bench_step.py", *TINY_STEP, "--compare", "moco,simclr")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: unknown variant 'simclr'")
    assert len(out.stderr.strip().splitlines()) == 1


def test_bench_data_reports_every_pipeline_and_the_step(tiny_data: Path) -> None:
    flags = ["--batch-size", "8", "--image-size", "16", "--batches", "2", "--workers", "0,1"]
    flags += ["--per-image-samples", "8", "--step-steps", "1", "--bn-splits", "2", "--json"]
    out = _tool("tools/bench_data.py", str(tiny_data), *flags)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["num_images"] == 48 and res["batch_size"] == 8
    assert set(res["loader"]) == {"pil/workers=0", "pil/workers=1", "pil-cached/workers=0", "pil-cached/workers=1",
                                  "gpu-aug"}  # fmt: skip
    for r in res["loader"].values():
        assert r["images"] == 16 and r["images_per_s"] > 0 and r["cpu_s_per_image"] >= 0
    assert res["per_image"]["decode_cpu_s"] > 0 and res["per_image"]["augment_two_views_cpu_s"] > 0
    assert res["cache"]["mib"] == round(48 * 16 * 16 * 3 / 2**20, 1)
    assert set(res["step"]) == {"moco", "pcl"} and res["step"]["pcl"]["images_per_s"] > 0


def test_bench_data_too_few_images_is_one_error_line(tiny_data: Path) -> None:
    out = _tool("tools/bench_data.py", str(tiny_data), "--batch-size", "32", "--no-step")
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: only 48 training images: fewer than two batches of --batch-size 32"
    )


TINY_EPOCH = [
    *("--num-cluster", "3,5", "--rounds", "1", "--warmup", "0", "--json", "--"),
    *("--stem", "imagenet", "--image-size", "16", "--batch-size", "8", "--pcl-r", "16", "--bn-splits", "2"),
    *("--workers", "0", "--low-dim", "16", "--eval-batch-size", "16", "--kmeans-nredo", "1", "--kmeans-niter", "5"),
]


def test_bench_epoch_times_moco_and_pcl_epochs_and_their_parts(tiny_data: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    argv = ["--data", str(tiny_data), "--work-dir", str(work), "--variant", "warm=--kmeans-init previous"]
    out = _tool("tools/bench_epoch.py", *argv, *TINY_EPOCH)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert set(res["seconds"]) == set(res["ratio_to_moco"]) == set(res["cpu_ratio_to_moco"]) == {"moco", "pcl", "warm"}
    assert res["ratio_to_moco"]["moco"] == 1.0 and res["variants"]["warm"] == ["--kmeans-init", "previous"]
    moco, pcl = res["seconds"]["moco"], res["seconds"]["pcl"]
    assert moco["kmeans"] == moco["estep_features"] == 0.0 < min(pcl["kmeans"], pcl["estep_features"])
    for s in res["seconds"].values():
        assert min(s["mstep"], s["knn"]) > 0 and s["epoch"] >= sum(s[p] for p in ("estep_features", "mstep", "knn"))
        assert s["epoch_cpu"] > 0 and 0 <= s["knn_top1"] <= 100
    assert not any(work.iterdir())  # the runs' folders are removed


def test_bench_epoch_kmeans_only_reports_cold_and_warm_quality(tmp_path: Path) -> None:
    argv = ["--kmeans-only", "--n", "1500", "--k", "30", "--dim", "8", "--components", "10", "--steps", "1"]
    out = _tool("tools/bench_epoch.py", *argv, "--nredo", "2", "--niter", "10", "--work-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["step"] == 0 and "warm" not in first and second["step"] == 1
    for r in (first["cold"], second["cold"], second["warm"]):
        assert r["objective"] > 0 and 0 < r["ami_truth"] <= 1 and r["kmeans"] > 0 and r["kmeans_cpu"] >= 0
    assert 0 < second["ami_warm_vs_cold"] <= 1
    assert second["objective_warm_over_cold"] == round(second["warm"]["objective"] / second["cold"]["objective"], 5)
    assert not any(tmp_path.iterdir())


def test_bench_epoch_kmeans_from_a_run_reproduces_its_cold_estep_and_chains_the_warm_one(
    tiny_data: Path, tmp_path: Path
) -> None:
    exp = tmp_path / "run"
    flags = ["--epochs", "2", "--warmup-epochs", "0", "--kmeans-nredo", "2", "--keep-features", "--knn-freq", "0"]
    train = _tool("main_pcl.py", str(tiny_data), *TINY_ARGS, *flags, "--exp-dir", str(exp))
    assert train.returncode == 0, train.stderr
    out = _tool("tools/bench_epoch.py", "--kmeans-only", "--from-run", str(exp))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    logged = json.loads((exp / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [0, 1]
    for row, scalars in zip(rows, logged, strict=True):
        for k in (3, 5):
            g = row[f"k{k}"]  # cold = the run's own E-step (same features, settings and seeds)
            assert g["objective_cold"] == pytest.approx(scalars[f"cluster/k{k}/objective"], rel=1e-6)
            assert g["objective_warm_over_cold"] == round(g["objective_warm"] / g["objective_cold"], 5)
            assert -0.5 <= g["ami_warm"] <= 1 and -0.5 <= g["ami_cold"] <= 1
    first = rows[0]  # the first E-step has no previous centroids: warm is the cold result
    assert all(first[f"k{k}"]["ami_warm_vs_cold"] == 1.0 for k in (3, 5))
    assert first["kmeans_seconds_warm"] == first["kmeans_seconds_cold"]
    nothing = _tool("tools/bench_epoch.py", "--kmeans-only", "--from-run", str(tiny_data))
    assert nothing.returncode == 2 and nothing.stderr.strip().startswith("error: --from-run")
    assert len(nothing.stderr.strip().splitlines()) == 1


def test_bench_epoch_ami_equals_scikit_learns() -> None:
    from sklearn.metrics import adjusted_mutual_info_score

    ami = load_tool("bench_epoch").ami
    rng = np.random.default_rng(0)
    for n, ka, kb in [(500, 7, 30), (2000, 50, 200), (300, 300, 5)]:
        u = rng.integers(0, ka, n)
        v = np.where(rng.random(n) < 0.5, u % kb, rng.integers(0, kb, n))
        assert abs(ami(u, v) - adjusted_mutual_info_score(u, v)) < 1e-9
    assert ami(u, u) == pytest.approx(1.0)


def test_bench_epoch_without_data_is_one_error_line() -> None:
    out = _tool("tools/bench_epoch.py", "--rounds", "1")
    assert out.returncode == 2 and out.stderr.strip() == "error: epoch mode needs --data DIR (or use --kmeans-only)"


def test_bench_kmeans_compares_flat_and_hierarchical_and_counts_their_flops() -> None:
    bench_kmeans = load_tool("bench_kmeans")
    # 2 n_train k d per iteration and restart: flat every k on the 600 rows; hierarchical k=12 on them, k=4 on 12
    assert bench_kmeans.kmeans_flops(600, [4, 12], 8, 5, 2, False) == (2 * 600 * 4 * 8 + 2 * 600 * 12 * 8) * 10
    assert bench_kmeans.kmeans_flops(600, [4, 12], 8, 5, 2, True) == (2 * 600 * 12 * 8 + 2 * 12 * 4 * 8) * 10
    assert bench_kmeans.kmeans_flops(10**6, [10], 8, 1, 1, False) == 2 * 10_000 * 10 * 8  # faiss's 1000 per centroid
    argv = ["--n", "600", "--dim", "8", "--num-cluster", "4,12", "--components", "4", "--niter", "5", "--nredo", "1"]
    out = _tool("tools/bench_kmeans.py", *argv, "--rounds", "2", "--threads", "1", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert set(res["seconds"]) == {"flat", "hierarchical"} and all(len(r) == 2 for r in res["rounds"].values())
    for mode in ("flat", "hierarchical"):
        assert set(res["objective"][mode]) == set(res["ami_truth"][mode]) == {"4", "12"}
        assert res["seconds"][mode]["kmeans_cpu"] > 0 and res["gflops_per_cpu_s"][mode] > 0
    assert res["ami_hier_vs_flat"]["12"] == 1.0  # the finest level is the same faiss run on the same rows
    ex = res["extrapolation"]
    assert ex["n"] == 1_281_167 and ex["k"] == [25_000, 50_000, 100_000] and "extrapolation" in ex["note"]
    rate = res["flops"]["flat"] / res["seconds"]["flat"]["kmeans_cpu"]
    assert ex["cpu_hours"]["flat"] == pytest.approx(ex["flops"]["flat"] / rate / 3600, rel=0.01, abs=0.01)


def test_bench_kmeans_bad_list_is_one_error_line() -> None:
    out = _tool("tools/bench_kmeans.py", "--num-cluster", "10,,20")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("error:")
