"""Typed configuration: one source of defaults, asdict round trip, old checkpoints' flat ``args``."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from pcl.config import (
    LEGACY_MOVES,
    Config,
    build_parser,
    config_from_dict,
    parse_config,
    resolve,
    stored_config,
    to_dict,
    to_json,
)
from pcl.data.datasets import AugConfig, DataConfig
from pcl.estep.clustering import KMeansConfig
from pcl.estep.estep import EStepConfig
from pcl.losses.config import LossConfig
from pcl.methods.dino import DINOConfig
from pcl.methods.pcl import PCL
from pcl.methods.swav import SwAVConfig
from pcl.model.encoder import ModelConfig
from pcl.run.checkpointer import CheckpointConfig
from pcl.train.config import StepConfig, TrainConfig
from pcl.train.monitor import MonitorConfig
from pcl.train.optim import OptimConfig
from pcl.utils.errors import PCLError
from pcl.utils.flags import flag_of


def test_command_line_defaults_are_the_dataclass_defaults() -> None:
    cfg = parse_config([])
    assert cfg.model == ModelConfig()
    assert cfg.train == TrainConfig()
    assert cfg.estep.kmeans == KMeansConfig()
    assert cfg.data.aug == AugConfig().resolved()
    assert cfg.optim == OptimConfig().resolved()
    assert cfg.estep.num_cluster == EStepConfig().num_cluster
    assert (cfg.data.workers, cfg.data.eval_batch_size) == (DataConfig().workers, DataConfig().eval_batch_size)
    assert (cfg.loss, cfg.step, cfg.monitor) == (LossConfig(), StepConfig().resolved(), MonitorConfig())
    assert cfg.method == "pcl" and cfg.checkpoint == CheckpointConfig()
    # a model built without the command line is the command line's default model
    assert (PCL.from_config(Config()).r, PCL.from_config(Config()).m) == (1024, 0.99)


def test_flags_land_in_their_stage() -> None:
    argv = ["DATA", "--arch", "resnet50", "--kmeans-niter", "3", "--kmeans-max-points", "99", "--image-size", "96"]
    cfg = parse_config([*argv, "--feature-shard-rows", "7", "--exp-dir", "x/run", "--optimizer", "sgd"])
    assert cfg.data.root == "DATA" and cfg.model.arch == "resnet50"
    assert cfg.estep.kmeans.niter == 3 and cfg.estep.max_points == 99 and cfg.estep.shard_rows == 7
    assert cfg.data.aug.blur_prob == 0.5  # derived: images > 64 px
    assert (cfg.optim.lr, cfg.optim.lr_schedule) == (0.06, "step")  # per-optimizer defaults
    assert cfg.estep.feature_dir == Path("x/run/features") and cfg.run_dir.last == Path("x/run/checkpoints/last.pth")


def test_asdict_round_trip_through_json() -> None:
    cfg = parse_config(["--num-cluster", "4,8", "--cluster-head", "mlp", "--clip-grad", "1.0"])
    back = config_from_dict(json.loads(to_json(cfg)))
    assert back == cfg and isinstance(back.checkpoint.exp_dir, Path)
    assert to_dict(cfg)["estep"]["kmeans"]["nredo"] == 5


def test_old_checkpoint_args_still_give_the_config() -> None:
    """Checkpoints written before the typed configs stored ``vars(args)`` flat, under ``args``."""
    old_args = {
        "data": "/data/cifar",
        "arch": "resnet34",
        "stem": "small",
        "low_dim": 16,
        "pcl_r": 32,
        "moco_m": 0.9,
        "mlp": False,
        "cluster_head": "report",
        "bn_splits": 2,
        "temperature": 0.3,
        "image_size": 16,
        "blur_prob": 0.0,
        "num_cluster": [3, 5],
        "kmeans_niter": 5,
        "kmeans_max_points": 1000,
        "feature_shard_rows": 64,
        "feature_dir": "runs/x/features",
        "exp_dir": "runs/x",
        "epochs": 9,
        "lr": 0.5,
        "some_removed_flag": 1,
    }
    cfg = stored_config({"args": old_args, "model": {}})
    assert cfg.model == ModelConfig("resnet34", "small", 16, 32, 0.9, False, "report", 2)
    assert cfg.loss.temperature == 0.3
    assert cfg.data.root == "/data/cifar" and cfg.data.aug.image_size == 16
    assert cfg.estep.num_cluster == [3, 5] and cfg.estep.kmeans.niter == 5 and cfg.estep.max_points == 1000
    assert cfg.estep.shard_rows == 64 and cfg.estep.feature_dir == Path("runs/x/features")
    assert cfg.train.epochs == 9 and cfg.checkpoint.exp_dir == Path("runs/x") and cfg.optim.lr == 0.5
    new = {"config": to_dict(cfg), "model": {}}
    assert stored_config(new) == cfg


def test_checkpoint_without_a_config_is_one_clear_error() -> None:
    with pytest.raises(PCLError, match=r"backbone\.pth holds no training configuration"):
        stored_config({"conv1.weight": 0}, "backbone.pth")


def test_help_is_unchanged_by_declaring_flags_on_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-h`` built from the fields' metadata equals the hand-written parser's (captured before the change)."""
    monkeypatch.setenv("COLUMNS", "100")
    reference = (Path(__file__).parent / "main_pcl_help.txt").read_text()  # + --config (issue 19)
    assert build_parser().format_help() == reference
    assert build_parser().prog == "main_pcl.py"  # also under python -m pcl


def test_every_flag_is_declared_on_a_config_field() -> None:
    """Each parser action (but -h and --config) comes from exactly one field's metadata, and lands in that field."""
    declared = {}
    classes = (Config, ModelConfig, LossConfig, EStepConfig, KMeansConfig, CheckpointConfig, TrainConfig, OptimConfig)
    for cls in (*classes, StepConfig, MonitorConfig, DataConfig, AugConfig, SwAVConfig, DINOConfig):
        for f in dataclasses.fields(cls):
            if (spec := flag_of(f)) is not None:
                declared[spec.dest] = (cls, f.name)
    dests = [a.dest for a in build_parser()._actions if a.dest not in ("help", "config")]  # --config: a file of fields
    assert sorted(dests) == sorted(declared)


def test_a_stage_validates_its_own_fields() -> None:
    with pytest.raises(PCLError, match=r"--kmeans-nredo must be positive, got 0"):
        KMeansConfig(nredo=0).validate()
    with pytest.raises(PCLError, match=r"--moco-m must be in \[0, 1\), got 1.0"):
        ModelConfig(moco_m=1.0).validate()
    with pytest.raises(PCLError, match=r"--num-cluster must be >= 2, got 1"):
        EStepConfig(num_cluster=[5, 1]).validate()
    with pytest.raises(PCLError, match=r"--proto-weight must be a finite number >= 0, got inf"):
        LossConfig(proto_weight=math.inf).validate()
    StepConfig(clip_grad=math.inf).validate()  # documented: inf = no clipping
    with pytest.raises(PCLError, match=r"--optimizer must be one of sgd, sgd-cos, adamw, lamb, lars, got 'bogus'"):
        OptimConfig(optimizer="bogus").validate()  # choices, as the flag checks them (a --config value too)


def test_config_file_gives_its_values_and_flags_override_it(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\narch = "resnet34"\npcl_r = 64\n[optim]\nlr = 1\n[estep]\nnum_cluster = [4, 8]\n')
    cfg = parse_config(["--config", str(toml), "--pcl-r", "32"])
    assert (cfg.model.arch, cfg.model.pcl_r, cfg.estep.num_cluster) == ("resnet34", 32, [4, 8])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # a TOML integer in a float field
    assert cfg.train == TrainConfig()  # keys the file leaves out keep their defaults


def test_a_runs_config_json_reproduces_its_config_under_another_exp_dir(tmp_path: Path) -> None:
    cfg = parse_config(["DATA", "--num-cluster", "4,8", "--optimizer", "sgd", "--exp-dir", str(tmp_path / "x")])
    (tmp_path / "config.json").write_text(to_json(cfg))
    again = parse_config(["--config", str(tmp_path / "config.json"), "--exp-dir", str(tmp_path / "y")])
    assert again.estep.feature_dir == tmp_path / "y" / "features"  # the derived default follows the new exp-dir
    again.checkpoint.exp_dir, again.estep.feature_dir = cfg.checkpoint.exp_dir, cfg.estep.feature_dir
    assert again == cfg


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("[model]\nfoo = 1\n", ".toml", "unknown key 'model.foo'"),
        ('[modle]\narch = "resnet18"\n', ".toml", "unknown key 'modle'"),
        ('{"train": {"epochs": "3"}}', ".json", "key 'train.epochs' must be an integer, got '3'"),
        ('{"step": {"amp": true}}', ".json", "key 'step.amp' must be a string, got True"),
        ('{"train": {"amp": true}}', ".json", "key 'step.amp' must be a string, got True"),  # the older layout's key
        ('{"model": 3}', ".json", "model must be a table of keys, got 3"),
        ('{"estep": {"num_cluster": [4, 1.5]}}', ".json", "'estep.num_cluster' must be a list of integers"),
        ('{"optim": {"lr": "fast"}}', ".json", "key 'optim.lr' must be a number or null, got 'fast'"),
        ("[model\n", ".toml", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path: Path, text: str, suffix: str, expected: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(PCLError) as e:
        parse_config(["--config", str(path)])
    assert str(e.value).startswith(f"--config {path}: ") and expected in str(e.value) and "\n" not in str(e.value)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PCLError, match=r"--config .*nope.toml: no such file"):
        parse_config(["--config", str(tmp_path / "nope.toml")])


def test_a_config_json_of_the_older_layout_still_gives_its_config(tmp_path: Path) -> None:
    """config.json and checkpoints written before the sections were split (temperature under ``model``, the loop,
    step, checkpoint and monitor settings under ``train``, clip_grad under ``optim``) read as the same config."""
    cfg = parse_config(["--temperature", "0.3", "--warmup-epochs", "4", "--amp", "bf16", "--clip-grad", "2"])
    new = to_dict(cfg)
    moved = ("loss", "step", "checkpoint", "monitor")
    old = {k: dict(v) if isinstance(v, dict) else v for k, v in new.items() if k not in moved}
    old["model"]["temperature"] = new["loss"]["temperature"]
    old["optim"]["clip_grad"] = new["step"]["clip_grad"]
    old["train"].update({k: v for k, v in new["loss"].items() if k != "temperature"})
    old["train"].update({k: v for k, v in new["step"].items() if k not in ("clip_grad", "clip_mode")})  # newer
    monitor = {k: v for k, v in new["monitor"].items() if f"train.{k}" in LEGACY_MOVES}  # later fields: never there
    old["train"].update(new["checkpoint"] | monitor | {"save_clusters": new["estep"].pop("save_clusters")})
    del old["method"], old["swav"], old["dino"]
    assert resolve(config_from_dict(old)) == cfg
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert parse_config(["--config", str(tmp_path / "config.json")]) == cfg


def test_a_config_file_value_passes_the_checks_of_its_flag(tmp_path: Path) -> None:
    """A value from --config meets the same choices and ranges as the flag (issue 27: they bypassed them)."""
    from pcl.config import validate

    for text, expected in [
        ('[optim]\noptimizer = "bogus"\n', "--optimizer must be one of"),
        ('[estep.kmeans]\ninit = "bogus"\n', "--kmeans-init must be one of random, previous, got 'bogus'"),
        ('[model]\ncluster_head = "big"\n', "--cluster-head must be one of none, mlp, report, got 'big'"),
        ('[step]\namp = "fp17"\n', "--amp must be one of off, bf16, fp16, got 'fp17'"),
        ('[monitor]\nknn_encoder = "both"\n', "--knn-encoder must be one of query, key, got 'both'"),
        ('[data]\ncache_images = "maybe"\n', "--cache-images must be one of auto, yes, no, got 'maybe'"),
        ('[model]\nstem = "tiny"\n', "--stem must be one of imagenet, small, got 'tiny'"),
        # (a test plugin registered earlier in the session, e.g. pcl-uniform, may sit among the built-in methods)
        ('method = "swav2"\n', "unknown method 'swav2'; choose from dino, moco, pcl, (.+, )?swav"),
    ]:
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(PCLError, match=expected):
            validate(parse_config(["--config", str(path)]))


@pytest.mark.parametrize("suffix", [".TOML", ".yaml", ".cfg"])
def test_a_toml_config_file_is_toml_whatever_its_suffix(tmp_path: Path, suffix: str) -> None:
    """Issue 27, defect 9: a ``.TOML`` or ``.yaml`` file holding TOML was parsed as JSON ("not valid JSON")."""
    path = tmp_path / f"c{suffix}"
    path.write_text('[model]\narch = "resnet34"\n')
    assert parse_config(["--config", str(path)]).model.arch == "resnet34"
    path.write_text("[model\n")
    with pytest.raises(PCLError, match="not valid TOML"):
        parse_config(["--config", str(path)])
