"""Configuration stage: the command line -> typed dataclasses, and checks that reject a config that cannot work.

``main_pcl.py`` calls :func:`parse_config` and hands the resulting :class:`Config` down; nothing below it sees
the argparse ``Namespace``, and each stage receives its own section. Each stage owns a dataclass with its settings
and their defaults, and the parser takes its defaults from those dataclasses, so there is one source of defaults:

    Config.method: the registered method (pcl.methods)   Config.model: pcl.model.encoder.ModelConfig
    Config.loss: pcl.losses.config.LossConfig            Config.estep: pcl.estep.estep.EStepConfig (+ KMeansConfig)
    Config.checkpoint: pcl.run.checkpointer.CheckpointConfig
    Config.train / Config.step: pcl.train.config.TrainConfig / StepConfig   Config.optim: pcl.train.optim.OptimConfig
    Config.monitor: pcl.train.monitor.MonitorConfig       Config.data: pcl.data.datasets.DataConfig (+ AugConfig)
    Config.swav: pcl.methods.swav.SwAVConfig              Config.dino: pcl.methods.dino.DINOConfig

Code reads plain attributes, e.g. ``cfg.train.epochs``, ``cfg.model.pcl_r``, ``cfg.estep.kmeans.niter``.

How to add a flag:
    1. Add a typed field to the stage's dataclass, declared with :func:`pcl.utils.flags.flag`: its default, the
       flag's name when it is not ``--field-name``, help, choices, and for numbers the valid range
       (``gt``/``ge``/``lt``/``le``; finite unless ``finite=False``), e.g.
       ``knn_k: int = flag(200, gt=0, help="neighbours")``.
    2. Nothing else: ``-h`` lists it in its dataclass's ``GROUP`` (or the field's ``group=``), after the fields
       declared before it (the sections in :class:`Config`'s order); :func:`parse_config` fills fields by flag
       dest, the stage's ``validate()`` checks choices and range, and ``config.json`` and checkpoints record
       ``asdict(cfg)``. Add combinations that cannot work to :func:`validate`, and a derived default (``None`` =
       "depends on other flags") to the dataclass's ``resolved()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pcl.data.datasets import DataConfig
from pcl.estep.estep import EStepConfig
from pcl.losses.config import LossConfig
from pcl.methods import METHODS, method_class
from pcl.methods.dino import DINOConfig
from pcl.methods.swav import SwAVConfig
from pcl.model.backbone import ARCHS, BackboneSpec, check_input_sizes, probe_backbone
from pcl.model.encoder import ModelConfig
from pcl.run.checkpointer import CheckpointConfig
from pcl.run.run_dir import RunDir
from pcl.train.config import StepConfig, TrainConfig
from pcl.train.monitor import MonitorConfig
from pcl.train.optim import OptimConfig
from pcl.utils.cli import ErrorParser
from pcl.utils.errors import PCLError
from pcl.utils.flags import Flag, check_fields, field_flag, flag, flag_group, flag_of


@dataclass
class Config:
    """The whole run's configuration, one dataclass per stage (``-h`` lists each group in this order)."""

    GROUP: ClassVar[str] = "model"

    method: str = flag(  # any registered method (pcl.methods.base.register_method), checked by validate()
        "pcl", help=f"self-supervised method: {', '.join(sorted(METHODS))} (docs/methods.md)"
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    estep: EStepConfig = field(default_factory=EStepConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    step: StepConfig = field(default_factory=StepConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)

    @property
    def run_dir(self) -> RunDir:
        """The paths of ``--exp-dir``."""
        return self.checkpoint.run_dir


# -h: the titles of the groups, in order (a field's group is its dataclass's GROUP or its own group=)
GROUP_TITLES = ("model", "data and augmentation", "optimisation", "PCL E-step", "SwAV", "DINO", "run")

# the nested dataclasses whose fields' dests share a prefix (fields without a flag: prefix + field name)
_PREFIX = {(EStepConfig, "kmeans"): "kmeans_"}

# config.json / checkpoints written before the sections were split: "old section.key" -> "new section"
LEGACY_MOVES = {
    "model.temperature": "loss",
    "train.warmup_epochs": "loss",
    "train.proto_weight": "loss",
    "train.fixed_concentration": "loss",
    "optim.clip_grad": "step",
    **{f"train.{k}": "step" for k in ("amp", "channels_last", "max_bad_steps", "stop_on_collapse")},
    "train.accum_steps": "step",  # newer than the split; accepted beside its old-layout neighbours all the same
    **{f"train.{k}": "checkpoint" for k in ("exp_dir", "resume", "stop_after_epochs", "save_freq", "requeue")},
    **{f"train.{k}": "checkpoint" for k in ("save_every_minutes", "save_every_steps", "overwrite")},
    "train.save_clusters": "estep",
    **{f"train.{k}": "monitor" for k in ("cluster_metrics", "log_cluster_images", "knn_freq", "knn_encoder")},
    **{f"train.{k}": "monitor" for k in ("knn_k", "knn_t")},
}


def upgrade_layout(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (``asdict`` form of a :class:`Config`) with the keys of the older layout (:data:`LEGACY_MOVES`) moved to
    their sections; a key present in both places keeps the new one. Other content is left for the checks."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for old, section in LEGACY_MOVES.items():
        src, key = old.split(".")
        if isinstance(out.get(src), dict) and key in out[src]:
            value = out[src].pop(key)
            target = out.setdefault(section, {})
            if isinstance(target, dict):
                target.setdefault(key, value)
    return out


def _fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[type, dataclasses.Field, str]]:
    """Every flag-carrying field of ``cls`` in declaration order, nested dataclasses inline: ``(owner, field,
    dest prefix)``."""
    for f in dataclasses.fields(cls):
        default = _default(cls, f.name)
        if dataclasses.is_dataclass(default):
            yield from _fields(type(default), prefix + _PREFIX.get((cls, f.name), ""))
        elif flag_of(f) is not None:
            yield cls, f, prefix


def _default(cls: type, name: str) -> Any:
    """Default value of dataclass field ``cls.name`` (a fresh copy for ``default_factory`` fields)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _dest(f: dataclasses.Field, prefix: str) -> str:
    """The argparse dest (flat key) of field ``f``: its flag's, else ``prefix + name``."""
    spec = flag_of(f)
    return spec.dest if spec is not None else prefix + f.name


def declared_flags() -> dict[str, Flag]:
    """Every flag of the command line by name (``--arch``, ``data``), as its field declares it."""
    return {flag_of(f).name: flag_of(f) for _, f, _ in _fields(Config)}


def build_parser() -> argparse.ArgumentParser:
    """The ``main_pcl.py`` command line: the flag of every field of :class:`Config`, grouped as the fields say."""
    about = "Prototypical Contrastive Learning (PCL v2) on an ImageFolder data set."
    p = ErrorParser(prog="main_pcl.py", description=about)
    field_flag(DataConfig, "root").add_to(p, _default(DataConfig, "root"))
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML or JSON file with the keys of a run's config.json (e.g. that file); flags given here override it",
    )
    grouped: dict[str, list[tuple[bool, type, str]]] = {title: [] for title in GROUP_TITLES}
    for cls, f, _ in _fields(Config):
        spec = flag_of(f)
        if spec.names[0].startswith("-"):  # not DataConfig.root: the positional, added above
            grouped[flag_group(cls, f)].append((not spec.help_first, cls, f.name))
    for title in GROUP_TITLES:
        g = p.add_argument_group(title)
        for _, cls, name in sorted(grouped[title], key=lambda item: item[0]):  # stable: help_first, then in order
            field_flag(cls, name).add_to(g, _default(cls, name))
    return p


def _fill(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` whose fields are read by flag dest from ``values`` (missing: default).

    Nested dataclass fields are filled recursively, their dests prefixed as ``_PREFIX`` says.
    """
    kwargs = {}
    for f in dataclasses.fields(cls):
        default = _default(cls, f.name)
        if dataclasses.is_dataclass(default):
            kwargs[f.name] = _fill(type(default), values, prefix + _PREFIX.get((cls, f.name), ""))
            continue
        dest = _dest(f, prefix)
        if dest in values:
            kwargs[f.name] = values[dest]
    return cls(**kwargs)


def _flatten(cls: type, d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`_fill`: ``asdict`` form of ``cls`` -> ``{flag dest: value}``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        default = _default(cls, f.name)
        if dataclasses.is_dataclass(default) and isinstance(d[f.name], dict):
            out.update(_flatten(type(default), d[f.name], prefix + _PREFIX.get((cls, f.name), "")))
        else:
            out[_dest(f, prefix)] = d[f.name]
    return out


def backbone_spec(cfg: Config) -> BackboneSpec:
    """The backbone the configuration trains (built for ``--image-size``)."""
    return cfg.model.backbone(image_size=cfg.data.aug.image_size)


def apply_recipe(cfg: Config) -> Config:
    """Fill the fields the method's recipe (``Method.recipe``, e.g. DINO's ``--clip-grad 3.0``) sets and the
    configuration leaves at ``None``, in place."""
    for key, value in method_class(cfg.method).recipe.items():
        section, name = key.split(".")
        stage = getattr(cfg, section)
        if getattr(stage, name) is None:
            setattr(stage, name, value)
    return cfg


def resolve(cfg: Config) -> Config:
    """Fill the derived defaults in place (the method's recipe, blur, local crops, per-optimizer and per-backbone-kind
    lr / wd / warmup / schedule, clipping mode, feature dir)."""
    apply_recipe(cfg)
    cfg.data.aug = cfg.data.aug.resolved()
    vit = cfg.model.arch not in ARCHS and probe_backbone(backbone_spec(cfg)).vit
    cfg.optim = cfg.optim.resolved(vit, cfg.train.batch_size, cfg.train.epochs)
    cfg.step = cfg.step.resolved()
    if cfg.estep.feature_dir is None:
        cfg.estep.feature_dir = cfg.run_dir.features
    return cfg


def _matches(value: Any, hint: Any) -> bool:
    """True when a JSON/TOML ``value`` fits the field type ``hint`` (ints count as floats, strings as paths)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str if hint is Path else hint)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}


def _type_name(hint: Any) -> str:
    """``hint`` in words, e.g. ``a number or null``, ``a list of integers``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return "a list of " + _type_name(typing.get_args(hint)[0]).removeprefix("an ").removeprefix("a ") + "s"
    return "null" if hint is type(None) else _TYPE_NAMES.get(hint, str(hint))


def _checked(cls: type, d: Any, source: str, where: str = "") -> dict[str, Any]:
    """``d`` (a table of ``cls``'s fields, nested like ``config.json``) with floats made floats; raises a one-line
    ``PCLError`` naming the key for an unknown key or a value of the wrong type."""
    if not isinstance(d, dict):
        raise PCLError(f"{source}: {where.rstrip('.') or 'the file'} must be a table of keys, got {d!r}")
    hints, out = typing.get_type_hints(cls), {}
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in d.items():
        if key not in names:
            raise PCLError(f"{source}: unknown key {where + key!r} (expected one of {', '.join(names)})")
        if dataclasses.is_dataclass(hints[key]):
            out[key] = _checked(hints[key], value, source, f"{where}{key}.")
        elif not _matches(value, hints[key]):
            raise PCLError(f"{source}: key {where + key!r} must be {_type_name(hints[key])}, got {value!r}")
        else:
            out[key] = float(value) if hints[key] in (float, float | None) and value is not None else value
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """The flag dests and values of a ``--config`` file: TOML, or JSON (a run's ``config.json``), with the keys
    of ``config.json`` (``[model] arch = "resnet50"``); a feature dir that is its exp-dir's default is dropped, so
    that a rerun under another ``--exp-dir`` writes its own."""
    source = f"--config {path}"
    try:
        text = path.read_text()
        d = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)  # TOML, whatever the suffix
    except FileNotFoundError:
        raise PCLError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PCLError(f"{source}: cannot read it ({e})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise PCLError(f"{source}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({e})") from None
    values = _flatten(Config, _checked(Config, upgrade_layout(d) if isinstance(d, dict) else d, source))
    exp_dir, feature_dir = values.get("exp_dir"), values.get("feature_dir")
    if exp_dir is not None and feature_dir is not None and Path(feature_dir) == RunDir(Path(exp_dir)).features:
        values["feature_dir"] = None
    return {k: Path(v) if k in ("exp_dir", "feature_dir") and v is not None else v for k, v in values.items()}


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse the command line (over a ``--config`` file's values) into a resolved :class:`Config`; a bad flag
    or file raises a one-line ``PCLError``."""
    parser = build_parser()
    pre = ErrorParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**read_config_file(known.config))
    cfg = _fill(Config, vars(parser.parse_args(argv)))
    _check_all(cfg)  # choices and ranges before the derived defaults (a --config value never met argparse)
    return resolve(cfg)


def _check_all(cfg: Any) -> None:
    """:func:`pcl.utils.flags.check_fields` on ``cfg`` and every nested dataclass."""
    check_fields(cfg)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_all(value)


def config_from_dict(d: dict[str, Any]) -> Config:
    """A :class:`Config` from its ``asdict`` form (``config.json``, checkpoints), or from the flat flag dict
    that checkpoints written before the typed configs stored under ``args``. Unknown keys are ignored."""
    values = _flatten(Config, upgrade_layout(d)) if isinstance(d.get("model"), dict) else dict(d)
    for key in ("exp_dir", "feature_dir"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return _fill(Config, values)


def stored_config(ckpt: dict, path: Path | str = "checkpoint") -> Config:
    """The configuration a checkpoint was trained with (typed ``config``, or the older flat ``args``)."""
    if isinstance(ckpt.get("config"), dict):
        return config_from_dict(ckpt["config"])
    if isinstance(ckpt.get("args"), dict):
        return config_from_dict(ckpt["args"])
    raise PCLError(f"{path} holds no training configuration (not a main_pcl.py checkpoint?)")


def validate(cfg: Config, world: int = 1) -> None:
    """Checks that need no data: each stage's fields against their flags' ranges, then the combinations that
    cannot work; raises ``PCLError`` with one line."""
    m, t = cfg.model, cfg.train
    stages = (m, cfg.loss, cfg.estep, cfg.checkpoint, t, cfg.optim, cfg.step, cfg.monitor, cfg.data, cfg.swav, cfg.dino)
    for stage in stages:
        stage.validate()
    method = method_class(cfg.method)
    method.validate(cfg)
    if t.batch_size % world:
        raise PCLError(f"--batch-size {t.batch_size} (global) is not divisible by the {world} processes")
    spec = backbone_spec(cfg)
    check_input_sizes(spec, cfg.data.aug.view_spec().sizes)
    has_bn = m.arch in ARCHS or probe_backbone(spec).batchnorm
    _check_batches(cfg, t.batch_size // world, world, has_bn, method.shuffle_bn)


def _check_batches(cfg: Config, per_rank: int, world: int, batchnorm: bool, shuffle_bn: bool) -> None:
    """The per-process batch splits into ``--accum-steps`` micro-batches, and each micro-batch into ``--bn-splits``
    sub-batches (methods with shuffle BN, one process) of at least 2 samples (only for a backbone with batch
    norm)."""
    m, t, accum = cfg.model, cfg.train, cfg.step.accum_steps
    if per_rank % accum:
        raise PCLError(
            f"--batch-size {t.batch_size} over {world} process(es) is not divisible by --accum-steps {accum}"
        )
    micro, splits = per_rank // accum, (m.bn_splits if world == 1 and shuffle_bn else 1) if batchnorm else 1
    what = f"--batch-size {t.batch_size}" + (f" / --accum-steps {accum}" if accum > 1 else "")
    if micro % splits:
        raise PCLError(f"{what} is not divisible by --bn-splits {m.bn_splits}")
    if micro // splits < 2 and (batchnorm or accum > 1):  # batch norm of one sample has no variance
        raise PCLError(
            f"{what} over {world} process(es) and --bn-splits {splits} gives "
            f"{micro // splits} sample per batch-norm split; batch norm needs at least 2"
            if batchnorm
            else f"{what} over {world} process(es) gives {micro} sample per micro-batch; use at least 2"
        )


def validate_data(cfg: Config, num_train: int) -> None:
    """Checks that need the training-set size (then the method's own, e.g. PCL's queue and granularities)."""
    batch = cfg.train.batch_size
    if num_train < batch:
        raise PCLError(f"only {num_train} training images: fewer than one batch of --batch-size {batch}")
    method_class(cfg.method).validate_data(cfg, num_train)


def to_dict(cfg: Config) -> dict[str, Any]:
    """``asdict(cfg)`` with paths as strings: what ``config.json`` and checkpoints store."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def to_json(cfg: Config) -> str:
    """Full resolved configuration as JSON, one object per stage."""
    return json.dumps(to_dict(cfg), indent=2)
