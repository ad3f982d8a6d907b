"""Methods behind one interface (pcl/methods): ``--method moco`` is MoCo v2, the same run as PCL without an
E-step; a method with an extra loss term (tests/plugins/toy_method.py) is trained, logged and guarded by name with
no change to the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tests.plugins.toy_method as toy
from pcl import cli
from tests.helpers import TINY_ARGS, load_tool, scalars


def run(data: Path, exp_dir: Path, *extra: str) -> int:
    return cli.main([str(data), *TINY_ARGS, "--exp-dir", str(exp_dir), *extra])


def weights(exp_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(exp_dir / "checkpoints" / "last.pth", weights_only=False)["model"]


def test_method_moco_is_pcl_without_an_estep_bit_for_bit(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(tiny_data, tmp_path / "moco", "--method", "moco", "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert "note:" not in out and "acc_proto" not in out
    assert run(tiny_data, tmp_path / "pcl", "--warmup-epochs", "1", "--epochs", "1") == 0
    assert "note: --warmup-epochs 1 >= --epochs 1: no E-step will run" in capsys.readouterr().out
    a, b = weights(tmp_path / "moco"), weights(tmp_path / "pcl")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "moco" / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["cluster_result"] is None and ckpt["config"]["method"] == "moco"
    assert "epoch/acc_proto" not in json.loads((tmp_path / "moco" / "metrics.json").read_text())["epochs"][0]
    # issue 27, item 9: clusters asked of a MoCo v2 run say why there is no figure
    evaluate = load_tool("evaluate")
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "moco"), "--protocols", "clusters", "--device", "cpu", "-j", "0"]) == 0
    out = capsys.readouterr().out
    assert "(no protocol gave a figure)" in out and "clusters not scored: the run has no E-step clusters yet" in out


def test_a_cluster_head_with_moco_is_one_error_line(tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert run(tiny_data, tmp_path, "--method", "moco", "--cluster-head", "mlp") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --cluster-head mlp is PCL's: use --method pcl, or drop it"]
    assert run(tiny_data, tmp_path, "--method", "simclr") == 2
    assert "error: unknown method 'simclr'; choose from dino, moco, pcl" in capsys.readouterr().err


def test_resuming_with_another_method_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert run(tiny_data, tmp_path, "--method", "moco", "--epochs", "1") == 0
    assert run(tiny_data, tmp_path, "--epochs", "2", "--resume", "auto") == 2
    assert "--method moco -> pcl" in capsys.readouterr().err


def test_a_new_loss_term_is_trained_logged_and_guarded_by_name(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert run(tiny_data, tmp_path / "toy", "--method", "pcl-uniform") == 0
    tags = scalars(tmp_path / "toy")
    steps = dict(tags["train/loss_uniform"])
    assert len(steps) == 12 and all(-4.0 < v <= 0.0 for v in steps.values())  # log of a mean of exp(-2 d^2)
    for s, total in tags["train/loss"][6:]:  # epoch 1: InfoNCE + ProtoNCE + 0.1 uniformity
        parts = dict(tags["train/loss_inst"])[s] + dict(tags["train/loss_proto"])[s] + toy.WEIGHT * steps[s]
        assert abs(total - parts) < 1e-4
    record = json.loads((tmp_path / "toy" / "metrics.json").read_text())["epochs"]
    assert [round(r["epoch/loss_uniform"], 5) for r in record] == [
        round(sum(v for s, v in steps.items() if s // 6 == e) / 6, 5) for e in (0, 1)  # equal batches: mean
    ]
    # a non-finite value of the new term is skipped by the guard and named in its message
    monkeypatch.setattr(toy, "uniformity", lambda q: q.sum() * math.nan)
    capsys.readouterr()
    assert run(tiny_data, tmp_path / "nan", "--method", "pcl-uniform", "--max-bad-steps", "2") == 2
    err = capsys.readouterr().err
    assert "non-finite uniformity" in err and "2 consecutive non-finite steps" in err


def test_a_new_loss_term_is_a_column_of_a_suite_summary(tiny_data: Path, tmp_path: Path) -> None:
    """The toy method, loaded in the runner's training processes through ``PCL_PLUGINS`` (no edit of the package),
    trains in a suite; the suite file's ``columns`` shows its term's last-epoch value, mean over seeds."""
    import csv
    import os

    from tests.helpers import load_experiments, write_suite

    runner = load_experiments()
    suite = write_suite(tmp_path / "toy.toml", '[[runs]]\nname = "uniform"\nflags = { method = "pcl-uniform" }\n')
    suite.write_text(suite.read_text().replace("seeds = 1\n", 'seeds = 1\ncolumns = ["epoch/loss_uniform"]\n'))
    os.environ["PCL_PLUGINS"] = "tests.plugins.toy_method"
    try:
        assert runner.main([str(suite), str(tiny_data), "--out", str(tmp_path / "out")]) == 0
    finally:
        del os.environ["PCL_PLUGINS"]
    record = json.loads((tmp_path / "out" / "toy" / "uniform" / "seed0" / "metrics.json").read_text())
    rows = list(csv.DictReader((tmp_path / "out" / "toy" / "results.csv").read_text().splitlines()))
    assert float(rows[0]["epoch_loss_uniform_mean"]) == pytest.approx(record["epochs"][-1]["epoch/loss_uniform"])
    assert "epoch/loss_uniform (last epoch)" in (tmp_path / "out" / "toy" / "results.md").read_text()


def test_a_plugin_that_cannot_be_imported_is_one_error_line(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PCL_PLUGINS", "no_such_module_here")
    assert run(tiny_data, tmp_path, "--method", "mine") == 2
    assert capsys.readouterr().err.strip() == (
        "error: PCL_PLUGINS: cannot import 'no_such_module_here': ModuleNotFoundError: No module named "
        "'no_such_module_here'"
    )
