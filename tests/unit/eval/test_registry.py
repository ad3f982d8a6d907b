"""The protocol registry: a toy protocol registered from a test-only module is evaluated, written, printed and
flagged like the built-in ones; the generated command line keeps ``tools/evaluate.py``'s flags and defaults."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from pcl.eval.eval_config import EvalConfig
from pcl.eval.evaluation import evaluate_run
from pcl.eval.finetune import FinetuneConfig
from pcl.eval.frozen import frozen_features
from pcl.eval.linear_official import OfficialConfig
from pcl.eval.lowshot import DEFAULT_COSTS, LowShotConfig
from pcl.eval.pretrained import untrained
from pcl.eval.protocols import PROTOCOLS, Protocol, register_protocol
from pcl.eval.protocols.kmeans import KmeansSettings
from pcl.eval.protocols.knn import KnnSettings
from pcl.eval.protocols.linear import LinearSettings
from pcl.eval.registry import Block, choose, setting_flags, settings_from
from pcl.utils.errors import PCLError
from tests.helpers import load_tool

CPU = ["--device", "cpu", "-j", "0", "--eval-batch-size", "16"]


def test_builtin_protocols_in_table_and_column_order() -> None:
    assert list(PROTOCOLS)[:6] == ["knn", "linear", "clusters", "lowshot", "finetune", "kmeans"]
    assert [n for n, p in PROTOCOLS.items() if p.default_on] == ["knn", "linear", "clusters"]
    columns = [c.key for p in PROTOCOLS.values() for c in p.columns]
    # the suite summaries' CSV keys of the committed results
    assert columns == ["knn", "linear", "ami", "lowshot_k1", "lowshot_k16", "finetune_1", "finetune_10",
                       "finetune_lp_1", "finetune_lp_10", "cluster_acc"]  # fmt: skip
    assert [n for n, p in PROTOCOLS.items() if p.trained_only] == ["clusters"]


def test_the_generated_command_line_keeps_the_flags_and_defaults() -> None:
    tool = load_tool("evaluate")
    a = tool.build_parser().parse_args(["runs/x"])
    chosen = tool.chosen_protocols(a)
    assert chosen == ["knn", "linear", "clusters"]
    assert tool.config_from_args(a, chosen) == EvalConfig()  # no flag given: every default
    argv = ["runs/x", "--knn-k", "20", "--knn-t", "0.05", "--wd-grid", "0.1,1", "--val-fraction", "0.3"]
    argv += ["--max-iter", "7", "--lowshot", "1,4", "--lowshot-draws", "2", "--lowshot-costs", "0.5"]
    argv += ["--finetune", "50", "--finetune-steps", "3", "--finetune-batch-size", "4", "--finetune-lr", "0.2"]
    argv += ["--finetune-head-lr", "2", "--finetune-wd", "1e-4", "--kmeans", "7", "--kmeans-restarts", "3"]
    argv += ["--seed", "5", "--eval-batch-size", "8", "-j", "0", "--no-clusters", "--linear-schedule", "3,4"]
    a = tool.build_parser().parse_args(argv)
    chosen = tool.chosen_protocols(a)
    assert chosen == ["knn", "linear", "lowshot", "finetune", "kmeans"]  # own flags turn protocols on
    cfg = tool.config_from_args(a, chosen)
    assert (cfg.seed, cfg.batch_size, cfg.workers) == (5, 8, 0)
    assert cfg.protocols == {
        "knn": KnnSettings(20, 0.05),
        "linear": LinearSettings(wd_grid=(0.1, 1.0), val_fraction=0.3, max_iter=7,
                                 official=OfficialConfig(schedule=[3, 4])),
        "lowshot": LowShotConfig(ks=(1, 4), draws=2, costs=(0.5,)),
        "finetune": FinetuneConfig((50.0,), steps=3, batch_size=4, lrs=(0.2,), head_lrs=(2.0,), weight_decay=1e-4),
        "kmeans": KmeansSettings((7,), 3),
    }  # fmt: skip
    a = tool.build_parser().parse_args(["x", "--protocols", "kmeans,knn"])
    assert tool.chosen_protocols(a) == ["knn", "kmeans"]  # registry order


def test_settings_flags_walk_nested_dataclasses() -> None:
    names = [s.flag.name for s in setting_flags(LinearSettings)]
    assert names[:4] == ["--linear-protocol", "--wd-grid", "--val-fraction", "--max-iter"]
    assert names[4:] == [f"--linear-{n}" for n in ("epochs", "batch-size", "lr", "momentum", "wd", "schedule")]
    s = settings_from(LinearSettings, {"wd_grid": [0.5], "linear_lr": 30.0})
    assert s.wd_grid == (0.5,) and s.official.lr == 30.0 and s.official.epochs == 100  # list -> tuple field
    every = [s.flag.name for p in PROTOCOLS.values() for s in setting_flags(p.settings)]
    assert len(every) == len(set(every))  # no two protocols declare the same flag
    assert LowShotConfig().costs == DEFAULT_COSTS


def test_register_refuses_a_second_protocol_of_a_name_and_a_bad_switch() -> None:
    knn = PROTOCOLS["knn"]
    assert register_protocol(knn) is knn  # the same object again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_protocol(dataclasses.replace(knn, help="another"))
    with pytest.raises(TypeError, match="switch 'nope'"):
        register_protocol(Protocol("bad", "", KnnSettings, lambda ctx, s: Block({}), switch="nope"))
    assert "bad" not in PROTOCOLS
    with pytest.raises(PCLError, match="unknown protocol svm"):
        choose("knn", "svm")
    with pytest.raises(PCLError, match="--knn-k must be positive, got 0"):  # Python callers get the flag's range
        EvalConfig(protocols=choose(knn=KnnSettings(k=0))).validate()


def test_a_toy_protocol_from_a_test_module_is_evaluated_written_and_printed(
    toy_protocol: ModuleType, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert list(PROTOCOLS)[-1] == "toy" and not PROTOCOLS["toy"].default_on
    pre = untrained("resnet18", "imagenet", 16, 0)
    feats = frozen_features(pre, str(tiny_data), torch.device("cpu"), 16, 0, show=False)
    expected = 2.5 * float(feats.train.norm(dim=1).mean())  # by hand, on the same frozen features
    # evaluate_run with the registry's protocol
    cfg = EvalConfig(data=str(tiny_data), device="cpu", workers=0, batch_size=16, show=False, untrained_bn="init",
                     out=tmp_path / "api.json", protocols=choose("knn", toy=toy_protocol.ToySettings(2.5)))  # fmt: skip
    res = evaluate_run(pre, cfg)
    assert res["toy"]["mean_norm"] == pytest.approx(expected, rel=1e-6) and res["knn_top1"] is not None
    assert res["settings"]["toy"] == {"scale": 2.5, "features": "untrained backbone, L2-normalised"}
    assert json.loads((tmp_path / "api.json").read_text())["toy"] == res["toy"]
    # the tool: its flag, the protocol's own table row, eval.json under its name
    tool = load_tool("evaluate")
    out = tmp_path / "tool.json"
    argv = ["--untrained", "--image-size", "16", "--data", str(tiny_data), *CPU, "--out", str(out), "--untrained-bn",
            "init"]  # the features built above: BatchNorm statistics at init  # fmt: skip
    assert tool.main([*argv, "--protocols", "toy", "--toy-scale", "2.5"]) == 0
    printed = capsys.readouterr().out
    assert f"toy mean feature norm  {expected:.4f}" in printed and "kNN top-1" not in printed
    assert json.loads(out.read_text())["toy"]["mean_norm"] == pytest.approx(expected, rel=1e-6)
    assert "--toy-scale TOY_SCALE" in tool.build_parser().format_help()
    # its flag's range, and its flag given while it does not run
    assert tool.main([*argv, "--protocols", "toy", "--toy-scale", "0"]) == 2
    assert capsys.readouterr().err == "error: argument --toy-scale: must be positive, got 0.0\n"
    assert tool.main([*argv, "--protocols", "knn", "--toy-scale", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("note: --toy-scale has no effect: the toy protocol is not chosen\n")
    assert "toy mean" not in printed and "toy" not in json.loads(out.read_text())
