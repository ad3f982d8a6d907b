"""Non-finite guard, finite-only checkpoints and mixed precision on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pcl import cli
from pcl.run.checkpoint import non_finite_entries, save_checkpoint
from pcl.utils.errors import PCLError
from tests.helpers import TINY_ARGS, scalars


def test_exploding_run_is_caught(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [
        str(tiny_data),
        *TINY_ARGS,
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--max-bad-steps",
        "3",
        "--exp-dir",
        str(tmp_path),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith("error: 3 consecutive non-finite steps") and "InfoNCE" in last and "Remedies" in last
    assert "lr=1e+30" in last
    tags = scalars(tmp_path)
    skipped = tags["train/skipped_steps"]
    assert skipped[-1][1] == 3
    bad_steps = {s for (s, v), (_, prev) in zip(skipped[1:], skipped, strict=False) if v > prev} | (
        {skipped[0][0]} if skipped[0][1] > 0 else set()
    )
    assert len(bad_steps) == 3
    logged_acc = {s for s, _ in tags.get("train/acc_inst", [])}
    assert logged_acc.isdisjoint(bad_steps)  # a NaN step never reports an accuracy (NaN argmax = index 0)
    for ckpt in tmp_path.rglob("*.pth"):
        assert non_finite_entries(torch.load(ckpt, weights_only=False)) == []


def test_checkpoint_refuses_non_finite_tensors(tmp_path: Path) -> None:
    state = {"model": {"w": torch.tensor([1.0, float("nan")])}, "optimizer": {"state": {0: {"m": torch.ones(2)}}}}
    with pytest.raises(PCLError, match=r"model\.w"):
        save_checkpoint(state, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    state["model"]["w"] = torch.ones(2)
    save_checkpoint(state, tmp_path / "x.pth")
    assert torch.load(tmp_path / "x.pth")["model"]["w"].sum() == 2


def test_bf16_autocast_and_channels_last_end_to_end_on_cpu(tiny_data: Path, tmp_path: Path) -> None:
    # small stem: with the ImageNet stem, 16-px images reach layer4 as 1x1 maps, where BatchNorm over a few
    # near-identical bf16 values is degenerate (gradients ~1e26, correctly skipped as non-finite norms)
    argv = [
        str(tiny_data),
        *TINY_ARGS,
        "--amp",
        "bf16",
        "--stem",
        "small",
        "--channels-last",
        "--exp-dir",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    tags = scalars(tmp_path)
    assert all(v == v and abs(v) < 1e4 for _, v in tags["train/loss"])  # finite
    assert tags["train/skipped_steps"][-1][1] == 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["model"]["queue"].dtype == torch.float32  # the queue stays in float32 under autocast
    assert all(lv["density"].dtype == torch.float32 for lv in ckpt["cluster_result"]["levels"])


def test_clip_grad_and_amp_scale_are_logged(tiny_data: Path, tmp_path: Path) -> None:
    argv = [
        str(tiny_data),
        *TINY_ARGS,
        "--amp",
        "fp16",
        "--clip-grad",
        "1.0",
        "--epochs",
        "1",
        "--optimizer",
        "lamb",
        "--lr",
        "0.01",
        "--exclude-bn-bias",
        "--exp-dir",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    tags = scalars(tmp_path)
    assert "train/amp_scale" in tags and "train/lr/decay" in tags and "train/lr/no_decay" in tags
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["scaler"]["scale"] == tags["train/amp_scale"][-1][1]  # GradScaler state is checkpointed


# ---------------------------------------------------------------- finite collapse (issue 20)
def _constant_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model built by the CLI gets a projection head whose output is a constant (weights 0, bias 1)."""
    build = cli.build_model

    def build_collapsed(cfg: object, info: object) -> tuple:
        raw, model = build(cfg, info)
        with torch.no_grad():
            for enc in (raw.encoder_q, raw.encoder_k):
                last = enc.head[-1]
                last.weight.zero_()
                last.bias.fill_(1.0)
        return raw, model

    monkeypatch.setattr(cli, "build_model", build_collapsed)


def test_a_finite_collapse_is_detected_within_a_few_steps_and_stops_with_a_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from pcl.train.health import COLLAPSE_EXIT, WINDOW

    _constant_head(monkeypatch)
    argv = [str(tiny_data), *TINY_ARGS, "--warmup-epochs", "2", "--optimizer", "sgd", "--lr", "1e-9"]
    assert cli.main([*argv, "--exp-dir", str(tmp_path), "--stop-on-collapse"]) == COLLAPSE_EXIT
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if "embeddings collapsed" in ln]
    assert len(warnings) == 1 and "(now lr 1e-09" in warnings[0] and "--lr 5e-10" in warnings[0], err  # a lower lr
    assert "Traceback" not in err, err
    assert "stopped: finite collapse" in err and "--resume auto" in err
    # the queue (r = 16) is full of identical keys after 2 steps of 8: InfoNCE at chance from step 2 on
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["global_step"] == 2 + WINDOW and ckpt["step_in_epoch"] == (2 + WINDOW) % (48 // 8)
    ratio = dict(scalars(tmp_path)["health/std_ratio"])
    assert all(ratio[s] < 1e-3 for s in range(2, 2 + WINDOW))


def test_a_healthy_run_raises_no_collapse_warning(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Also from its first steps (the thresholds hold at initialisation); health/* per step and per epoch."""
    import json

    from pcl.train.health import STD_RATIO_MIN

    argv = [str(tiny_data), *TINY_ARGS, "--epochs", "1", "--exp-dir", str(tmp_path), "--stop-on-collapse"]
    assert cli.main(argv) == 0
    assert "collapse" not in capsys.readouterr().err
    tags = scalars(tmp_path)
    assert [s for s, _ in tags["health/std_ratio"]] == list(range(48 // 8))  # --print-freq 1: every step
    assert min(v for _, v in tags["health/std_ratio"]) > 2 * STD_RATIO_MIN
    assert all(v > 1.5 for _, v in tags["health/effective_rank"])
    epoch = json.loads((tmp_path / "metrics.json").read_text())["epochs"][0]
    assert {"health/epoch_std_ratio", "health/epoch_effective_rank", "health/epoch_infonce_gap"} <= set(epoch)


def test_a_resume_from_a_collapse_stop_with_a_remedy_runs_its_estep_and_finishes(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Issue 27, defect 8: a collapsed encoder (constant head) reaches the E-step of epoch 1 with identical
    features; its concentrations stay finite (they were NaN: every checkpoint after it was refused, exit 2), the
    collapse stops the run in epoch 1 (exit 3), and the resume with a remedy trains ProtoNCE to the end."""
    from pcl.train.health import COLLAPSE_EXIT

    _constant_head(monkeypatch)
    argv = [str(tiny_data), *TINY_ARGS, "--optimizer", "sgd", "--exp-dir", str(tmp_path)]
    assert cli.main([*argv, "--lr", "1e-9", "--stop-on-collapse"]) == COLLAPSE_EXIT
    out, err = capsys.readouterr()
    assert "warning: E-step k=3: 1 of 1 clusters have every member on their centroid" in out
    stopped = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)
    assert (stopped["epoch"], stopped["step_in_epoch"]) == (1, 1) and not non_finite_entries(stopped)
    for level in stopped["cluster_result"]["levels"]:
        assert abs(float(level["density"].double().mean()) - 0.2) < 1e-6 and bool((level["density"] > 0).all())
    assert cli.main([*argv, "--lr", "1e-3", "--resume", "auto"]) == 0  # the remedy: another --lr
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["epoch"] == 2 and not non_finite_entries(ckpt)
    proto = dict(scalars(tmp_path)["train/loss_proto"])
    assert sorted(proto) == list(range(6, 12)) and all(math.isfinite(v) for v in proto.values())
    assert dict(scalars(tmp_path)["train/skipped_steps"])[11] == 0
