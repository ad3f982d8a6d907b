"""Linear probe (features and official protocols), the evaluation tools and their agreement across sources."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pcl.config import Config, to_dict
from pcl.eval.frozen import frozen_features
from pcl.eval.linear_official import OfficialConfig, step_lr, train_official
from pcl.eval.linear_probe import holdout_split, linear_probe, topk_accuracy
from pcl.eval.pretrained import untrained
from pcl.methods.pcl import PCL
from pcl.model.encoder import ModelConfig
from tests.helpers import load_tool

FAST = ["--wd-grid", "1e-3,1e-1", "--max-iter", "30", "--workers", "0", "--eval-batch-size", "16"]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny problems: one intra-op thread is ~25x faster than two on a loaded 2-core machine (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, classes, (n,), generator=g)
    return means[y] + torch.randn(n, dim, generator=g), y, means


def test_separable_features_reach_100_and_shuffled_labels_stay_near_chance() -> None:
    x, y, _ = _blobs(600, 5, 16, seed=0)
    xt, yt, _ = _blobs(400, 5, 16, seed=1)
    res = linear_probe(x, y, xt, yt, 5, wds=(1e-3, 1e-1), max_iter=50)
    assert res.top1 >= 99.0 and res.top5 == 100.0
    assert set(res.val_top1) == {1e-3, 1e-1}
    shuffled = y[torch.randperm(600, generator=torch.Generator().manual_seed(2))]
    chance = linear_probe(x, shuffled, xt, yt, 5, wds=(1e-3, 1e-1), max_iter=50)
    assert abs(chance.top1 - 20.0) < 8.0  # 5 classes: chance is 20 %, 400 test rows: std ~2 %


def test_topk_accuracy_and_holdout_split() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 0, 1])
    assert topk_accuracy(logits, labels, 1) == 25.0  # only row 0
    assert topk_accuracy(logits, labels, 2) == 50.0  # rows 0 and 1
    assert topk_accuracy(logits, labels, 5) == 100.0  # k is capped at the number of classes
    fit, val = holdout_split(10, 0.2, 0, torch.device("cpu"))
    assert len(val) == 2 and sorted(torch.cat([fit, val]).tolist()) == list(range(10))
    assert torch.equal(val, holdout_split(10, 0.2, 0, torch.device("cpu"))[1])  # seeded


def test_official_schedule_and_frozen_eval_mode_backbone() -> None:
    cfg = OfficialConfig()
    assert (cfg.lr, cfg.epochs, cfg.schedule, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (
        5.0,
        100,
        [60, 80],
        0.9,
        0.0,
        256,
    )
    assert [step_lr(cfg, e) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([5, 5, 0.5, 0.5, 0.05, 0.05])
    backbone = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    x, y, _ = _blobs(64, 2, 8, seed=0)
    data = torch.utils.data.TensorDataset(x, torch.arange(64))
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
    small = OfficialConfig(epochs=5, batch_size=16, lr=1.0, schedule=[3])
    res = train_official(backbone, 8, 2, loader, y, loader, y, small, torch.device("cpu"), show=False)
    assert res.top1 > 90.0
    for k, v in backbone.state_dict().items():  # weights and BN running statistics untouched
        assert torch.equal(v, before[k]), k
    assert not backbone.training


def _fake_checkpoint(path: Path, seed: int = 0) -> dict:
    """A PCL checkpoint holding the seed-``seed`` untrained model, with the configuration of a 16-px run."""
    cfg = Config()
    cfg.model = ModelConfig(arch="resnet18", low_dim=16, pcl_r=16, bn_splits=1)
    cfg.data.aug = dataclasses.replace(cfg.data.aug, image_size=16)
    torch.manual_seed(seed)
    model = PCL.from_config(cfg)
    ckpt = {"epoch": 0, "model": model.state_dict(), "config": to_dict(cfg), "cluster_result": None}
    torch.save(ckpt, path)
    return ckpt


def test_checkpoint_untrained_and_exported_agree(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "ckpt.pth"
    _fake_checkpoint(ckpt)
    exported = tmp_path / "backbone.pth"
    monkeypatch.setattr(sys, "argv", ["export_backbone.py", str(ckpt), str(exported)])
    load_tool("export_backbone").main()  # in-process: a second interpreter would re-import torch
    lin = load_tool("linear_eval")  # tools/evaluate.py --protocols linear
    common = ["--data", str(tiny_data), *FAST, "--device", "cpu"]
    sources = {
        "checkpoint": [str(ckpt)],
        "untrained": ["--untrained", "--image-size", "16", "--seed", "0"],
        "exported": ["--exported", str(exported), "--image-size", "16"],
    }
    results = {}
    for name, source in sources.items():
        assert lin.main([*source, *common, "--out", str(tmp_path / f"{name}.json")]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    a = results["checkpoint"]
    assert a["knn_top1"] is None and a["settings"]["linear"]["protocol"] == "features"  # the linear protocol only
    for r in (results["untrained"], results["exported"]):
        assert (r["linear_top1"], r["linear_top5"]) == (a["linear_top1"], a["linear_top5"])
        assert r["settings"]["linear"]["val_top1"] == a["settings"]["linear"]["val_top1"]
    assert [results[n]["settings"]["encoder"] for n in sources] == ["query", "untrained", "exported"]
    assert 0.0 <= a["linear_top1"] <= 100.0 and a["linear_top5"] == 100.0  # 3 classes: top-5 covers all


def test_official_protocol_runs_end_to_end(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lin = load_tool("linear_eval")
    argv = ["--untrained", "--image-size", "16", "--data", str(tiny_data), "--linear-protocol", "official"]
    argv += ["--linear-epochs", "2", "--linear-batch-size", "16", "--linear-lr", "1", "--linear-schedule", "1"]
    assert lin.main([*argv, "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "linear top-1 (official protocol)" in out and "linear top-5 (official protocol)" in out
    settings = json.loads((tmp_path / "o.json").read_text())["settings"]["linear"]
    assert settings["protocol"] == "official" and settings["epochs"] == 2 and settings["schedule"] == [1]


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_checkpoint_is_one_error_line(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes | None
) -> None:
    bad = tmp_path / "bad.pth"
    if content is None:
        torch.save({"something": 1}, bad)  # readable, but not a PCL checkpoint
    else:
        bad.write_bytes(content)
    for tool in ("linear_eval", "knn_eval"):
        assert load_tool(tool).main([str(bad), "--data", str(tiny_data), "--workers", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]
    assert load_tool("evaluate").main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_feature_cache_is_reused_and_keyed_by_weights(tiny_data: Path, tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    first = frozen_features(untrained("resnet18", "imagenet", 16, 0), str(tiny_data), cpu, 16, 0, tmp_path, False)
    (cache,) = tmp_path.glob("features-*.pt")
    stamp = cache.stat().st_mtime_ns
    again = frozen_features(untrained("resnet18", "imagenet", 16, 0), str(tiny_data), cpu, 16, 0, tmp_path, False)
    assert cache.stat().st_mtime_ns == stamp  # read back, not rewritten
    assert torch.equal(first.train, again.train) and torch.equal(first.test_labels, again.test_labels)
    assert first.train.shape == (48, 512) and first.test.shape == (12, 512)
    other = frozen_features(untrained("resnet18", "imagenet", 16, 1), str(tiny_data), cpu, 16, 0, tmp_path, False)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2 and not torch.equal(other.train, first.train)
