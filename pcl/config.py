"""Configuration stage: the command line -> typed dataclasses, and checks that reject a config that cannot work.

``main_pcl.py`` calls :func:`parse_config` and hands the resulting :class:`Config` down; nothing below it sees
the argparse ``Namespace``. Each stage owns a dataclass with its settings and their defaults, and the parser
takes its defaults from those dataclasses, so there is one source of defaults:

    Config.data:  pcl.data.datasets.DataConfig (+ AugConfig)   Config.model: pcl.model.builder.ModelConfig
    Config.optim: pcl.train.optim.OptimConfig               Config.estep: pcl.estep.estep.EStepConfig (+ KMeansConfig)
    Config.train: TrainConfig (below): the EM loop, checkpoints, logging, devices

Code reads plain attributes, e.g. ``cfg.train.epochs``, ``cfg.model.pcl_r``, ``cfg.estep.kmeans.niter``.

How to add a flag:
    1. Add a typed field with its default (and a short comment) to the stage's dataclass above.
    2. Add the parser entry in :func:`build_parser` with ``default=_default(TheConfig, "field")`` and a dest
       equal to the field name (``--my-flag`` -> ``my_flag``). A field whose flag is spelled differently goes
       into ``_DEST``; a nested dataclass whose flags share a prefix goes into ``_PREFIX``.
    3. Nothing else: :func:`parse_config` fills fields by name, and ``config.json`` and checkpoints record
       ``asdict(cfg)``. Add a check to :func:`validate` if a value can be impossible, and a derived default
       (``None`` = "depends on other flags") to the dataclass's ``resolved()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcl.data.datasets import AugConfig, DataConfig
from pcl.data.sources import LABEL_MODES
from pcl.estep.clustering import KMeansConfig
from pcl.estep.estep import EStepConfig
from pcl.estep.feature_store import DTYPES
from pcl.model.backbone import ARCHS
from pcl.model.builder import ModelConfig
from pcl.model.heads import CLUSTER_HEADS
from pcl.run.run_dir import RunDir
from pcl.train.amp import AMP_MODES
from pcl.train.optim import OPTIMIZERS, SCHEDULES, OptimConfig
from pcl.utils.errors import PCLError


@dataclass
class TrainConfig:
    """The loop's own settings: epochs, batch, warmup, AMP, guard, checkpoints, logging, devices, kNN monitor."""

    epochs: int = 200  # the official schedule; `make train` passes its quick CPU one (6 epochs, 2 warmup)
    batch_size: int = 128  # global batch (all ranks together)
    warmup_epochs: int = 20  # InfoNCE-only epochs before the first E-step (>= epochs: MoCo v2)
    proto_weight: float = 1.0  # loss = InfoNCE + proto_weight * mean_m ProtoNCE_m (official: 1)
    fixed_concentration: bool = False  # ablation: phi = temperature for every prototype
    amp: str = "off"  # autocast for the forward passes: off | bf16 | fp16
    channels_last: bool = False
    max_bad_steps: int = 20  # stop after this many consecutive non-finite steps
    exp_dir: Path = Path("runs/default")
    resume: str | None = None  # checkpoint path, or "auto"
    stop_after_epochs: int | None = None
    save_freq: int = 10
    save_every_minutes: float = 0.0  # mid-epoch last.pth every M minutes (0 = off)
    save_every_steps: int = 0  # mid-epoch last.pth every N steps (0 = off)
    overwrite: bool = False  # start from scratch over an exp-dir that holds checkpoints
    requeue: bool = False  # under SLURM: scontrol requeue after a signal-triggered checkpoint
    print_freq: int = 10
    save_clusters: bool = False
    cluster_metrics: bool = True  # NMI/AMI/purity against the train labels after each E-step
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dist_backend: str = "auto"  # auto | nccl | gloo
    knn_k: int = 200
    knn_t: float = 0.1
    knn_freq: int = 1  # kNN monitor every N epochs and after the last one; 0 = never


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


# argparse dest of the fields whose flag is not spelled like the field, and flag prefixes of nested dataclasses
_DEST = {
    (DataConfig, "root"): "data",
    (EStepConfig, "max_points"): "kmeans_max_points",
    (EStepConfig, "shard_rows"): "feature_shard_rows",
}
_PREFIX = {(EStepConfig, "kmeans"): "kmeans_"}


def _default(cls: type, name: str) -> Any:
    """Default value of dataclass field ``cls.name`` (a fresh copy for ``default_factory`` fields)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become one-line ``PCLError``s instead of usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PCLError(message)


def _int_list(text: str) -> list[int]:
    try:
        items = [x.strip() for x in text.split(",")]
        if text.strip() and "" in items:  # "10,,20": a missing value, not "10,20"
            raise ValueError
        return [int(x) for x in items if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``main_pcl.py`` command line; every default comes from the stage dataclasses (see the module doc)."""
    M, A, D, Opt, E, K, T = ModelConfig, AugConfig, DataConfig, OptimConfig, EStepConfig, KMeansConfig, TrainConfig
    p = _Parser(description="Prototypical Contrastive Learning (PCL v2) on an ImageFolder data set.")
    p.add_argument(
        "data",
        nargs="?",
        default=_default(D, "root"),
        help="images: ROOT/train/<class>/ (+ val/ or test/), ROOT/<class>/, any folder of images (unlabeled), "
        "or a .txt / .csv file list (default: bundled CIFAR-10 subset)",
    )
    g = p.add_argument_group("model")
    g.add_argument("-a", "--arch", default=_default(M, "arch"), help=f"torchvision ResNet ({', '.join(ARCHS)})")
    g.add_argument(
        "--stem",
        default=_default(M, "stem"),
        choices=("imagenet", "small"),
        help="small = CIFAR stem (3x3 stride-1 conv, no max-pool): better for 32-px data, ~12x the compute",
    )
    g.add_argument("--low-dim", type=int, default=_default(M, "low_dim"), help="embedding dimension")
    g.add_argument(
        "--pcl-r",
        type=int,
        default=_default(M, "pcl_r"),
        help="queue size = number of negatives, instance and prototype (official ImageNet: 16384)",
    )
    g.add_argument(
        "--moco-m", type=float, default=_default(M, "moco_m"), help="momentum of the key encoder (official: 0.999)"
    )
    g.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=_default(M, "mlp"), help="MoCo v2 MLP head")
    g.add_argument(
        "--cluster-head",
        default=_default(M, "cluster_head"),
        choices=CLUSTER_HEADS,
        help="extra head for the cluster task",
    )
    g.add_argument(
        "--bn-splits",
        type=int,
        default=_default(M, "bn_splits"),
        help="sub-batches for single-process shuffle BN (1 = plain BN)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=_default(M, "temperature"),
        help="InfoNCE temperature T (also mean of phi)",
    )

    g = p.add_argument_group("data and augmentation")
    g.add_argument(
        "--labels",
        default=_default(D, "labels"),
        choices=LABEL_MODES,
        help="auto: class folders when DATA holds only >= 2 sub-folders, a CSV's label column; "
        "none: unlabeled; folders: from class folders",
    )
    g.add_argument(
        "--val",
        default=_default(D, "val"),
        help="eval set of the kNN monitor, in any DATA form, labelled (default: DATA's val/ or test/ split)",
    )
    g.add_argument("--image-size", type=int, default=_default(A, "image_size"))
    g.add_argument(
        "--aug-plus",
        action=argparse.BooleanOptionalAction,
        default=_default(A, "aug_plus"),
        help="MoCo v2 augmentation",
    )
    g.add_argument("--crop-min", type=float, default=_default(A, "crop_min"), help="RandomResizedCrop minimum scale")
    g.add_argument("--color-jitter", type=float, default=_default(A, "color_jitter"), help="colour-jitter strength")
    g.add_argument("--color-jitter-prob", type=float, default=_default(A, "color_jitter_prob"))
    g.add_argument("--grayscale-prob", type=float, default=_default(A, "grayscale_prob"))
    g.add_argument(
        "--blur-prob",
        type=float,
        default=_default(A, "blur_prob"),
        help="Gaussian-blur probability (default: 0.5, or 0 for images <= 64 px)",
    )
    g.add_argument("-j", "--workers", type=int, default=_default(D, "workers"), help="data-loading processes per rank")
    g.add_argument(
        "--cache-images",
        default=_default(D, "cache_images"),
        choices=("auto", "yes", "no"),
        help="decode every image once into RAM (uint8) instead of every epoch; auto: when they fit the budget",
    )
    g.add_argument(
        "--cache-budget-mb",
        type=float,
        default=_default(D, "cache_budget_mb"),
        help="RAM budget of --cache-images, per process",
    )
    g.add_argument(
        "--gpu-aug",
        action="store_true",
        default=_default(D, "gpu_aug"),
        help="augment batches on the training device with kornia (needs the image cache and one image size)",
    )
    g.add_argument(
        "--verify-images",
        default=_default(D, "verify_images"),
        choices=("auto", "yes", "no"),
        help="decode every image before training (auto: when <= 200k images)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=_default(T, "epochs"))
    g.add_argument(
        "-b",
        "--batch-size",
        type=int,
        default=_default(T, "batch_size"),
        help="global batch size (all ranks together)",
    )
    g.add_argument(
        "--lr", type=float, default=_default(Opt, "lr"), help="base lr for the global batch (default: per optimizer)"
    )
    g.add_argument("--wd", type=float, default=_default(Opt, "wd"), help="weight decay (default: per optimizer)")
    g.add_argument("--momentum", type=float, default=_default(Opt, "momentum"), help="SGD / LARS momentum")
    g.add_argument("--optimizer", default=_default(Opt, "optimizer"), choices=OPTIMIZERS)
    g.add_argument(
        "--lr-schedule",
        default=_default(Opt, "lr_schedule"),
        choices=SCHEDULES,
        help="default: step for sgd, cos otherwise",
    )
    g.add_argument(
        "--schedule", type=_int_list, default=_default(Opt, "schedule"), help="step-schedule milestones (epochs)"
    )
    g.add_argument(
        "--lr-warmup-epochs",
        type=float,
        default=_default(Opt, "lr_warmup_epochs"),
        help="linear lr warmup, epochs (default: per optimizer)",
    )
    g.add_argument("--min-lr", type=float, default=_default(Opt, "min_lr"), help="final lr of the cosine schedule")
    g.add_argument(
        "--exclude-bn-bias",
        action=argparse.BooleanOptionalAction,
        default=_default(Opt, "exclude_bn_bias"),
        help="no weight decay / LARS adaptation for BN and biases (default: per optimizer)",
    )
    g.add_argument("--amp", default=_default(T, "amp"), choices=AMP_MODES, help="autocast for the forward passes")
    g.add_argument(
        "--channels-last",
        action="store_true",
        default=_default(T, "channels_last"),
        help="channels-last memory format for the training step (for GPUs; 1.13x step time on this CPU, README)",
    )
    g.add_argument("--clip-grad", type=float, default=_default(Opt, "clip_grad"), help="clip the global gradient norm")
    g.add_argument(
        "--max-bad-steps",
        type=int,
        default=_default(T, "max_bad_steps"),
        help="stop after this many consecutive non-finite steps",
    )

    g = p.add_argument_group("PCL E-step")
    g.add_argument(
        "--num-cluster",
        type=_int_list,
        default=_default(E, "num_cluster"),
        help="k per granularity, comma list (official ImageNet: 25000,50000,100000)",
    )
    g.add_argument(
        "--warmup-epochs",
        type=int,
        default=_default(T, "warmup_epochs"),
        help="InfoNCE-only epochs before the first E-step (>= --epochs: MoCo v2, no E-step)",
    )
    g.add_argument(
        "--proto-weight", type=float, default=_default(T, "proto_weight"), help="weight of the ProtoNCE term"
    )
    g.add_argument(
        "--fixed-concentration",
        action="store_true",
        default=_default(T, "fixed_concentration"),
        help="ablation: phi = --temperature for every prototype instead of the estimated concentration",
    )
    g.add_argument("--kmeans-niter", type=int, default=_default(K, "niter"))
    g.add_argument("--kmeans-nredo", type=int, default=_default(K, "nredo"))
    g.add_argument(
        "--kmeans-max-points",
        type=int,
        default=_default(E, "max_points"),
        help="k-means trains on all features up to this many, else on a uniform sample",
    )
    g.add_argument(
        "--feature-dir",
        type=Path,
        default=_default(E, "feature_dir"),
        help="E-step shards (default <exp-dir>/features)",
    )
    g.add_argument("--feature-dtype", default=_default(E, "feature_dtype"), choices=tuple(DTYPES))
    g.add_argument("--feature-shard-rows", type=int, default=_default(E, "shard_rows"), help="rows per feature shard")
    g.add_argument(
        "--keep-features",
        action="store_true",
        default=_default(E, "keep_features"),
        help="keep each epoch's feature shards",
    )
    g.add_argument(
        "--save-clusters",
        action="store_true",
        default=_default(T, "save_clusters"),
        help="write <exp-dir>/clusters/epoch_XXXX.pth each E-step",
    )
    g.add_argument(
        "--cluster-metrics",
        action=argparse.BooleanOptionalAction,
        default=_default(T, "cluster_metrics"),
        help="log NMI/AMI/purity of each E-step's clusters against the train labels (when > 1 class)",
    )

    g = p.add_argument_group("run")
    g.add_argument("--exp-dir", type=Path, default=_default(T, "exp_dir"))
    g.add_argument(
        "--resume",
        default=_default(T, "resume"),
        help="checkpoint path, or 'auto' for <exp-dir>/checkpoints/last.pth",
    )
    g.add_argument(
        "--stop-after-epochs",
        type=int,
        default=_default(T, "stop_after_epochs"),
        help="run at most this many epochs in this invocation, then exit (for time-limited job slots)",
    )
    g.add_argument(
        "--save-freq",
        type=int,
        default=_default(T, "save_freq"),
        help="also keep checkpoint_XXXX.pth every N epochs",
    )
    g.add_argument(
        "--save-every-minutes",
        type=float,
        default=_default(T, "save_every_minutes"),
        help="also write a resumable mid-epoch last.pth every M minutes (0 = off)",
    )
    g.add_argument(
        "--save-every-steps",
        type=int,
        default=_default(T, "save_every_steps"),
        help="also write a resumable mid-epoch last.pth every N steps (0 = off)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        default=_default(T, "overwrite"),
        help="start from scratch in an exp-dir that holds checkpoints, deleting that run's outputs",
    )
    g.add_argument(
        "--requeue",
        action="store_true",
        default=_default(T, "requeue"),
        help="under SLURM: after a SIGTERM/SIGUSR1 checkpoint, scontrol requeue this job",
    )
    g.add_argument(
        "--print-freq", type=int, default=_default(T, "print_freq"), help="progress-bar update interval (steps)"
    )
    g.add_argument("--seed", type=int, default=_default(T, "seed"))
    g.add_argument("--device", default=_default(T, "device"), choices=("auto", "cpu", "cuda"))
    g.add_argument("--dist-backend", default=_default(T, "dist_backend"), choices=("auto", "nccl", "gloo"))
    g.add_argument(
        "--knn-freq",
        type=int,
        default=_default(T, "knn_freq"),
        help="kNN monitor every N epochs and after the last one (0 = never); costs a full train+val feature pass",
    )
    g.add_argument("--knn-k", type=int, default=_default(T, "knn_k"))
    g.add_argument("--knn-t", type=float, default=_default(T, "knn_t"))
    g.add_argument("--eval-batch-size", type=int, default=_default(D, "eval_batch_size"))
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
        dest = prefix + _DEST.get((cls, f.name), f.name)
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
            out[prefix + _DEST.get((cls, f.name), f.name)] = d[f.name]
    return out


def resolve(cfg: Config) -> Config:
    """Fill the derived defaults in place (blur, per-optimizer lr / wd / warmup / schedule, feature dir)."""
    cfg.data.aug = cfg.data.aug.resolved()
    cfg.optim = cfg.optim.resolved()
    if cfg.estep.feature_dir is None:
        cfg.estep.feature_dir = cfg.run_dir.features
    return cfg


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse the command line into a resolved :class:`Config`; a bad flag raises a one-line ``PCLError``."""
    return resolve(_fill(Config, vars(build_parser().parse_args(argv))))


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
    """Checks that need no data: raise ``PCLError`` with one line for a config that cannot work."""
    m, t, o, e = cfg.model, cfg.train, cfg.optim, cfg.estep
    if m.arch not in ARCHS:
        raise PCLError(f"unknown arch {m.arch!r}; choose from {', '.join(ARCHS)}")
    positive = {
        "--epochs": t.epochs,
        "--batch-size": t.batch_size,
        "--pcl-r": m.pcl_r,
        "--low-dim": m.low_dim,
        "--image-size": cfg.data.aug.image_size,
        "--bn-splits": m.bn_splits,
        "--feature-shard-rows": e.shard_rows,
        "--kmeans-max-points": e.max_points,
        "--max-bad-steps": t.max_bad_steps,
        "--save-freq": t.save_freq,
        "--print-freq": t.print_freq,
        "--eval-batch-size": cfg.data.eval_batch_size,
        "--knn-k": t.knn_k,
    }
    for flag, v in positive.items():
        if v <= 0:
            raise PCLError(f"{flag} must be positive, got {v}")
    for flag, v in {"--lr": o.lr, "--temperature": m.temperature, "--knn-t": t.knn_t}.items():
        if not v > 0:
            raise PCLError(f"{flag} must be positive, got {v}")
    if t.warmup_epochs < 0 or o.lr_warmup_epochs < 0 or cfg.data.workers < 0 or t.knn_freq < 0:
        raise PCLError("--warmup-epochs, --lr-warmup-epochs, --workers and --knn-freq must be >= 0")
    aug = cfg.data.aug.resolved()
    if not 0.0 < aug.crop_min <= 1.0:
        raise PCLError(f"--crop-min must be in (0, 1], got {aug.crop_min}")
    if not aug.color_jitter >= 0:
        raise PCLError(f"--color-jitter must be >= 0, got {aug.color_jitter}")
    probs = {"--color-jitter-prob": aug.color_jitter_prob, "--grayscale-prob": aug.grayscale_prob}
    probs["--blur-prob"] = aug.blur_prob
    for flag, v in probs.items():
        if not 0.0 <= v <= 1.0:
            raise PCLError(f"{flag} must be in [0, 1], got {v}")
    if not (t.save_every_minutes >= 0 and t.save_every_steps >= 0):
        raise PCLError("--save-every-minutes and --save-every-steps must be >= 0 (0 = off)")
    if t.overwrite and t.resume:
        raise PCLError("--overwrite starts from scratch and --resume continues: pass only one of them")
    if not 0.0 <= m.moco_m < 1.0:
        raise PCLError(f"--moco-m must be in [0, 1), got {m.moco_m}")
    if not e.num_cluster or min(e.num_cluster) < 2:
        raise PCLError(f"--num-cluster needs at least one value >= 2, got {e.num_cluster}")
    if t.batch_size % world:
        raise PCLError(f"--batch-size {t.batch_size} (global) is not divisible by the {world} processes")
    per_rank = t.batch_size // world
    splits = m.bn_splits if world == 1 else 1
    if per_rank % splits:
        raise PCLError(f"--batch-size {t.batch_size} is not divisible by --bn-splits {m.bn_splits}")
    if t.batch_size > m.pcl_r:
        raise PCLError(
            f"--batch-size {t.batch_size} is larger than the queue --pcl-r {m.pcl_r}: "
            "one batch of keys would overwrite itself; raise --pcl-r or lower the batch size"
        )
    if not (t.proto_weight >= 0 and math.isfinite(t.proto_weight)):
        raise PCLError(f"--proto-weight must be a finite number >= 0, got {t.proto_weight}")
    if o.clip_grad is not None and o.clip_grad <= 0:
        raise PCLError(f"--clip-grad must be positive, got {o.clip_grad}")


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
