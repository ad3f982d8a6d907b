"""timm backbones end to end on tiny data: a ViT with local crops and ``--accum-steps 2`` trains, logs the local
crops' terms, counts optimizer steps, stops on SIGTERM mid-epoch and resumes bit-identically, exports a
safetensors file that a fresh timm model (built by the printed recipe) loads to the same outputs, and is scored by
``tools/evaluate.py``; a ConvNeXt trains at 32 px."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from pcl import cli
from tests.helpers import TINY_ARGS, load_tool, make_image_folder, scalars

STEPS_PER_EPOCH = 48 // 8  # optimizer steps: --batch-size 8 in --accum-steps 2 micro-batches of 4
VIT = ["--arch", "test_vit", "--patch-size", "4", "--local-crops", "2", "--local-crop-size", "8", "--accum-steps", "2"]


def run(data: Path, exp_dir: Path, *extra: str) -> int:
    return cli.main([str(data), *TINY_ARGS, "--exp-dir", str(exp_dir), *VIT, *extra])


@pytest.fixture(scope="module")
def vit_run(tiny_data: Path, module_tmp: Path) -> Path:
    exp = module_tmp / "vit"
    assert run(tiny_data, exp) == 0
    return exp


def assert_identical(a_dir: Path, b_dir: Path) -> None:
    a = torch.load(a_dir / "checkpoints" / "last.pth", weights_only=False)
    b = torch.load(b_dir / "checkpoints" / "last.pth", weights_only=False)
    assert (a["epoch"], a["global_step"], a["step_in_epoch"]) == (b["epoch"], b["global_step"], b["step_in_epoch"])
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name  # queue, pointer and all weights
    for la, lb in zip(a["cluster_result"]["levels"], b["cluster_result"]["levels"], strict=True):
        assert torch.equal(la["im2cluster"], lb["im2cluster"])


def test_vit_with_local_crops_and_accumulation_trains(vit_run: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = torch.load(vit_run / "checkpoints" / "last.pth", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 2 * STEPS_PER_EPOCH)  # optimizer steps, not micro-batches
    assert int(ckpt["model"]["queue_ptr"]) == (2 * STEPS_PER_EPOCH * 8) % 16  # every step enqueued its 8 keys
    tags = scalars(vit_run)
    for t in ["train/loss_inst", "train/acc_inst", "train/loss_inst_local", "train/acc_inst_local"]:
        assert len(tags[t]) == 2 * STEPS_PER_EPOCH, t
    assert {s for s, _ in tags["train/loss_proto_local"]} == set(range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH))
    final = json.loads((vit_run / "metrics.json").read_text())["final"]
    assert final["peak_rss_mib"] > 0 and final["skipped_steps"] == 0


def test_sigterm_mid_epoch_resumes_bit_identically(
    vit_run: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from pcl.train.engine import Trainer

    log_step = Trainer._log_step

    def log_then_signal(self: Trainer, step: object) -> None:
        log_step(self, step)
        if self.state.global_step == STEPS_PER_EPOCH + 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_log_step", log_then_signal)
    assert run(tiny_data, tmp_path) == 128 + signal.SIGTERM
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 3, STEPS_PER_EPOCH + 3)
    monkeypatch.setattr(Trainer, "_log_step", log_step)
    assert run(tiny_data, tmp_path, "--resume", "auto") == 0
    assert "3 steps into epoch 1" in capsys.readouterr().out
    assert_identical(vit_run, tmp_path)


def test_export_round_trip_into_a_fresh_timm_model(
    vit_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The printed recipe, executed as written, builds a fresh timm model that gives the trained backbone's
    outputs on full-size and local-size crops."""
    import safetensors.torch
    import timm

    from pcl.model.backbone import BackboneSpec, build_backbone

    out = tmp_path / "vit.safetensors"
    monkeypatch.setattr(sys, "argv", ["export_backbone.py", str(vit_run / "checkpoints" / "last.pth"), str(out)])
    capsys.readouterr()
    assert load_tool("export_backbone").main() == 0
    recipe = capsys.readouterr().out.splitlines()[-1].removeprefix("load: ")
    assert "timm.create_model('test_vit', pretrained=False, num_classes=0" in recipe
    scope = {"timm": timm, "torch": torch, "safetensors": safetensors}
    exec(recipe, scope)  # m = timm.create_model(...); m.load_state_dict(...)
    fresh = scope["m"].eval()
    trained, _ = build_backbone(BackboneSpec("test_vit", "imagenet", 16, 1, patch_size=4))
    state = torch.load(vit_run / "checkpoints" / "last.pth", weights_only=False)["model"]
    prefix = "encoder_q.backbone."
    trained.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    trained.eval()
    for size in (16, 8):
        x = torch.randn(4, 3, size, size)
        with torch.no_grad():
            assert torch.equal(fresh(x), trained(x)), size
    meta = json.loads(safetensors.safe_open(str(out), "pt").metadata()["pcl"])
    assert meta == {"arch": "test_vit", "stem": "imagenet", "image_size": 16, "patch_size": 4}


def test_evaluate_scores_the_vit_run(vit_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evaluate = load_tool("evaluate")
    argv = [str(vit_run), "--protocols", "knn,kmeans", "--device", "cpu", "-j", "0", "--out", str(tmp_path / "e.json")]
    assert evaluate.main(argv) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= result["knn_top1"] <= 100


def test_convnext_trains_at_32_px(tmp_path: Path) -> None:
    data = tmp_path / "data32"
    make_image_folder(data / "train", per_class=16, size=32, seed=0)
    make_image_folder(data / "test", per_class=4, size=32, seed=1)
    exp = tmp_path / "convnext"
    argv = [str(data), *TINY_ARGS, "--image-size", "32", "--arch", "test_convnext", "--exp-dir", str(exp)]
    assert cli.main(argv) == 0
    ckpt = torch.load(exp / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["epoch"] == 2 and any(k.startswith("encoder_q.backbone.stages.") for k in ckpt["model"])
