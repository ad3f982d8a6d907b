"""Engine stage: the EM loop of PCL and its M-step, in :class:`Trainer`.

One epoch of :meth:`Trainer.fit`::

    if epoch >= --warmup-epochs:                      # E-step, Trainer.estep
        momentum features of every training image     -> pcl.estep.estep.run_estep (disk shards)
        k-means per granularity, prototypes, phi      -> pcl.estep.clustering (train_kmeans, assign, concentration)
    for batch in the training loader:                 # M-step, Trainer.train_epoch
        embeddings q, k (and the cluster head's)      -> pcl.model.builder.PCL.forward
        InfoNCE + mean ProtoNCE                       -> pcl.losses.objective.pcl_objective
        finite? step + momentum update + enqueue      -> Trainer._apply; else pcl.train.guard.NonFiniteGuard
        health signals, finite-collapse warning       -> pcl.train.health (every --print-freq steps)
        mid-epoch checkpoint when due / on a signal   -> pcl.train.save_policy, pcl.train.signals
    kNN monitor                                       -> pcl.train.monitor.KnnMonitor (pcl.analysis.knn)
    TensorBoard, metrics.json, checkpoint             -> pcl.run.tb, pcl.run.metrics, pcl.run.checkpointer
"""

from __future__ import annotations

import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pcl.analysis.cluster_metrics import cluster_scalars
from pcl.config import Config, to_dict
from pcl.estep.clustering import ClusterResult, Granularity
from pcl.estep.estep import run_estep
from pcl.estep.feature_store import FeatureStore
from pcl.losses.objective import pcl_objective
from pcl.model.bank import FeatureBank
from pcl.model.builder import PCL
from pcl.run.checkpoint import save_checkpoint, set_rng_state
from pcl.run.checkpointer import Checkpointer, TrainState
from pcl.run.metrics import MetricsLog, peak_memory_mib
from pcl.run.tb import TBLogger
from pcl.train.amp import autocast_factory, grad_scaler
from pcl.train.cluster_images import gallery_images
from pcl.train.guard import NonFiniteGuard, non_finite_terms
from pcl.train.health import CollapseStop, HealthMonitor, embedding_signals
from pcl.train.meters import EpochMeter, EpochStats, StepResult
from pcl.train.monitor import KnnMonitor
from pcl.train.save_policy import SavePolicy
from pcl.train.signals import STOP, Preempted
from pcl.utils import distributed as pdist
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import NonFiniteError
from pcl.utils.timing import PhaseTimer


@dataclass
class Loaders:
    """``train``: two-crop views with indices; ``estep``: eval view of the train images, this rank's part;
    ``knn_train`` / ``knn_eval``: full train and val sets (eval view) for the kNN monitor, rank 0 only;
    ``class_labels``: the train set's class labels ``(N,)`` for cluster metrics, rank 0 only, None without;
    ``data_identity``: count and hash of the resolved training file list, checkpointed so a resume can compare."""

    train: DataLoader
    estep: DataLoader
    num_train: int
    knn_train: DataLoader | None = None
    knn_eval: DataLoader | None = None
    train_labels: torch.Tensor | None = None
    eval_labels: torch.Tensor | None = None
    num_classes: int = 0
    class_labels: torch.Tensor | None = None
    data_identity: dict | None = None  # the training images' {"count", "sha256", "form"} (sources.ImageSet)


class Trainer:
    """Runs the EM loop (:meth:`fit`) over a built model, optimizer, scheduler and loaders.

    It owns the training state (counters, cluster result, GradScaler) and writes the run directory's
    TensorBoard logs, checkpoints and cluster files through ``cfg.run_dir`` (:class:`pcl.run.run_dir.RunDir`).
    """

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loaders: Loaders,
        info: DistInfo,
    ) -> None:
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.loaders, self.info = loaders, info
        self.raw: PCL = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.device = info.device
        self.autocast = autocast_factory(self.device, cfg.train.amp)
        self.scaler = grad_scaler(self.device, cfg.train.amp)
        self.state = TrainState()
        self.cluster_result: ClusterResult | None = None
        self.run_dir = cfg.run_dir
        self.tb = TBLogger(self.run_dir.tb, enabled=info.is_main)
        t = cfg.train
        self.metrics = MetricsLog(self.run_dir.metrics, t.epochs, t.warmup_epochs, enabled=info.is_main)
        self.epoch_scalars: dict[str, float] = {}  # this epoch's scalars logged at step = epoch (metrics.json)
        self.timer = PhaseTimer(self.device)  # per-epoch time/<part>_seconds scalars
        self.params = [p for p in self.raw.parameters() if p.requires_grad]
        # mid-epoch resume: steps already done in epoch ``state.epoch``, that epoch's meter, the RNG to restore
        # once the epoch's loader iterator exists (creating it draws from the RNG)
        self.position, self.resumed_meter, self.pending_rng = 0, None, None
        self.policy = SavePolicy(t.save_every_steps, t.save_every_minutes)
        self.guard = NonFiniteGuard(t.max_bad_steps, show=info.is_main)
        self.health = HealthMonitor(cfg.model.low_dim, cfg.model.pcl_r)
        self.monitor = KnnMonitor(t, self.raw, loaders, info, self.autocast)
        self.checkpointer = Checkpointer(
            self.run_dir, self.raw, optimizer, scheduler, self.scaler, info, to_dict(cfg), t.save_freq, t.epochs
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, step_in_epoch: int = 0, meter: EpochMeter | None = None) -> Path:
        """Write ``last.pth`` (and at an epoch end the kept numbered one) through the checkpointer; collective.

        Mid-epoch (``step_in_epoch`` > 0): also the steps done in epoch ``epoch`` and that epoch's meter.
        """
        cluster = None if self.cluster_result is None else self.cluster_result.state_dict()
        mid = (vars(meter).copy(), dict(self.epoch_scalars), dict(self.timer.seconds)) if step_in_epoch else ()
        state = self.checkpointer.state(self.state, self.loaders.num_train, cluster, step_in_epoch, *mid)
        state["data_identity"] = self.loaders.data_identity  # checked by a resume (resume_check)
        path = self.checkpointer.save(state)
        self.policy.reset()
        return path

    def resume(self, path: Path, ckpt: dict | None = None) -> None:
        """Restore everything :meth:`save` wrote; rank 0 reads the file (or passes ``ckpt``) and sends it on."""
        r = self.checkpointer.restore(path, ckpt, self.cfg.train.seed)
        self.state, self.position = r.state, r.step_in_epoch
        self.resumed_meter, self.pending_rng = r.epoch_meter, r.pending_rng
        self.epoch_scalars, self.timer.seconds = dict(r.epoch_scalars or {}), dict(r.epoch_timer or {})
        if r.cluster_result is not None:
            self.cluster_result = ClusterResult.from_state_dict(r.cluster_result).to(self.device)

    # ------------------------------------------------------------------ E-step
    def estep(self, epoch: int, bank: FeatureBank | None = None) -> ClusterResult:
        """Cluster the momentum features of every training image (all granularities) for ``epoch``; logs the
        cluster statistics and, with ``--save-clusters``, writes the result to the run directory.

        ``--kmeans-init previous`` starts from ``self.cluster_result`` (the previous E-step's, also after a
        resume). ``bank``: filled with the momentum backbone's features in the same pass (the kNN monitor's)."""
        self.model.eval()
        t0 = time.time()
        fn = self.raw.cluster_features if bank is None else self.raw.cluster_and_bank_features
        with STOP.stop_at_once():  # nothing resumable inside the E-step: a signal stops it at once
            m, ld = self.cfg.model, self.loaders
            args = (ld.estep, ld.num_train, m.low_dim, self.cfg.estep, self.info, epoch, m.temperature)
            hook = self._log_cluster_images if self.cfg.train.log_cluster_images and self.info.is_main else None
            result = run_estep(
                fn, *args, self.autocast, self.timer, previous=self.cluster_result, bank=bank, on_clustered=hook
            )
        self.model.train()
        scalars = {f"cluster/k{g.k}/{name}": v for g in result.levels for name, v in g.stats.items()}
        scalars["time/estep_seconds"] = time.time() - t0
        if self.loaders.class_labels is not None and self.info.is_main:
            t1 = time.time()
            scalars.update(cluster_scalars(result, self.loaders.class_labels))
            scalars["time/cluster_metrics_seconds"] = time.time() - t1
        self.tb.scalars(scalars, epoch)
        self.epoch_scalars.update(scalars)
        if self.cfg.train.save_clusters and self.info.is_main:
            save_checkpoint(result.state_dict(), self.run_dir.clusters_file(epoch))
        return result

    def _log_cluster_images(self, store: FeatureStore, result: ClusterResult) -> None:
        """``--log-cluster-images N``: each granularity's gallery to TensorBoard (rank 0, from the E-step's shards)."""
        n = self.cfg.train.log_cluster_images
        for tag, image in gallery_images(result, store.shards, self.loaders.estep.dataset, n).items():
            self.tb.image(tag, image, result.epoch)

    # ------------------------------------------------------------------ M-step
    def train_epoch(self, epoch: int, clusters: ClusterResult | None) -> EpochStats:
        """One pass over the training set; ProtoNCE on every granularity of ``clusters`` when given.

        Starts after ``self.position`` steps when resuming a mid-epoch checkpoint.
        """
        self.model.train()
        levels = clusters.levels if clusters is not None else []
        sampler = self.loaders.train.sampler
        sampler.set_epoch(epoch)
        done, self.position = self.position, 0
        sampler.skip = done * self.loaders.train.batch_size
        meter, t0 = EpochMeter(**(self.resumed_meter or {})), time.time()
        self.resumed_meter = None
        batches = iter(self.loaders.train)  # draws the epoch's loader seed from the RNG
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)
            self.pending_rng = None
        show = self.info.is_main
        bar = tqdm(batches, f"epoch {epoch}", self.steps_per_epoch, disable=not show, leave=False, initial=done)
        for (im_q, im_k), index in self.timer.timed_iter(bar, "mstep_data_wait"):
            step, keys, grads, grad_norm = self._forward_backward(im_q, im_k, index, levels)
            stop = self._skip(step) if step.bad else self._apply(keys, grads, grad_norm)
            meter.add(step)
            self._log_step(step)
            if stop:
                self.tb.flush()
                raise NonFiniteError(stop)
            self.state.global_step += 1
            with warnings.catch_warnings():  # the schedule follows steps, skipped ones too
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                self.scheduler.step()
            if self.info.is_main and self.state.global_step % self.cfg.train.print_freq == 0:
                bar.set_postfix(loss=f"{meter.loss:.3f}", acc_inst=f"{meter.acc_inst:.1f}")
            done += 1
            self._maybe_save_mid_epoch(done, meter)
        pdist.broadcast_buffers(self.raw)  # rank 0's BN statistics, as the checkpoint stores them
        return meter.stats(time.time() - t0, proto=bool(levels))

    @property
    def steps_per_epoch(self) -> int:
        return self.loaders.train.sampler.num_samples // self.loaders.train.batch_size

    def _maybe_save_mid_epoch(self, done: int, meter: EpochMeter) -> None:
        """After step ``done`` of the epoch: a mid-epoch checkpoint when ``--save-every-*`` says so, a stop
        signal arrived (on any rank) or ``--stop-on-collapse`` found a collapse (every rank sees the same reduced
        signals); then ``Preempted`` / ``CollapseStop`` once it is written."""
        save, stop = self.policy.due(done, STOP.requested, self.info.world, self.device)
        collapsed = self.cfg.train.stop_on_collapse and self.health.collapse
        if not (save or collapsed) or (done == self.steps_per_epoch and not (stop or collapsed)):
            return  # the epoch-end checkpoint follows anyway
        self.tb.flush()
        path = self.save(step_in_epoch=done, meter=meter)
        if collapsed:
            raise CollapseStop(f"{path} (epoch {self.state.epoch}, step {done})")
        if stop:
            raise Preempted(STOP.signum or signal.SIGTERM, f"{path} (epoch {self.state.epoch}, step {done})")

    def _forward_backward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, index: torch.Tensor, levels: list[Granularity]
    ) -> tuple[StepResult, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Losses and gradients of one batch, with one host sync for all logged values (summed over ranks).

        Returns the step's values, the keys ``(B, d)`` to enqueue, the gradients and their total norm.
        """
        m, dev = self.cfg.model, self.device
        fmt = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        im_q = im_q.to(dev, non_blocking=True, memory_format=fmt)
        im_k = im_k.to(dev, non_blocking=True, memory_format=fmt)
        index = index.to(dev, non_blocking=True)
        with self.autocast():
            emb = self.model(im_q, im_k, with_cluster=bool(levels))
        k = emb.k.float()  # losses, the prototype softmax and the queue stay float32 under autocast
        t = self.cfg.train
        obj = pcl_objective(emb.q.float(), k, self.raw.queue, emb.q_cluster.float(), index, levels,
                            m.temperature, m.pcl_r, t.fixed_concentration, t.proto_weight)  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(obj.total).backward()
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)  # before clipping: logged and checked
        hits_inst = (obj.logits.argmax(dim=1) == 0).sum()
        health = embedding_signals(emb.q) if self.state.global_step % t.print_freq == 0 else None  # health.py
        packed = StepResult.pack(obj.inst, obj.protos, grad_norm, hits_inst, im_q.shape[0], health)
        lr, weight, n = self.optimizer.param_groups[0]["lr"], t.proto_weight, len(levels)
        step = StepResult.unpack(pdist.all_reduce_sum(packed).tolist(), n, self.info.world, lr, weight)
        step.bad = non_finite_terms(step, ["InfoNCE", *[f"ProtoNCE k={g.k}" for g in levels]], self.raw)
        return step, k, grads, grad_norm

    def _apply(self, keys: torch.Tensor, grads: list[torch.Tensor], grad_norm: torch.Tensor) -> str:
        """A finite step: clip, optimizer step, momentum update, enqueue the keys."""
        clip = self.cfg.optim.clip_grad
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(grads, clip, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.raw.momentum_update()
        self.raw.enqueue(keys)
        self.guard.applied()
        return ""

    def _skip(self, step: StepResult) -> str:
        """A non-finite step: no update at all; counted and reported (:mod:`pcl.train.guard`); returns the stop
        message past ``--max-bad-steps``."""
        self.state.skipped_steps += 1
        return self.guard.skip(step, self.state.global_step, self.scaler)

    def _log_step(self, step: StepResult) -> None:
        """Per-step TensorBoard scalars; losses, accuracies and grad norm only for applied steps."""
        scalars = {"train/lr": step.lr, "train/skipped_steps": float(self.state.skipped_steps)}
        groups = self.optimizer.param_groups
        if len(groups) > 1:
            scalars.update({f"train/lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(groups)})
        if self.scaler.is_enabled():
            scalars["train/amp_scale"] = self.scaler.get_scale()
        if not step.bad:
            scalars.update(step.scalars())
        if step.health and not step.bad:
            scalars.update(self.health.observe(*step.health, step.inst))
            warning = self.health.warning(self.state.global_step, scalars)
            if warning and self.info.is_main:
                tqdm.write(warning, file=sys.stderr)
        self.tb.scalars(scalars, self.state.global_step)

    # ------------------------------------------------------------------ kNN monitor
    def _estep_with_deferred_knn(self, epoch: int) -> ClusterResult:
        """The E-step of ``epoch``; when epoch ``epoch - 1``'s monitor was deferred, also its kNN on the bank of
        the same pass (logged at step ``epoch - 1``, timed as this epoch's ``knn``)."""
        if not self.monitor.deferred(epoch - 1):
            return self.estep(epoch)
        bank = FeatureBank(self.loaders.num_train)
        result = self.estep(epoch, bank)
        with self.timer.phase("knn"):
            knn = self.monitor.evaluate(bank.tensor())
        if knn is not None:
            self.tb.scalars({"eval/knn_top1": knn}, epoch - 1)
            self.metrics.update(epoch - 1, {"eval/knn_top1": knn})
            tqdm.write(f"epoch {epoch - 1}: knn_top1 {knn:.2f} (key encoder, bank from epoch {epoch}'s E-step pass)")
        return result

    # ------------------------------------------------------------------ the EM loop
    def fit(self, stop_after: int | None = None) -> float | None:
        """Train from ``state.epoch`` to ``--epochs``; returns the last kNN top-1 (or None)."""
        t, knn = self.cfg.train, None
        start = self.state.epoch
        end = t.epochs if stop_after is None else min(t.epochs, start + stop_after)
        self.metrics.resume(start)
        self.policy.reset()
        for epoch in range(start, end):
            t_epoch = time.time()
            if not self.position:  # mid-epoch resume: the checkpoint holds this epoch's clusters and scalars
                self.epoch_scalars = {}
                self.cluster_result = self._estep_with_deferred_knn(epoch) if epoch >= t.warmup_epochs else None
            with self.timer.phase("mstep"):
                stats = self.train_epoch(epoch, self.cluster_result)
            knn_due = bool(t.knn_freq) and ((epoch + 1) % t.knn_freq == 0 or epoch + 1 == end)
            knn_due = knn_due and not self.monitor.deferred(epoch)
            if knn_due:
                with self.timer.phase("knn"):
                    knn = self.monitor.evaluate()
            proto = self.cluster_result is not None
            scalars = {**stats.scalars(proto), **self.timer.pop(), **self.health.pop_epoch()}
            if knn_due and knn is not None:
                scalars["eval/knn_top1"] = knn
            scalars["time/epoch_total_seconds"] = time.time() - t_epoch  # E-step + M-step + kNN monitor
            scalars.update({f"memory/{k}": v for k, v in peak_memory_mib(self.device).items()})
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
            if self.info.is_main:
                tqdm.write(stats.line(epoch, proto, knn if "eval/knn_top1" in scalars else None))
        self.tb.close()
        return knn
