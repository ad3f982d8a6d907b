"""Engine stage: the generic training loop (:class:`Trainer`) around a method (:mod:`pcl.methods`).

One epoch of :meth:`Trainer.fit`::

    method.on_epoch_start(epoch, ctx)                 # PCL: the E-step (pcl.methods.pcl); MoCo v2: nothing
    for views, index in the training loader:          # M-step, Trainer.train_epoch
        Trainer.step: forward (autocast, DDP)         -> method(views, index): embeddings only
                      objective                       -> method.objective: loss + named terms and counts
                      backward (per micro-batch)      -> pcl.train.accum (--accum-steps)
                      grad norm, one sync             -> pcl.train.meters (pack by name, all-reduce)
                      finite? clip + optimizer step   -> else pcl.train.guard.NonFiniteGuard skips it
                      + method.after_step             -> momentum update, enqueue (only for an applied step)
        log every named term, health signals          -> pcl.run.tb, pcl.train.health
        mid-epoch checkpoint when due / on a signal   -> pcl.train.save_policy, pcl.train.signals
    kNN monitor                                       -> pcl.train.monitor.KnnMonitor
    TensorBoard, metrics.json, checkpoint             -> pcl.run.tb, pcl.run.metrics, pcl.run.checkpointer
"""

from __future__ import annotations

import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from pcl.analysis.cluster_metrics import has_classes
from pcl.methods.base import EpochContext, Method, StepClock
from pcl.model.bank import FeatureBank
from pcl.run.checkpoint import save_checkpoint, set_rng_state
from pcl.run.checkpointer import CheckpointConfig, Checkpointer, TrainState
from pcl.run.metrics import MetricsLog, peak_memory_mib
from pcl.run.run_dir import RunDir
from pcl.run.tb import TBLogger
from pcl.train.accum import Accumulator
from pcl.train.amp import autocast_factory, grad_scaler
from pcl.train.config import StepConfig, TrainConfig
from pcl.train.feature_map import FeatureMapMonitor
from pcl.train.guard import NonFiniteGuard, non_finite_terms
from pcl.train.health import CollapseStop, HealthMonitor, HealthPlan, RunRecipe, embedding_signals
from pcl.train.meters import EpochMeter, EpochStats, StepStats, pack_step, unpack_step
from pcl.train.monitor import KnnMonitor, MonitorConfig
from pcl.train.optim import clip_per_tensor_
from pcl.train.save_policy import SavePolicy
from pcl.train.signals import STOP, Preempted
from pcl.utils import distributed as pdist
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import NonFiniteError
from pcl.utils.logs import progress, say
from pcl.utils.timing import PhaseTimer


@dataclass
class EngineConfig:
    """The sections of the configuration the engine reads: the loop, the step, the run folder, the monitors."""

    train: TrainConfig
    step: StepConfig
    checkpoint: CheckpointConfig
    monitor: MonitorConfig
    warmup_epochs: int = 0  # recorded in metrics.json (the method's own schedule)
    recipe: RunRecipe | None = None  # optimizer, lr, warmup, batch: what the collapse advice quotes and changes

    @property
    def run_dir(self) -> RunDir:
        return self.checkpoint.run_dir


@dataclass
class Loaders:
    """``train``: batches ``(views, index)``; ``estep``: eval view of the train images, this rank's part;
    ``knn_train`` / ``knn_eval``: full train and val sets (eval view) for the kNN monitor, rank 0 only;
    ``train_labels``: the train set's class labels ``(N,)``, rank 0 only, None when unlabeled;
    ``data_identity``: count and hash of the resolved training file list, checkpointed so a resume can compare."""

    train: DataLoader
    estep: DataLoader
    num_train: int
    knn_train: DataLoader | None = None
    knn_eval: DataLoader | None = None
    train_labels: torch.Tensor | None = None
    eval_labels: torch.Tensor | None = None
    num_classes: int = 0
    data_identity: dict | None = None  # the training images' {"count", "sha256", "form"} (sources.ImageSet)


class Trainer:
    """Runs the loop (:meth:`fit`) of a built method (``model``: it, or its DDP wrapper), optimizer, scheduler and
    loaders. It owns the training state (counters, GradScaler) and writes the run folder's TensorBoard logs,
    ``metrics.json`` and checkpoints (``config``: the resolved configuration they record)."""

    def __init__(
        self,
        cfg: EngineConfig,
        method: Method,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loaders: Loaders,
        info: DistInfo,
        config: dict,
    ) -> None:
        self.cfg, self.method, self.model, self.optimizer, self.scheduler = cfg, method, model, optimizer, scheduler
        self.loaders, self.info, self.device = loaders, info, info.device
        self.autocast = autocast_factory(self.device, cfg.step.amp)
        self.scaler = grad_scaler(self.device, cfg.step.amp)
        self.state, self.run_dir = TrainState(), cfg.run_dir
        self.tb = TBLogger(self.run_dir.tb, enabled=info.is_main)
        t = cfg.train
        self.metrics = MetricsLog(self.run_dir.metrics, t.epochs, cfg.warmup_epochs, enabled=info.is_main)
        self.epoch_scalars: dict[str, float] = {}  # this epoch's scalars logged at step = epoch (metrics.json)
        self.timer = PhaseTimer(self.device)  # per-epoch time/<part>_seconds scalars
        self.params = [p for p in method.parameters() if p.requires_grad]
        self.passes = Accumulator(method, model, self.autocast, self.scaler.scale, cfg.step.accum_steps)
        # mid-epoch resume: steps already done in epoch ``state.epoch``, that epoch's meter, the RNG to restore
        # once the epoch's loader iterator exists (creating it draws from the RNG)
        self.position, self.resumed_meter, self.pending_rng = 0, None, None
        self.policy = SavePolicy(cfg.checkpoint.save_every_steps, cfg.checkpoint.save_every_minutes)
        self.guard = NonFiniteGuard(cfg.step.max_bad_steps, show=info.is_main)
        plan = HealthPlan.for_schedule(self.steps_per_epoch, t.print_freq)
        warn = (lambda line: say(line, err=True)) if info.is_main else (lambda line: None)
        self.health = HealthMonitor.for_method(method, plan, cfg.recipe, warn)
        self.monitor = KnnMonitor(cfg.monitor, method, loaders, info, self.autocast, t.epochs)
        self.feature_map = FeatureMapMonitor(cfg.monitor, method, loaders, info, self.autocast)
        self.last_epoch: dict[str, float] = {}  # the last finished epoch's scalars (the end-of-run summary)
        self.checkpointer = Checkpointer(
            self.run_dir, method, optimizer, scheduler, self.scaler, info, config, cfg.checkpoint.save_freq, t.epochs
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, step_in_epoch: int = 0, meter: EpochMeter | None = None) -> Path:
        """Write ``last.pth`` (and at an epoch end the kept numbered one) through the checkpointer; collective.

        Mid-epoch (``step_in_epoch`` > 0): also the steps done in epoch ``epoch`` and that epoch's meter.
        """
        mid = (vars(meter).copy(), dict(self.epoch_scalars), dict(self.timer.seconds)) if step_in_epoch else ()
        extra = self.method.extra_state()
        state = self.checkpointer.state(self.state, self.loaders.num_train, extra, step_in_epoch, *mid)
        state["data_identity"] = self.loaders.data_identity  # checked by a resume (resume_check)
        path = self.checkpointer.save(state)
        self.method.after_save()
        self.policy.reset()
        return path

    def resume(self, path: Path, ckpt: dict | None = None) -> None:
        """Restore everything :meth:`save` wrote; rank 0 reads the file (or passes ``ckpt``) and sends it on."""
        r = self.checkpointer.restore(path, ckpt, self.cfg.train.seed)
        self.state, self.position = r.state, r.step_in_epoch
        self.resumed_meter, self.pending_rng = r.epoch_meter, r.pending_rng
        self.epoch_scalars, self.timer.seconds = dict(r.epoch_scalars or {}), dict(r.epoch_timer or {})
        self.method.load_extra_state(r.extra, self.device)

    # ------------------------------------------------------------------ one step
    def step(self, views: list[torch.Tensor], index: torch.Tensor) -> StepStats:
        """One optimizer step on a batch (``views``: list of ``(B, 3, H, W)``, ``index (B,)``): forward, losses,
        backward (per ``--accum-steps`` micro-batch, :mod:`pcl.train.accum`), one host sync for every logged value
        (reduced over ranks), then the guard: a finite step is applied (clipping, optimizer, ``method.after_step``),
        a non-finite one changes nothing. Returns the step's values; ``bad`` names the non-finite terms of a
        skipped step, ``stop`` is set past the limit.
        The method learns the step first (``method.on_step_start``: its schedules follow the global step)."""
        self.method.on_step_start(StepClock(self.state.global_step, self.state.epoch, self.steps_per_epoch))
        fmt = torch.channels_last if self.cfg.step.channels_last else torch.contiguous_format
        views = [v.to(self.device, non_blocking=True, memory_format=fmt) for v in views]
        index = index.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        step = self.passes.run(views, index)
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)  # before clipping: logged and checked
        measure = step.embedding is not None and self.health.plan.measures(self.state.global_step)
        health = embedding_signals(step.embedding) if measure else None  # health.py
        packed = pack_step(step, grad_norm, health)
        lr = self.optimizer.param_groups[0]["lr"]
        stats = unpack_step(pdist.all_reduce_sum(packed).tolist(), step, self.info.world, lr)
        stats.bad = non_finite_terms(stats, self.method)
        if stats.bad:
            self.state.skipped_steps += 1
            stats.stop = self.guard.skip(stats, self.state.global_step, self.scaler)
            return stats
        clip = self.cfg.step.clip_grad
        if clip is not None and self.cfg.step.clip_mode == "tensor":
            clip_per_tensor_(grads, clip)
        elif clip is not None:
            torch.nn.utils.clip_grads_with_norm_(grads, clip, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step(step)
        self.guard.applied()
        return stats

    def _log_step(self, step: StepStats) -> None:
        """Per-step TensorBoard scalars; losses, accuracies and grad norm only for applied steps."""
        scalars = {"train/lr": step.lr, "train/skipped_steps": float(self.state.skipped_steps)}
        groups = self.optimizer.param_groups
        if len(groups) > 1:
            scalars.update({f"train/lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(groups)})
        if self.scaler.is_enabled():
            scalars["train/amp_scale"] = self.scaler.get_scale()
        if not step.bad:  # the health monitor warns once (stderr) when the run shows a collapse (health.py)
            scalars.update(step.scalars())
            scalars.update(self.health.observe_step(self.state.global_step, step))
        self.tb.scalars(scalars, self.state.global_step)

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> EpochStats:
        """One pass over the training set; starts after ``self.position`` steps when resuming mid-epoch."""
        self.model.train()
        sampler = self.loaders.train.sampler
        sampler.set_epoch(epoch)
        done, self.position = self.position, 0
        sampler.skip = done * self.loaders.train.batch_size
        meter, t0 = EpochMeter.restore(self.resumed_meter), time.time()
        self.resumed_meter = None
        batches = iter(self.loaders.train)  # draws the epoch's loader seed from the RNG
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)
            self.pending_rng = None
        show = self.info.is_main
        bar = progress(batches, f"epoch {epoch}", self.steps_per_epoch, show, initial=done)  # terminal only
        for views, index in self.timer.timed_iter(bar, "mstep_data_wait"):
            step = self.step(views, index)
            meter.add(step)
            self._log_step(step)
            if step.stop:
                self.tb.flush()
                raise NonFiniteError(step.stop)
            self.state.global_step += 1
            with warnings.catch_warnings():  # the schedule follows steps, skipped ones too
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                self.scheduler.step()
            if show and self.state.global_step % self.cfg.train.print_freq == 0:
                accs = {n: f"{meter.mean(n):.1f}" for n in self.method.summary_terms()[:1]}
                bar.set_postfix(loss=f"{meter.mean('loss'):.3f}", **accs)
            done += 1
            self._maybe_save_mid_epoch(done, meter)
        pdist.broadcast_buffers(self.method)  # rank 0's BN statistics, as the checkpoint stores them
        return meter.stats(time.time() - t0)

    @property
    def steps_per_epoch(self) -> int:
        train = self.loaders.train  # None: a trainer for single steps (tools/bench_step.py)
        return 0 if train is None else train.sampler.num_samples // train.batch_size

    def _maybe_save_mid_epoch(self, done: int, meter: EpochMeter) -> None:
        """After step ``done`` of the epoch: a mid-epoch checkpoint when ``--save-every-*`` says so, a stop
        signal arrived (on any rank) or ``--stop-on-collapse`` found a collapse (every rank sees the same reduced
        signals); then ``Preempted`` / ``CollapseStop`` once it is written."""
        save, stop = self.policy.due(done, STOP.requested, self.info.world, self.device)
        collapsed = self.cfg.step.stop_on_collapse and self.health.collapse
        if not (save or collapsed) or (done == self.steps_per_epoch and not (stop or collapsed)):
            return  # the epoch-end checkpoint follows anyway
        self.tb.flush()
        path = self.save(step_in_epoch=done, meter=meter)
        if collapsed:
            raise CollapseStop(f"{path} (epoch {self.state.epoch}, step {done})")
        if stop:
            raise Preempted(STOP.signum or signal.SIGTERM, f"{path} (epoch {self.state.epoch}, step {done})")

    # ------------------------------------------------------------------ the method's epoch hook
    def epoch_start(self, epoch: int) -> None:
        """The method's work before epoch ``epoch`` (PCL's E-step), its scalars logged at step ``epoch``; when
        epoch ``epoch - 1``'s kNN monitor was deferred, also that monitor on the bank of the same pass (logged at
        step ``epoch - 1``, timed as this epoch's ``knn``)."""
        deferred = self.monitor.deferred(epoch - 1)
        ctx = self._epoch_context(epoch, FeatureBank(self.loaders.num_train) if deferred else None)
        with STOP.stop_at_once():  # nothing resumable inside the epoch hook: a signal stops it at once
            scalars = self.method.on_epoch_start(epoch, ctx)
        self.tb.scalars(scalars, epoch)
        self.epoch_scalars.update(scalars)
        if not deferred:
            return
        with self.timer.phase("knn"):
            knn = self.monitor.evaluate(ctx.bank.tensor())
        if knn is not None:
            self.tb.scalars({"eval/knn_top1": knn}, epoch - 1)
            self.metrics.update(epoch - 1, {"eval/knn_top1": knn})
            say(f"kNN monitor of epoch {epoch - 1}: knn_top1 {knn:.2f} (key encoder, bank from epoch {epoch}'s pass)")

    def _epoch_context(self, epoch: int, bank: FeatureBank | None) -> EpochContext:
        """What the method's epoch hook of ``epoch`` may use (labels, pictures and saved results on rank 0 only)."""
        ld, mon, main = self.loaders, self.cfg.monitor, self.info.is_main
        labels = ld.train_labels if mon.cluster_metrics and main and has_classes(ld.train_labels) else None
        gallery = mon.log_cluster_images if main else 0
        ctx = EpochContext(ld.estep, ld.num_train, self.info, self.autocast, self.timer, labels, bank, gallery=gallery)
        if gallery:
            ctx.log_image = lambda tag, image: self.tb.image(tag, image, epoch)
        if main:
            ctx.save = lambda state: save_checkpoint(state, self.run_dir.clusters_file(epoch))
        return ctx

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> float | None:
        """Train from ``state.epoch`` to ``--epochs``; returns the last kNN top-1 (or None)."""
        t, knn = self.cfg.train, None
        start = self.state.epoch
        end = t.epochs if stop_after is None else min(t.epochs, start + stop_after)
        self.metrics.resume(start)
        self.policy.reset()
        for epoch in range(start, end):
            t_epoch = time.time()
            if not self.position:  # mid-epoch resume: the checkpoint holds this epoch's method state and scalars
                self.epoch_scalars = {}
                self.epoch_start(epoch)
            with self.timer.phase("mstep"):
                stats = self.train_epoch(epoch)
            knn_due = self.monitor.due(epoch, end)
            if knn_due:
                with self.timer.phase("knn"):
                    knn = self.monitor.evaluate()
            scalars = {**stats.scalars(), **self.timer.pop(), **self.health.pop_epoch()}
            if knn_due and knn is not None:
                scalars["eval/knn_top1"] = knn
            scalars.update(self.feature_map.log(epoch, self.tb))  # --feature-map-freq: TensorBoard's Images tab
            scalars["time/epoch_total_seconds"] = time.time() - t_epoch  # epoch hook + M-step + kNN monitor
            scalars.update({f"memory/{k}": v for k, v in peak_memory_mib(self.device).items()})
            self._end_epoch(epoch, scalars)
            self.last_epoch = dict(self.epoch_scalars)
            if self.info.is_main:  # one greppable line per epoch: "epoch N: loss ..."
                say(stats.line(epoch, self.method.summary_terms(), knn if "eval/knn_top1" in scalars else None))
        self.tb.close()
        return knn

    def _end_epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        """Log the epoch's scalars, record them in ``metrics.json`` and write the epoch-end checkpoint."""
        self.tb.scalars(scalars, epoch)
        self.tb.flush()
        self.epoch_scalars.update(scalars)
        # before the checkpoint (a resume redoes this epoch), not yet complete: the final checkpoint must exist
        self.metrics.add(epoch, self.epoch_scalars, checkpointed=False)
        self.state.epoch = epoch + 1
        with self.timer.phase("checkpoint"):
            self.save()
        ckpt_time = self.timer.pop()  # time/checkpoint_seconds
        self.tb.scalars(ckpt_time, epoch)
        self.epoch_scalars.update(ckpt_time)
        self.metrics.add(epoch, self.epoch_scalars)  # the same record, now with the checkpoint's time
