"""Configuration stage: the command line, and checks that reject a config that cannot work before training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pcl.backbone import ARCHS
from pcl.errors import PCLError
from pcl.feature_store import DTYPES
from pcl.heads import CLUSTER_HEADS
from pcl.optim import OPTIMIZER_DEFAULTS, OPTIMIZERS, SCHEDULES, default_schedule


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become one-line ``PCLError``s instead of usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PCLError(message)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Prototypical Contrastive Learning (PCL v2) on an ImageFolder data set.")
    p.add_argument(
        "data",
        nargs="?",
        default=None,
        help="ImageFolder root with train/ and optionally val/ or test/ (default: bundled CIFAR-10 subset)",
    )
    g = p.add_argument_group("model")
    g.add_argument("-a", "--arch", default="resnet18", help=f"torchvision ResNet ({', '.join(ARCHS)})")
    g.add_argument(
        "--stem",
        default="imagenet",
        choices=("imagenet", "small"),
        help="small = CIFAR stem (3x3 stride-1 conv, no max-pool): better for 32-px data, ~12x the compute",
    )
    g.add_argument("--low-dim", type=int, default=128, help="embedding dimension")
    g.add_argument(
        "--pcl-r",
        type=int,
        default=1024,
        help="queue size = number of negatives, instance and prototype (official ImageNet: 16384)",
    )
    g.add_argument("--moco-m", type=float, default=0.99, help="momentum of the key encoder (official: 0.999)")
    g.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=True, help="MoCo v2 MLP head")
    g.add_argument("--cluster-head", default="none", choices=CLUSTER_HEADS, help="extra head for the cluster task")
    g.add_argument("--bn-splits", type=int, default=8, help="sub-batches for single-process shuffle BN (1 = plain BN)")
    g.add_argument("--temperature", type=float, default=0.2, help="InfoNCE temperature T (also mean of phi)")

    g = p.add_argument_group("data and augmentation")
    g.add_argument("--image-size", type=int, default=32)
    g.add_argument("--aug-plus", action=argparse.BooleanOptionalAction, default=True, help="MoCo v2 augmentation")
    g.add_argument("--crop-min", type=float, default=0.2, help="RandomResizedCrop minimum scale")
    g.add_argument("--color-jitter", type=float, default=0.4, help="colour-jitter strength")
    g.add_argument("--color-jitter-prob", type=float, default=0.8)
    g.add_argument("--grayscale-prob", type=float, default=0.2)
    g.add_argument(
        "--blur-prob",
        type=float,
        default=None,
        help="Gaussian-blur probability (default: 0.5, or 0 for images <= 64 px)",
    )
    g.add_argument("-j", "--workers", type=int, default=2, help="data-loading processes per rank")
    g.add_argument(
        "--verify-images",
        default="auto",
        choices=("auto", "yes", "no"),
        help="decode every image before training (auto: when <= 200k images)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=6)
    g.add_argument("-b", "--batch-size", type=int, default=128, help="global batch size (all ranks together)")
    g.add_argument("--lr", type=float, default=None, help="base lr for the global batch (default: per optimizer)")
    g.add_argument("--wd", type=float, default=None, help="weight decay (default: per optimizer)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD / LARS momentum")
    g.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    g.add_argument("--lr-schedule", default=None, choices=SCHEDULES, help="default: step for sgd, cos otherwise")
    g.add_argument("--schedule", type=_int_list, default=[120, 160], help="step-schedule milestones (epochs)")
    g.add_argument(
        "--lr-warmup-epochs", type=float, default=None, help="linear lr warmup, epochs (default: per optimizer)"
    )
    g.add_argument("--min-lr", type=float, default=0.0, help="final lr of the cosine schedule")
    g.add_argument(
        "--exclude-bn-bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="no weight decay / LARS adaptation for BN and biases (default: per optimizer)",
    )
    g.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="autocast for the forward passes")
    g.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory format for the training step (0.92x step time on CPU, README)",
    )
    g.add_argument("--clip-grad", type=float, default=None, help="clip the global gradient norm")
    g.add_argument("--max-bad-steps", type=int, default=20, help="stop after this many consecutive non-finite steps")

    g = p.add_argument_group("PCL E-step")
    g.add_argument(
        "--num-cluster",
        type=_int_list,
        default=[50, 100, 200],
        help="k per granularity, comma list (official ImageNet: 25000,50000,100000)",
    )
    g.add_argument("--warmup-epochs", type=int, default=2, help="InfoNCE-only epochs before the first E-step")
    g.add_argument("--kmeans-niter", type=int, default=20)
    g.add_argument("--kmeans-nredo", type=int, default=5)
    g.add_argument(
        "--kmeans-max-points",
        type=int,
        default=2_000_000,
        help="k-means trains on all features up to this many, else on a uniform sample",
    )
    g.add_argument("--feature-dir", type=Path, default=None, help="E-step shards (default <exp-dir>/features)")
    g.add_argument("--feature-dtype", default="float32", choices=tuple(DTYPES))
    g.add_argument("--feature-shard-rows", type=int, default=65536, help="rows per feature shard")
    g.add_argument("--keep-features", action="store_true", help="keep each epoch's feature shards")
    g.add_argument("--save-clusters", action="store_true", help="write <exp-dir>/clusters/epoch_XXXX.pth each E-step")

    g = p.add_argument_group("run")
    g.add_argument("--exp-dir", type=Path, default=Path("runs/default"))
    g.add_argument("--resume", default=None, help="checkpoint path, or 'auto' for <exp-dir>/checkpoints/last.pth")
    g.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        help="run at most this many epochs in this invocation, then exit (for time-limited job slots)",
    )
    g.add_argument("--save-freq", type=int, default=10, help="also keep checkpoint_XXXX.pth every N epochs")
    g.add_argument("--print-freq", type=int, default=10, help="progress-bar update interval (steps)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--dist-backend", default="auto", choices=("auto", "nccl", "gloo"))
    g.add_argument("--knn-k", type=int, default=200)
    g.add_argument("--knn-t", type=float, default=0.1)
    g.add_argument("--eval-batch-size", type=int, default=256)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and fill derived defaults (blur, per-optimizer lr / wd / warmup, lr schedule, feature dir)."""
    args = build_parser().parse_args(argv)
    if args.blur_prob is None:
        args.blur_prob = 0.0 if args.image_size <= 64 else 0.5
    defaults = OPTIMIZER_DEFAULTS[args.optimizer]
    for name in ("lr", "wd", "exclude_bn_bias", "lr_warmup_epochs"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
    if args.lr_schedule is None:
        args.lr_schedule = default_schedule(args.optimizer)
    if args.feature_dir is None:
        args.feature_dir = args.exp_dir / "features"
    return args


def validate(args: argparse.Namespace, world: int = 1) -> None:
    """Checks that need no data: raise ``PCLError`` with one line for a config that cannot work."""
    if args.arch not in ARCHS:
        raise PCLError(f"unknown arch {args.arch!r}; choose from {', '.join(ARCHS)}")
    positive = {
        "--epochs": args.epochs,
        "--batch-size": args.batch_size,
        "--pcl-r": args.pcl_r,
        "--low-dim": args.low_dim,
        "--image-size": args.image_size,
        "--bn-splits": args.bn_splits,
        "--feature-shard-rows": args.feature_shard_rows,
        "--kmeans-max-points": args.kmeans_max_points,
        "--max-bad-steps": args.max_bad_steps,
        "--save-freq": args.save_freq,
        "--print-freq": args.print_freq,
    }
    for flag, v in positive.items():
        if v <= 0:
            raise PCLError(f"{flag} must be positive, got {v}")
    for flag, v in {"--lr": args.lr, "--temperature": args.temperature, "--knn-t": args.knn_t}.items():
        if not v > 0:
            raise PCLError(f"{flag} must be positive, got {v}")
    if args.warmup_epochs < 0 or args.lr_warmup_epochs < 0 or args.workers < 0:
        raise PCLError("--warmup-epochs, --lr-warmup-epochs and --workers must be >= 0")
    if not 0.0 <= args.moco_m < 1.0:
        raise PCLError(f"--moco-m must be in [0, 1), got {args.moco_m}")
    if not args.num_cluster or min(args.num_cluster) < 2:
        raise PCLError(f"--num-cluster needs at least one value >= 2, got {args.num_cluster}")
    if args.batch_size % world:
        raise PCLError(f"--batch-size {args.batch_size} (global) is not divisible by the {world} processes")
    per_rank = args.batch_size // world
    splits = args.bn_splits if world == 1 else 1
    if per_rank % splits:
        raise PCLError(f"--batch-size {args.batch_size} is not divisible by --bn-splits {args.bn_splits}")
    if args.batch_size > args.pcl_r:
        raise PCLError(
            f"--batch-size {args.batch_size} is larger than the queue --pcl-r {args.pcl_r}: "
            "one batch of keys would overwrite itself; raise --pcl-r or lower the batch size"
        )
    if args.clip_grad is not None and args.clip_grad <= 0:
        raise PCLError(f"--clip-grad must be positive, got {args.clip_grad}")


def validate_data(args: argparse.Namespace, num_train: int) -> None:
    """Checks that need the training-set size."""
    if num_train < args.batch_size:
        raise PCLError(f"only {num_train} training images: fewer than one batch of --batch-size {args.batch_size}")
    if args.pcl_r >= num_train:
        raise PCLError(
            f"--pcl-r {args.pcl_r} is not smaller than the {num_train} training images: each image's own "
            "older keys would sit in the queue as negatives; use about a tenth of the data set"
        )
    too_big = [k for k in args.num_cluster if k > num_train]
    if too_big:
        raise PCLError(f"--num-cluster {','.join(map(str, too_big))} exceeds the {num_train} training images")


def to_json(args: argparse.Namespace) -> str:
    """Full resolved configuration as JSON (paths as strings)."""
    return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())}, indent=2)
