"""The training program: parse the command line, build data / model / optimisation, hand them to the engine.

``main_pcl.py`` and ``python -m pcl`` call :func:`main`; ``tools/submit_slurm.py``'s job imports it.

python main_pcl.py                                   # bundled CIFAR-10 subset, CPU-friendly defaults
python main_pcl.py DATA --epochs 200 --warmup-epochs 20 --optimizer sgd-cos
torchrun --nproc_per_node 8 main_pcl.py DATA ...     # DDP (see docs/distributed.md)
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pcl.config import Config, parse_config, resolve, stored_config, to_dict, to_json, validate, validate_data
from pcl.data.datasets import (
    IndexedImages,
    MultiView,
    eval_loader,
    eval_transform,
    train_loader,
    verify_images,
)
from pcl.data.gpu_aug import GpuAugLoader
from pcl.data.image_cache import attach_cache
from pcl.data.sources import check_knn_data, resolve_data
from pcl.eval.reference import final_knn_lines, untrained_knn
from pcl.methods import Method, method_class
from pcl.run import exp_dir as exp_dir_checks
from pcl.run.checkpointer import load_resumable
from pcl.run.resume_check import check_compatible, check_training_checkpoint
from pcl.train.engine import EngineConfig, Loaders, Trainer
from pcl.train.health import CollapseStop, RunRecipe
from pcl.train.optim import LRSchedule, build_optimizer, build_scheduler, param_groups
from pcl.train.signals import STOP, Preempted, slurm_requeue
from pcl.train.summary import run_summary
from pcl.utils import distributed as pdist
from pcl.utils.cli import report_error
from pcl.utils.errors import PCLError
from pcl.utils.logs import LogTee

VERIFY_AUTO_LIMIT = 200_000


def build_loaders(cfg: Config, info: pdist.DistInfo) -> Loaders:
    """Training (two views), E-step (eval view, this rank's share) and, on rank 0 with a labelled eval set,
    kNN-monitor loaders, from the one data resolver; says the data form and which monitors are off (rank 0),
    checks the data-dependent limits first, then verifies the images."""
    d, mon, batch, seed = cfg.data, cfg.monitor, cfg.train.batch_size, cfg.train.seed
    source = resolve_data(d.root, d.labels, d.val)
    check_knn_data(source, mon.knn_freq > 0, d.val is not None)
    spec = d.aug.view_spec()
    train_set = IndexedImages(source.train, MultiView.from_spec(spec, d.aug))
    validate_data(cfg, len(train_set))  # before any image is decoded
    size = d.aug.image_size
    knn_off = source.knn_off_reason()
    eval_set = IndexedImages(source.eval, eval_transform(size)) if source.eval is not None and not knn_off else None
    if info.is_main:
        print(source.describe())
        if source.warning:
            print(source.warning, file=sys.stderr)
        if knn_off and mon.knn_freq > 0:
            print(f"kNN monitor off: {knn_off}")
        if not source.train.labeled and mon.cluster_metrics:
            print("cluster metrics (NMI/AMI/purity) off: the training data has no labels")
    cache_mode = "yes" if d.gpu_aug and d.cache_images == "auto" else d.cache_images
    cached = attach_cache([train_set, *([eval_set] if eval_set else [])], cache_mode, d.cache_budget_mb, info.is_main)
    if d.gpu_aug and not cached:
        raise PCLError("--gpu-aug needs the decoded images in RAM: use --cache-images yes (or raise --cache-budget-mb)")
    verify = d.verify_images == "yes" or (d.verify_images == "auto" and len(train_set) <= VERIFY_AUTO_LIMIT)
    if verify and not cached:  # building the cache decoded every image already
        paths = [p for p, _ in train_set.samples] + ([p for p, _ in eval_set.samples] if eval_set else [])
        verify_images(paths, show=info.is_main)
    estep_set = train_set.with_transform(eval_transform(size))
    per_rank = batch // info.world
    loaders = Loaders(
        train=GpuAugLoader(train_set.cache.as_tensor(), d.aug, per_rank, seed, info.device, info.rank, info.world, spec)
        if d.gpu_aug
        else train_loader(train_set, per_rank, d.workers, seed, info.rank, info.world),
        estep=eval_loader(estep_set, d.eval_batch_size, d.workers, info.rank, info.world),
        num_train=len(train_set),
        data_identity=source.identity(),
    )
    if info.is_main and source.train.labeled:
        loaders.train_labels = torch.tensor(estep_set.targets)
    if eval_set is not None and info.is_main:
        loaders.knn_train = eval_loader(estep_set, d.eval_batch_size, d.workers)
        loaders.knn_eval = eval_loader(eval_set, d.eval_batch_size, d.workers)
        loaders.eval_labels = torch.tensor(eval_set.targets)
        loaders.num_classes = len(train_set.classes)
    return loaders


def build_model(cfg: Config, info: pdist.DistInfo) -> tuple[Method, nn.Module]:
    """The method (``--method``) on ``info.device`` and the module to train (DDP-wrapped under torchrun).

    Under DDP the key batch is shuffled across ranks, so split BN is off (``bn_splits`` 1).
    """
    raw = method_class(cfg.method).from_config(cfg, bn_splits=1 if info.enabled else None).to(info.device)
    if cfg.step.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if not info.enabled:
        return raw, raw
    ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(raw, device_ids=ids, find_unused_parameters=raw.find_unused_parameters)
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
    recipe = RunRecipe(o.optimizer, o.lr, o.lr_warmup_epochs, cfg.train.batch_size)
    warmup = cfg.loss.warmup_epochs if raw.uses_warmup else 0  # metrics.json: PCL's InfoNCE-only epochs
    engine = EngineConfig(cfg.train, cfg.step, cfg.checkpoint, cfg.monitor, warmup, recipe)
    return Trainer(engine, raw, model, optimizer, build_scheduler(optimizer, schedule), loaders, info, to_dict(cfg))


def _agree(check: Callable[[], None], info: pdist.DistInfo) -> None:
    """Run ``check`` on rank 0; its ``PCLError`` stops every rank with the same line."""
    error = None
    if info.is_main:
        try:
            check()
        except PCLError as e:
            error = str(e)
    errors = [e for e in pdist.all_gather_object(error) if e]
    if errors:
        raise PCLError(errors[0])


def run(cfg: Config, log: LogTee | None = None) -> Trainer:
    """Set up (and tear down) the process group, build everything, train; returns the trainer.

    Before anything is built: the exp-dir is checked and locked and the checkpoint to resume is read and
    compared with ``cfg`` (docs/training.md). From then on rank 0 appends its output to ``train.log`` in the run
    folder (``log``: the caller's tee, left running so that its last error line lands there too).
    """
    t, c, run_dir = cfg.train, cfg.checkpoint, cfg.run_dir
    info = pdist.init_distributed(t.device, t.dist_backend)
    lock, ckpt, tee = None, {}, log or LogTee()
    STOP.install()  # SIGTERM / SIGUSR1 / SIGUSR2: checkpoint after the current step, then exit
    try:
        validate(cfg, info.world)
        for note in method_class(cfg.method).notes(cfg) if info.is_main else []:
            print(f"note: {note}")
        lock = exp_dir_checks.prepare(run_dir, cfg.estep.feature_dir, c.resume, c.overwrite, info)
        if info.is_main:
            tee.start(run_dir.train_log)
        resume = run_dir.resume_path(c.resume)
        if resume is not None:

            def read() -> None:  # --resume auto: an unreadable last.pth falls back to the newest kept checkpoint
                ckpt["path"], state = load_resumable(resume, run_dir if c.resume == "auto" else None)
                ckpt["state"] = check_training_checkpoint(state, ckpt["path"])
                ckpt["stored"] = _stored(ckpt["state"], ckpt["path"])
                check_compatible(ckpt["state"], ckpt["stored"], cfg, ckpt["path"])

            _agree(read, info)
        random.seed(t.seed + info.rank)
        np.random.seed(t.seed + info.rank)
        torch.manual_seed(t.seed + info.rank)
        trainer = build_trainer(cfg, info)
        if resume is not None:
            num_train, identity = trainer.loaders.num_train, trainer.loaders.data_identity
            resume = ckpt.get("path", resume)
            stored = ckpt.get("stored")
            _agree(lambda: check_compatible(ckpt["state"], stored, cfg, resume, num_train, identity), info)
            trainer.resume(resume, ckpt.get("state"))
        elif c.resume == "auto" and info.is_main:
            print(f"--resume auto: no checkpoint in {run_dir.checkpoints}, starting from scratch")
        if info.is_main:
            run_dir.root.mkdir(parents=True, exist_ok=True)
            run_dir.config.write_text(to_json(cfg))
        knn = trainer.fit(stop_after=c.stop_after_epochs)
        if info.is_main:
            for line in run_summary(trainer):
                print(line)
            print(f"TensorBoard logs: {run_dir.tb}  (tensorboard --logdir {run_dir.tb})")
            print(f"checkpoints: {run_dir.checkpoints}")
            if knn is not None:
                report_final_knn(cfg, trainer, knn)
        return trainer
    finally:
        STOP.uninstall()
        if log is None:
            tee.stop()
        if lock is not None:
            lock.release()
        pdist.shutdown()


def report_final_knn(cfg: Config, trainer: Trainer, knn: float) -> None:
    """Print the last kNN beside the fair untrained reference's (the method at random init, seeded as this run,
    BatchNorm recalibrated on the train images) and record it as ``eval/untrained_knn_top1`` of the last epoch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        fresh = method_class(cfg.method).from_config(cfg, bn_splits=1)
    ld = trainer.loaders
    reference = untrained_knn(fresh, ld, cfg.monitor, trainer.info)
    n_eval = len(ld.knn_eval.dataset) if ld.knn_eval is not None else 0
    line, warning = final_knn_lines(knn, reference, n_eval, cfg.train.seed)
    print(line)
    if warning:
        print(warning, file=sys.stderr)
    if reference is not None and trainer.state.epoch > 0:
        trainer.metrics.update(trainer.state.epoch - 1, {"eval/untrained_knn_top1": reference})


def _stored(ckpt: dict, path: object) -> Config | None:
    """The checkpoint's resolved configuration, or None for a very old one without (nothing to compare)."""
    try:
        return resolve(stored_config(ckpt, str(path)))
    except PCLError:
        return None


def _resume_hint(cfg: Config, written: str | None = None) -> str:
    """What to do after a stop: continue from ``written`` (this stop's checkpoint) or the latest one, or, with
    none, start again (one piece of advice, never both)."""
    last = cfg.run_dir.last
    if written:
        return f"checkpoint written: {written}; rerun with --resume auto to continue"
    if last.is_file():
        return f"the latest checkpoint is {last}; rerun with --resume auto to continue"
    return f"no checkpoint was written in {cfg.run_dir.root}; rerun the same command to start again"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Exit codes: 0 done; 2 bad input or environment (one ``error:`` line);
    3 ``--stop-on-collapse`` found a finite collapse (checkpoint written); 130 Ctrl-C; 128 + N after a graceful
    stop on signal N with a checkpoint written (SIGTERM 143, SIGUSR1 138, SIGUSR2 140)."""
    with LogTee() as log:  # train.log: every line from the run folder's lock on, the last error line included
        return _main(argv, log)


def _main(argv: list[str] | None, log: LogTee) -> int:
    cfg = None
    try:
        cfg = parse_config(argv)
        run(cfg, log)
    except PCLError as e:
        return report_error(e)
    except CollapseStop as e:  # --stop-on-collapse
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {e}; rerun with --resume auto and a remedy (e.g. a lower --lr)", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"interrupted: {_resume_hint(cfg) if cfg is not None else 'nothing was written'}", file=sys.stderr)
        return 130
    except Preempted as e:
        assert cfg is not None
        main_rank = os.environ.get("RANK", "0") == "0"
        if main_rank:
            print(f"stopped by {e}: {_resume_hint(cfg, e.checkpoint)}", file=sys.stderr)
        STOP.chain()  # the handler installed before ours, e.g. submitit's checkpoint + requeue (exits)
        if cfg.checkpoint.requeue and main_rank:
            print(slurm_requeue(), file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
