"""Configuration stage: the command line -> typed dataclasses, and checks that reject a config that cannot work.

``main_pcl.py`` calls :func:`parse_config` and hands the resulting :class:`Config` down; nothing below it sees
the argparse ``Namespace``. Each stage owns a dataclass with its settings and their defaults, and the parser
takes its defaults from those dataclasses, so there is one source of defaults:

    Config.data:  pcl.data.datasets.DataConfig (+ AugConfig)   Config.model: pcl.model.builder.ModelConfig
    Config.optim: pcl.train.optim.OptimConfig               Config.estep: pcl.estep.estep.EStepConfig (+ KMeansConfig)
    Config.train: TrainConfig (below): the EM loop, checkpoints, logging, devices

Code reads plain attributes, e.g. ``cfg.train.epochs``, ``cfg.model.pcl_r``, ``cfg.estep.kmeans.niter``.

How to add a flag:
    1. Add a typed field to the stage's dataclass, declared with :func:`pcl.utils.flags.flag`: its default, the
       flag's name when it is not ``--field-name``, help, choices, and for numbers the valid range
       (``gt``/``ge``/``lt``/``le``; finite unless ``finite=False``), e.g.
       ``knn_k: int = flag(200, gt=0, help="neighbours")``.
    2. Name the field in :data:`GROUPS` where ``-h`` should list it.
    3. Nothing else: :func:`parse_config` fills fields by flag dest, the stage's ``validate()`` checks the range,
       and ``config.json`` and checkpoints record ``asdict(cfg)``. Add combinations that cannot work to
       :func:`validate`, and a derived default (``None`` = "depends on other flags") to the dataclass's
       ``resolved()``.
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
from typing import Any

from pcl.data.datasets import AugConfig, DataConfig
from pcl.estep.clustering import KMeansConfig
from pcl.estep.estep import EStepConfig
from pcl.model.builder import ModelConfig
from pcl.run.run_dir import RunDir
from pcl.train.amp import AMP_MODES
from pcl.train.optim import OptimConfig
from pcl.utils.cli import ErrorParser
from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, field_flag, flag, flag_of


@dataclass
class TrainConfig:
    """The loop's own settings: epochs, batch, warmup, AMP, guard, checkpoints, logging, devices, kNN monitor."""

    epochs: int = flag(200, gt=0)  # the official schedule; `make train` passes its quick CPU one (6 epochs, 2 warmup)
    batch_size: int = flag(128, "-b", "--batch-size", gt=0, help="global batch size (all ranks together)")
    warmup_epochs: int = flag(
        20, ge=0, help="InfoNCE-only epochs before the first E-step (>= --epochs: MoCo v2, no E-step)"
    )
    proto_weight: float = flag(1.0, ge=0, help="weight of the ProtoNCE term")  # loss = InfoNCE + w * mean ProtoNCE
    fixed_concentration: bool = flag(
        False,
        action="store_true",
        help="ablation: phi = --temperature for every prototype instead of the estimated concentration",
    )
    amp: str = flag("off", choices=AMP_MODES, help="autocast for the forward passes")
    channels_last: bool = flag(
        False,
        action="store_true",
        help="channels-last memory format for the training step (for GPUs; 1.13x step time on this CPU, README)",
    )
    max_bad_steps: int = flag(20, gt=0, help="stop after this many consecutive non-finite steps")
    stop_on_collapse: bool = flag(
        False,
        action="store_true",
        help="stop with a checkpoint (exit code 3) when the embeddings collapse (health/*, docs: reliability)",
    )
    exp_dir: Path = flag(Path("runs/default"))
    resume: str | None = flag(None, help="checkpoint path, or 'auto' for <exp-dir>/checkpoints/last.pth")
    stop_after_epochs: int | None = flag(  # None: all remaining epochs
        None,
        type=int,
        gt=0,
        help="run at most this many epochs in this invocation, then exit (for time-limited job slots)",
    )
    save_freq: int = flag(10, gt=0, help="also keep checkpoint_XXXX.pth every N epochs")
    save_every_minutes: float = flag(
        0.0, ge=0, help="also write a resumable mid-epoch last.pth every M minutes (0 = off)"
    )
    save_every_steps: int = flag(0, ge=0, help="also write a resumable mid-epoch last.pth every N steps (0 = off)")
    overwrite: bool = flag(
        False,
        action="store_true",
        help="start from scratch in an exp-dir that holds checkpoints, deleting that run's outputs",
    )
    requeue: bool = flag(
        False, action="store_true", help="under SLURM: after a SIGTERM/SIGUSR1 checkpoint, scontrol requeue this job"
    )
    print_freq: int = flag(10, gt=0, help="progress-bar update interval (steps)")
    save_clusters: bool = flag(False, action="store_true", help="write <exp-dir>/clusters/epoch_XXXX.pth each E-step")
    cluster_metrics: bool = flag(
        True,
        action=argparse.BooleanOptionalAction,
        help="log NMI/AMI/purity of each E-step's clusters against the train labels (when > 1 class)",
    )
    log_cluster_images: int = flag(
        0,
        ge=0,
        help="after each E-step, show the N largest clusters of each granularity (8 members nearest the "
        "prototype) in TensorBoard's Images tab (0 = off)",
    )
    seed: int = flag(0, ge=0, le=2**31 - 1)  # numpy seeds must be < 2**32 (seed + rank)
    device: str = flag("auto", choices=("auto", "cpu", "cuda"))
    dist_backend: str = flag("auto", choices=("auto", "nccl", "gloo"))
    knn_k: int = flag(200, gt=0)
    knn_t: float = flag(0.1, gt=0)
    knn_freq: int = flag(  # 0 = never
        1,
        ge=0,
        help="kNN monitor every N epochs and after the last one (0 = never); costs a full train+val feature pass",
    )
    knn_encoder: str = flag(
        "query",
        choices=("query", "key"),
        help="encoder the kNN monitor measures; key: on E-step epochs the bank comes from the E-step's own pass "
        "(docs/performance.md)",
    )

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range or contradictory run flags."""
        check_fields(self)
        if self.overwrite and self.resume:
            raise PCLError("--overwrite starts from scratch and --resume continues: pass only one of them")


@dataclass
class Config:
    """The whole run's configuration, one dataclass per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    estep: EStepConfig = field(default_factory=EStepConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> RunDir:
        """The paths of ``--exp-dir``."""
        return RunDir(self.train.exp_dir)


# the nested dataclasses whose fields' dests share a prefix (fields without a flag: prefix + field name)
_PREFIX = {(EStepConfig, "kmeans"): "kmeans_"}

# build_parser's groups: (title, [(dataclass, "field names in -h order"), ...])
M, A, D, Opt, E, K, T = ModelConfig, AugConfig, DataConfig, OptimConfig, EStepConfig, KMeansConfig, TrainConfig
GROUPS: list[tuple[str, list[tuple[type, str]]]] = [
    ("model", [(M, "arch stem low_dim pcl_r moco_m mlp cluster_head bn_splits temperature")]),
    (
        "data and augmentation",
        [
            (A, "image_size aug_plus crop_min color_jitter color_jitter_prob grayscale_prob blur_prob"),
            (D, "labels val workers cache_images cache_budget_mb gpu_aug verify_images"),
        ],
    ),
    (
        "optimisation",
        [
            (T, "epochs batch_size"),
            (Opt, "lr wd momentum optimizer lr_schedule schedule lr_warmup_epochs min_lr exclude_bn_bias"),
            (T, "amp channels_last"),
            (Opt, "clip_grad"),
            (T, "max_bad_steps stop_on_collapse"),
        ],
    ),
    (
        "PCL E-step",
        [
            (E, "num_cluster"),
            (T, "warmup_epochs proto_weight fixed_concentration"),
            (K, "niter nredo init"),
            (E, "max_points feature_dir feature_dtype shard_rows keep_features"),
            (T, "save_clusters cluster_metrics log_cluster_images"),
        ],
    ),
    (
        "run",
        [
            (T, "exp_dir resume stop_after_epochs save_freq save_every_minutes save_every_steps overwrite requeue"),
            (T, "print_freq seed device dist_backend knn_freq knn_encoder knn_k knn_t"),
            (D, "eval_batch_size"),
        ],
    ),
]


def _default(cls: type, name: str) -> Any:
    """Default value of dataclass field ``cls.name`` (a fresh copy for ``default_factory`` fields)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _dest(f: dataclasses.Field, prefix: str) -> str:
    """The argparse dest (flat key) of field ``f``: its flag's, else ``prefix + name``."""
    spec = flag_of(f)
    return spec.dest if spec is not None else prefix + f.name


def build_parser() -> argparse.ArgumentParser:
    """The ``main_pcl.py`` command line: the flags the config fields declare, in :data:`GROUPS`."""
    about = "Prototypical Contrastive Learning (PCL v2) on an ImageFolder data set."
    p = ErrorParser(prog="main_pcl.py", description=about)
    field_flag(DataConfig, "root").add_to(p, _default(DataConfig, "root"))
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML or JSON file with the keys of a run's config.json (e.g. that file); flags given here override it",
    )
    for title, members in GROUPS:
        g = p.add_argument_group(title)
        for cls, names in members:
            for name in names.split():
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


def resolve(cfg: Config) -> Config:
    """Fill the derived defaults in place (blur, per-optimizer lr / wd / warmup / schedule, feature dir)."""
    cfg.data.aug = cfg.data.aug.resolved()
    cfg.optim = cfg.optim.resolved()
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
        d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise PCLError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PCLError(f"{source}: cannot read it ({e})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise PCLError(f"{source}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    values = _flatten(Config, _checked(Config, d, source))
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
    return resolve(_fill(Config, vars(parser.parse_args(argv))))


def config_from_dict(d: dict[str, Any]) -> Config:
    """A :class:`Config` from its ``asdict`` form (``config.json``, checkpoints), or from the flat flag dict
    that checkpoints written before the typed configs stored under ``args``. Unknown keys are ignored."""
    values = _flatten(Config, d) if isinstance(d.get("model"), dict) else dict(d)
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
    for stage in (m, cfg.data, cfg.optim, cfg.estep, t):
        stage.validate()
    if t.batch_size % world:
        raise PCLError(f"--batch-size {t.batch_size} (global) is not divisible by the {world} processes")
    per_rank = t.batch_size // world
    splits = m.bn_splits if world == 1 else 1
    if per_rank % splits:
        raise PCLError(f"--batch-size {t.batch_size} is not divisible by --bn-splits {m.bn_splits}")
    if per_rank // splits < 2:  # batch norm of one sample has no variance
        raise PCLError(
            f"--batch-size {t.batch_size} over {world} process(es) and --bn-splits {splits} gives "
            f"{per_rank // splits} sample per batch-norm split; batch norm needs at least 2"
        )
    if cfg.estep.max_points < max(cfg.estep.num_cluster):
        raise PCLError(
            f"--kmeans-max-points {cfg.estep.max_points} is smaller than --num-cluster {max(cfg.estep.num_cluster)}: "
            "k-means needs at least one point per cluster"
        )
    if t.batch_size > m.pcl_r:
        raise PCLError(
            f"--batch-size {t.batch_size} is larger than the queue --pcl-r {m.pcl_r}: "
            "one batch of keys would overwrite itself; raise --pcl-r or lower the batch size"
        )


def validate_data(cfg: Config, num_train: int) -> None:
    """Checks that need the training-set size."""
    batch, r, ks = cfg.train.batch_size, cfg.model.pcl_r, cfg.estep.num_cluster
    if num_train < batch:
        raise PCLError(f"only {num_train} training images: fewer than one batch of --batch-size {batch}")
    if r >= num_train:
        raise PCLError(
            f"--pcl-r {r} is not smaller than the {num_train} training images: each image's own "
            "older keys would sit in the queue as negatives; use about a tenth of the data set"
        )
    too_big = [k for k in ks if k > num_train]
    if too_big:
        raise PCLError(f"--num-cluster {','.join(map(str, too_big))} exceeds the {num_train} training images")


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
