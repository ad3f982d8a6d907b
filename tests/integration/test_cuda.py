"""CUDA-only paths (skipped without a GPU): sync-free ProtoNCE, pinned memory + non_blocking copies,
augmentation on the device, the step benchmark with synchronisation, a tiny bf16 run (GPU faiss if present)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import ROOT, tool_env

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(("k", "r"), [(50, 64), (5000, 256)])  # every free cluster / r drawn
def test_proto_nce_does_not_synchronise_with_the_host(k: int, r: int) -> None:
    from pcl.losses import proto_nce

    dev = torch.device("cuda")
    q = F.normalize(torch.randn(32, 16, device=dev), dim=1).requires_grad_()
    c = F.normalize(torch.randn(k, 16, device=dev), dim=1)
    positives = torch.randint(0, k, (32,), device=dev)
    concentration = torch.full((k,), 0.2, device=dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, correct = proto_nce(q, positives, c, concentration, r)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss) and 0 <= int(correct) <= 32


def test_loaders_pin_memory_and_gpu_aug_stays_on_the_device(tiny_data: Path) -> None:
    from pcl.data.augment import AugConfig
    from pcl.data.datasets import IndexedImageFolder, MultiView, train_loader
    from pcl.data.gpu_aug import GpuAugLoader
    from pcl.data.image_cache import attach_cache
    from pcl.data.views import CropGroup, ViewSpec

    cfg = AugConfig(image_size=16)
    ds = IndexedImageFolder(tiny_data / "train", MultiView.from_spec(cfg.view_spec(), cfg))
    (q, _), _ = next(iter(train_loader(ds, 8, 1, seed=0)))
    assert q.is_pinned()  # so that the engine's non_blocking copy is asynchronous
    attach_cache([ds], "yes", 64, show=False)
    gpu = GpuAugLoader(ds.cache.as_tensor(), cfg, 8, seed=0, device=torch.device("cuda"))
    assert gpu.images.is_cuda
    (q, k), index = next(iter(gpu))
    assert q.is_cuda and k.is_cuda and q.shape == (8, 3, 16, 16) and index.shape == (8,)
    spec = ViewSpec((CropGroup(2, 16, (0.4, 1.0)), CropGroup(2, 8, (0.05, 0.4), "local")))
    views, _ = next(iter(GpuAugLoader(ds.cache.as_tensor(), cfg, 8, 0, torch.device("cuda"), spec=spec)))
    assert [(v.is_cuda, v.shape[-1]) for v in views] == [(True, 16), (True, 16), (True, 8), (True, 8)]


def test_bench_step_on_cuda_prints_json() -> None:
    out = subprocess.run(
        [sys.executable, "tools/bench_step.py", "--device", "cuda", "--json", "--stem", "imagenet", "--image-size",
         "16", "--batch-size", "16", "--bn-splits", "2", "--pcl-r", "64", "--num-cluster", "5,80", "--num-train",
         "200", "--steps", "2", "--rounds", "2", "--warmup", "1", "--compare", "moco,pcl,pcl+channels_last"],
        cwd=ROOT, capture_output=True, text=True, check=True, env=tool_env(),
    )  # fmt: skip
    res = json.loads(out.stdout)
    assert res["device"] == "cuda" and set(res["s_per_step"]) == {"moco", "pcl", "pcl+channels_last"}


def test_tiny_training_run_on_cuda_with_bf16_and_gpu_aug(tiny_data: Path, tmp_path: Path) -> None:
    from pcl import cli
    from tests.helpers import TINY_ARGS

    flags = [str(tiny_data), *TINY_ARGS, "--exp-dir", str(tmp_path)]
    assert cli.main([*flags, "--device", "cuda", "--amp", "bf16", "--gpu-aug", "--channels-last"]) == 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False, map_location="cpu")
    assert ckpt["epoch"] == 2 and ckpt["cluster_result"] is not None
