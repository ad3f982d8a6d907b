"""Train PCL: parse the command line, build data / model / optimisation, hand them to the engine.

python main_pcl.py                                   # bundled CIFAR-10 subset, CPU-friendly defaults
python main_pcl.py DATA --epochs 200 --warmup-epochs 20 --optimizer sgd-cos
torchrun --nproc_per_node 8 main_pcl.py DATA ...     # DDP (see README)
"""

from __future__ import annotations

import random
import sys

import numpy as np
import torch
from torch import nn

from pcl import distributed as pdist
from pcl.config import Config, parse_config, to_json, validate, validate_data
from pcl.data import (
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


def build_loaders(cfg: Config, info: pdist.DistInfo) -> Loaders:
    """Training (two views), E-step (eval view, this rank's share) and, on rank 0 with an eval split,
    kNN-monitor loaders; verifies the images and checks the data-dependent limits first."""
    d, batch, seed = cfg.data, cfg.train.batch_size, cfg.train.seed
    splits = resolve_splits(d.root)
    train_set = IndexedImageFolder(splits.train, TwoCrops(train_transform(d.aug)))
    size = d.aug.image_size
    eval_set = IndexedImageFolder(splits.eval, eval_transform(size)) if splits.eval else None
    verify = d.verify_images == "yes" or (d.verify_images == "auto" and len(train_set) <= VERIFY_AUTO_LIMIT)
    if verify:
        paths = [p for p, _ in train_set.samples] + ([p for p, _ in eval_set.samples] if eval_set else [])
        verify_images(paths, show=info.is_main)
    validate_data(cfg, len(train_set))
    estep_set = train_set.with_transform(eval_transform(size))
    per_rank = batch // info.world
    loaders = Loaders(
        train=train_loader(train_set, per_rank, d.workers, seed, info.rank, info.world),
        estep=eval_loader(estep_set, d.eval_batch_size, d.workers, info.rank, info.world),
        num_train=len(train_set),
    )
    if eval_set is not None and info.is_main:
        loaders.knn_train = eval_loader(estep_set, d.eval_batch_size, d.workers)
        loaders.knn_eval = eval_loader(eval_set, d.eval_batch_size, d.workers)
        loaders.train_labels = torch.tensor(estep_set.targets)
        loaders.eval_labels = torch.tensor(eval_set.targets)
        loaders.num_classes = len(train_set.classes)
    return loaders


def build_model(cfg: Config, info: pdist.DistInfo) -> tuple[PCL, nn.Module]:
    """The raw PCL module on ``info.device`` and the module to train (DDP-wrapped under torchrun).

    Under DDP the key batch is shuffled across ranks, so split BN is off (``bn_splits`` 1).
    """
    raw = PCL.from_config(cfg.model, bn_splits=1 if info.enabled else None).to(info.device)
    if cfg.train.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if not info.enabled:
        return raw, raw
    ids = [info.device.index] if info.device.type == "cuda" else None
    unused = cfg.model.cluster_head != "none"
    ddp = nn.parallel.DistributedDataParallel(raw, device_ids=ids, find_unused_parameters=unused)
    return raw, ddp


def build_trainer(cfg: Config, info: pdist.DistInfo) -> Trainer:
    """Loaders, model, optimizer and per-step lr schedule, handed to a :class:`Trainer`."""
    loaders = build_loaders(cfg, info)
    raw, model = build_model(cfg, info)
    o = cfg.optim
    optimizer = build_optimizer(o.optimizer, param_groups(raw, o.wd, o.exclude_bn_bias), o.lr, momentum=o.momentum)
    steps = len(loaders.train)
    schedule = LRSchedule(
        base_lr=o.lr,
        total_steps=cfg.train.epochs * steps,
        warmup_steps=round(o.lr_warmup_epochs * steps),
        kind=o.lr_schedule,
        min_lr=o.min_lr,
        milestones=[m * steps for m in o.schedule],
    )
    return Trainer(cfg, model, optimizer, build_scheduler(optimizer, schedule), loaders, info)


def run(cfg: Config) -> Trainer:
    """Set up (and tear down) the process group, build everything, train; returns the trainer."""
    t, run_dir = cfg.train, cfg.run_dir
    info = pdist.init_distributed(t.device, t.dist_backend)
    try:
        validate(cfg, info.world)
        if t.warmup_epochs >= t.epochs and info.is_main:
            print(
                f"note: --warmup-epochs {t.warmup_epochs} >= --epochs {t.epochs}: no E-step will run, "
                "this trains MoCo v2 (InfoNCE only)"
            )
        random.seed(t.seed + info.rank)
        np.random.seed(t.seed + info.rank)
        torch.manual_seed(t.seed + info.rank)
        trainer = build_trainer(cfg, info)
        resume = run_dir.resume_path(t.resume)
        if resume is not None:
            trainer.resume(resume)
        elif t.resume == "auto" and info.is_main:
            print(f"--resume auto: no checkpoint in {run_dir.checkpoints}, starting from scratch")
        if info.is_main:
            run_dir.root.mkdir(parents=True, exist_ok=True)
            run_dir.config.write_text(to_json(cfg))
        knn = trainer.fit(stop_after=t.stop_after_epochs)
        if info.is_main:
            print(f"TensorBoard logs: {run_dir.tb}  (tensorboard --logdir {run_dir.tb})")
            print(f"checkpoints: {run_dir.checkpoints}")
            if knn is not None:
                print(f"final kNN top-1: {knn:.2f}%")
        return trainer
    finally:
        pdist.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 on success, 2 with one ``error:`` line for bad input, 130 on Ctrl-C."""
    cfg = None
    try:
        cfg = parse_config(argv)
        run(cfg)
    except PCLError as e:
        # errors raised in DataLoader workers arrive with the worker's traceback: keep the last line only
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        print(f"error: {last.removeprefix('pcl.errors.PCLError: ')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" is in {cfg.run_dir.last}" if cfg is not None else " is in the run's checkpoints"
        print(f"interrupted: the last completed epoch{where}; rerun with --resume auto to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
