"""The benchmark tools run on tiny settings and print well-formed JSON; bad flags give one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, tool_env

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
