"""Train PCL: parse the command line, build data / model / optimisation, hand them to the engine.

python main_pcl.py                                   # bundled CIFAR-10 subset, CPU-friendly defaults
python main_pcl.py DATA --epochs 200 --warmup-epochs 20 --optimizer sgd-cos
torchrun --nproc_per_node 8 main_pcl.py DATA ...     # DDP (see README)
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pcl import distributed as pdist
from pcl.checkpoint import resolve_resume
from pcl.config import parse_args, to_json, validate, validate_data
from pcl.data import (
    AugConfig,
    IndexedImageFolder,
    TwoCrops,
    eval_loader,
    eval_transform,
    resolve_splits,
    train_loader,
    train_transform,
    verify_images,
)
from pcl.engine import Loaders, Trainer
from pcl.errors import PCLError
from pcl.model import PCL
from pcl.optim import LRSchedule, build_optimizer, build_scheduler, param_groups

VERIFY_AUTO_LIMIT = 200_000


def build_loaders(args: argparse.Namespace, info: pdist.DistInfo) -> Loaders:
    splits = resolve_splits(args.data)
    aug = AugConfig(
        args.image_size,
        args.crop_min,
        args.color_jitter,
        args.color_jitter_prob,
        args.grayscale_prob,
        args.blur_prob,
        args.aug_plus,
    )
    train_set = IndexedImageFolder(splits.train, TwoCrops(train_transform(aug)))
    eval_set = IndexedImageFolder(splits.eval, eval_transform(args.image_size)) if splits.eval else None
    verify = args.verify_images == "yes" or (args.verify_images == "auto" and len(train_set) <= VERIFY_AUTO_LIMIT)
    if verify:
        paths = [p for p, _ in train_set.samples] + ([p for p, _ in eval_set.samples] if eval_set else [])
        verify_images(paths, show=info.is_main)
    validate_data(args, len(train_set))
    estep_set = train_set.with_transform(eval_transform(args.image_size))
    per_rank = args.batch_size // info.world
    loaders = Loaders(
        train=train_loader(train_set, per_rank, args.workers, args.seed, info.rank, info.world),
        estep=eval_loader(estep_set, args.eval_batch_size, args.workers, info.rank, info.world),
        num_train=len(train_set),
    )
    if eval_set is not None and info.is_main:
        loaders.knn_train = eval_loader(estep_set, args.eval_batch_size, args.workers)
        loaders.knn_eval = eval_loader(eval_set, args.eval_batch_size, args.workers)
        loaders.train_labels = torch.tensor(estep_set.targets)
        loaders.eval_labels = torch.tensor(eval_set.targets)
        loaders.num_classes = len(train_set.classes)
    return loaders


def build_model(args: argparse.Namespace, info: pdist.DistInfo) -> tuple[PCL, nn.Module]:
    """The raw PCL module and the module to train (DDP-wrapped under torchrun)."""
    raw = PCL(
        args.arch,
        args.low_dim,
        args.pcl_r,
        args.moco_m,
        args.mlp,
        args.cluster_head,
        small_stem=args.stem == "small",
        bn_splits=args.bn_splits if info.world == 1 else 1,
    ).to(info.device)
    if args.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if not info.enabled:
        return raw, raw
    ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(raw, device_ids=ids, find_unused_parameters=args.cluster_head != "none")
    return raw, ddp


def build_trainer(args: argparse.Namespace, info: pdist.DistInfo) -> Trainer:
    loaders = build_loaders(args, info)
    raw, model = build_model(args, info)
    optimizer = build_optimizer(
        args.optimizer, param_groups(raw, args.wd, args.exclude_bn_bias), args.lr, momentum=args.momentum
    )
    steps = len(loaders.train)
    schedule = LRSchedule(
        base_lr=args.lr,
        total_steps=args.epochs * steps,
        warmup_steps=round(args.lr_warmup_epochs * steps),
        kind=args.lr_schedule,
        min_lr=args.min_lr,
        milestones=[m * steps for m in args.schedule],
    )
    return Trainer(args, model, optimizer, build_scheduler(optimizer, schedule), loaders, info)


def run(args: argparse.Namespace) -> Trainer:
    """Set up (and tear down) the process group, build everything, train; returns the trainer."""
    info = pdist.init_distributed(args.device, args.dist_backend)
    try:
        validate(args, info.world)
        random.seed(args.seed + info.rank)
        np.random.seed(args.seed + info.rank)
        torch.manual_seed(args.seed + info.rank)
        trainer = build_trainer(args, info)
        resume = resolve_resume(args.resume, Path(args.exp_dir))
        if resume is not None:
            trainer.resume(resume)
        elif args.resume == "auto" and info.is_main:
            print(f"--resume auto: no checkpoint in {args.exp_dir}/checkpoints, starting from scratch")
        if info.is_main:
            Path(args.exp_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.exp_dir) / "config.json").write_text(to_json(args))
        knn = trainer.fit(stop_after=args.stop_after_epochs)
        if info.is_main:
            tb = Path(args.exp_dir) / "tb"
            print(f"TensorBoard logs: {tb}  (tensorboard --logdir {tb})")
            print(f"checkpoints: {Path(args.exp_dir) / 'checkpoints'}")
            if knn is not None:
                print(f"final kNN top-1: {knn:.2f}%")
        return trainer
    finally:
        pdist.shutdown()


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except PCLError as e:
        # errors raised in DataLoader workers arrive with the worker's traceback: keep the last line only
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        print(f"error: {last.removeprefix('pcl.errors.PCLError: ')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: the last completed epoch is in <exp-dir>/checkpoints/last.pth; "
            "rerun with --resume auto to continue",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
