"""Engine stage: the EM loop. Per epoch: E-step (after warmup), M-step, kNN monitor, logging, checkpoint."""

from __future__ import annotations

import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pcl.config import Config, to_dict
from pcl.estep.clustering import ClusterResult, Granularity
from pcl.estep.estep import run_estep
from pcl.eval.cluster_metrics import cluster_scalars
from pcl.eval.features import extract
from pcl.eval.knn import knn_top1
from pcl.losses import info_nce, proto_nce
from pcl.model.builder import PCL
from pcl.run.checkpoint import link_or_save, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pcl.run.metrics import MetricsLog, peak_memory_mib
from pcl.run.resume_check import apply_hyperparams, snapshot_hyperparams
from pcl.run.tb import TBLogger
from pcl.train.amp import autocast_factory, grad_scaler
from pcl.train.meters import EpochMeter, EpochStats, StepResult
from pcl.train.save_policy import SavePolicy
from pcl.train.signals import STOP, Preempted
from pcl.utils import distributed as pdist
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import NonFiniteError
from pcl.utils.timing import PhaseTimer

REMEDIES = (
    "lower --lr or add --lr-warmup-epochs; try --clip-grad 1.0; use --amp bf16 or off instead of fp16; "
    "for lamb/lars try --exclude-bn-bias; or fall back to --optimizer sgd-cos"
)


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


@dataclass
class TrainState:
    """Counters that persist across epochs and are checkpointed."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    skipped_steps: int = 0
    consecutive_bad: int = 0


def total_loss(inst: torch.Tensor, protos: list[torch.Tensor], proto_weight: float = 1.0) -> torch.Tensor:
    """InfoNCE + ``proto_weight`` x the mean of the ProtoNCE losses over granularities (all scalars).

    With weight 1 this is the official ``loss = InfoNCE + mean_m ProtoNCE_m`` (same operations, same rounding);
    without granularities it is InfoNCE.
    """
    if not protos:
        return inst
    proto = torch.stack(protos).mean()
    return inst + proto if proto_weight == 1.0 else inst + proto_weight * proto


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
        self.cfg, self.model, self.optimizer, self.scheduler, self.loaders, self.info = (
            cfg,
            model,
            optimizer,
            scheduler,
            loaders,
            info,
        )
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
        self.policy = SavePolicy(cfg.train.save_every_steps, cfg.train.save_every_minutes)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, step_in_epoch: int = 0, meter: EpochMeter | None = None) -> dict:
        """Everything needed to continue bit-identically: counters, model (queue included), optimizer,
        scheduler, scaler, cluster result, every rank's RNG states, and the configuration (``asdict``).

        Mid-epoch (``step_in_epoch`` > 0): also the steps done in epoch ``epoch`` and that epoch's meter.
        Collective under DDP (gathers the RNG states): every rank must call it.
        """
        rngs = pdist.all_gather_object(rng_state())
        return {
            "epoch": self.state.epoch,
            "step_in_epoch": step_in_epoch,
            "epoch_meter": None if meter is None else vars(meter).copy(),
            "num_train": self.loaders.num_train,
            "data_identity": self.loaders.data_identity,
            "global_step": self.state.global_step,
            "skipped_steps": self.state.skipped_steps,
            "model": self.raw.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "cluster_result": None if self.cluster_result is None else self.cluster_result.state_dict(),
            "rng": rngs,
            "world": self.info.world,
            "config": to_dict(self.cfg),
        }

    def numbered(self, epoch: int) -> Path | None:
        """The kept ``checkpoint_XXXX.pth`` after ``epoch`` completed epochs (every ``--save-freq`` and the
        last), or None."""
        t = self.cfg.train
        return self.run_dir.checkpoint(epoch) if epoch % t.save_freq == 0 or epoch == t.epochs else None

    def save(self, step_in_epoch: int = 0, meter: EpochMeter | None = None) -> Path:
        """Write ``last.pth`` from rank 0, atomically; all ranks wait for it. At an epoch end the kept
        ``checkpoint_XXXX.pth`` is written first and ``last.pth`` made from it, so a kill between the two
        cannot lose the numbered one."""
        state = self.checkpoint_state(step_in_epoch, meter)  # collective: every rank takes part
        last = self.run_dir.last
        if self.info.is_main:
            numbered = None if step_in_epoch else self.numbered(self.state.epoch)
            if numbered is not None:
                save_checkpoint(state, numbered)
                link_or_save(numbered, last, state)
            else:
                save_checkpoint(state, last)
        self.policy.reset()
        pdist.barrier()
        return last

    def resume(self, path: Path, ckpt: dict | None = None) -> None:
        """Restore everything ``save`` wrote; rank 0 reads the file (or passes ``ckpt``) and sends it on.

        The new configuration's lr / wd / momentum replace the stored ones (README, "Reliability").
        """
        if self.info.is_main and ckpt is None:
            ckpt = load_checkpoint(path)
        ckpt = pdist.broadcast_object(ckpt if self.info.is_main else None)
        fresh = snapshot_hyperparams(self.optimizer, self.scheduler)
        self.raw.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        changes = apply_hyperparams(self.optimizer, self.scheduler, fresh)
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(ckpt["epoch"], ckpt["global_step"], ckpt["skipped_steps"])
        if ckpt["cluster_result"] is not None:
            self.cluster_result = ClusterResult.from_state_dict(ckpt["cluster_result"]).to(self.device)
        self.position = ckpt.get("step_in_epoch", 0)
        self.resumed_meter = ckpt.get("epoch_meter")
        rngs = ckpt["rng"]
        rng = rngs[self.info.rank] if len(rngs) == self.info.world else None
        if rng is None:  # different number of processes: continue with fresh, rank-dependent seeds
            torch.manual_seed(self.cfg.train.seed + 1000 * ckpt["epoch"] + self.info.rank)
        elif self.position:
            self.pending_rng = rng
        else:
            set_rng_state(rng)
        if self.info.is_main:
            where = f", {self.position} steps into epoch {ckpt['epoch']}" if self.position else ""
            print(f"resumed from {path}: {ckpt['epoch']} epochs done{where}, step {ckpt['global_step']}")
            for c in changes:
                print(f"resume: {c} applied from step {ckpt['global_step']} on")
            numbered = None if self.position else self.numbered(self.state.epoch)
            if numbered is not None and not numbered.exists() and self.state.epoch > 0:
                save_checkpoint(ckpt, numbered)  # lost by a kill between the two writes (older versions)
                print(f"recreated {numbered}")

    # ------------------------------------------------------------------ E-step
    def estep(self, epoch: int) -> ClusterResult:
        """Cluster the momentum features of every training image (all granularities) for ``epoch``; logs the
        cluster statistics and, with ``--save-clusters``, writes the result to the run directory."""
        self.model.eval()
        t0 = time.time()
        with STOP.stop_at_once():  # nothing resumable inside the E-step: a signal stops it at once
            result = run_estep(
                self.raw.cluster_features,
                self.loaders.estep,
                self.loaders.num_train,
                self.cfg.model.low_dim,
                self.cfg.estep,
                self.info,
                epoch,
                self.cfg.model.temperature,
                self.autocast,
                self.timer,
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
        return meter.stats(time.time() - t0, proto=bool(levels))

    @property
    def steps_per_epoch(self) -> int:
        return self.loaders.train.sampler.num_samples // self.loaders.train.batch_size

    def _maybe_save_mid_epoch(self, done: int, meter: EpochMeter) -> None:
        """After step ``done`` of the epoch: a mid-epoch checkpoint when ``--save-every-*`` says so or a stop
        signal arrived (on any rank); after a signal, ``Preempted`` once it is written."""
        save, stop = self.policy.due(done, STOP.requested, self.info.world, self.device)
        if not save or (done == self.steps_per_epoch and not stop):  # the epoch-end checkpoint follows anyway
            return
        self.tb.flush()
        path = self.save(step_in_epoch=done, meter=meter)
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
        loss_inst, logits = info_nce(emb.q.float(), k, self.raw.queue, m.temperature)
        protos = [
            proto_nce(emb.q_cluster.float(), g.im2cluster[index], g.centroids, self._phi(g), m.pcl_r) for g in levels
        ]
        loss = total_loss(loss_inst, [p[0] for p in protos], self.cfg.train.proto_weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)  # before clipping: logged and checked
        hits_inst = (logits.argmax(dim=1) == 0).sum()
        batch = torch.tensor(float(im_q.shape[0]), device=dev)
        packed = torch.stack(
            [
                loss_inst.detach(),
                *[p[0].detach() for p in protos],
                grad_norm.float(),
                hits_inst.float(),
                *[p[1].float() for p in protos],
                batch,
            ]
        )
        v = pdist.all_reduce_sum(packed).tolist()
        n, w = len(protos), self.info.world
        step = StepResult(
            inst=v[0] / w,
            protos=[x / w for x in v[1 : 1 + n]],
            grad_norm=v[1 + n] / w,
            hits_inst=v[2 + n],
            hits_proto=v[3 + n : 3 + 2 * n],
            batch=v[-1],
            lr=self.optimizer.param_groups[0]["lr"],
            proto_weight=self.cfg.train.proto_weight,
        )
        names = ["InfoNCE", *[f"ProtoNCE k={g.k}" for g in levels]]
        step.bad = [name for name, x in zip(names, [step.inst, *step.protos], strict=True) if not math.isfinite(x)]
        if not math.isfinite(step.grad_norm):
            step.bad.append(f"gradients (first: {self._first_non_finite_grad()})")
        return step, k, grads, grad_norm

    def _phi(self, g: Granularity) -> torch.Tensor:
        """Per-prototype temperatures ``(k,)``: the estimated concentration, or T for every prototype with
        ``--fixed-concentration`` (the PCL paper's ablation)."""
        if self.cfg.train.fixed_concentration:
            return torch.full_like(g.density, self.cfg.model.temperature)
        return g.density

    def _apply(self, keys: torch.Tensor, grads: list[torch.Tensor], grad_norm: torch.Tensor) -> str:
        """A finite step: clip, optimizer step, momentum update, enqueue the keys."""
        clip = self.cfg.optim.clip_grad
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(grads, clip, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.raw.momentum_update()
        self.raw.enqueue(keys)
        self.state.consecutive_bad = 0
        return ""

    def _skip(self, step: StepResult) -> str:
        """A non-finite step: no update at all; counted, reported; returns the stop message past the limit.

        fp16 gradient overflow with finite losses is GradScaler's normal back-off: skipped and counted,
        but it counts towards ``--max-bad-steps`` only once the scale cannot drop further.
        """
        st, scaler = self.state, self.scaler
        overflow_only = (
            len(step.bad) == 1
            and step.bad[0].startswith("gradients")
            and scaler.is_enabled()
            and scaler.get_scale() > 1
        )
        scaler.update()  # fp16: lowers the scale; otherwise a no-op
        st.skipped_steps += 1
        st.consecutive_bad += 0 if overflow_only else 1
        amp = f", amp_scale={scaler.get_scale():.4g}" if scaler.is_enabled() else ""
        diag = (
            f"step {st.global_step}: non-finite {', '.join(step.bad)} "
            f"(lr={step.lr:.4g}, grad_norm={step.grad_norm:.4g}{amp})"
        )
        if self.info.is_main:
            tqdm.write(f"{diag}; step skipped ({st.consecutive_bad} in a row)")
        limit = self.cfg.train.max_bad_steps
        if st.consecutive_bad >= limit and not overflow_only:
            return f"{limit} consecutive non-finite steps, last {diag}. Remedies: {REMEDIES}"
        return ""

    def _first_non_finite_grad(self) -> str:
        """Name of the first parameter whose gradient holds NaN/Inf (only called on a bad step)."""
        largest, where = 0.0, "none"
        for name, p in self.raw.named_parameters():
            if p.grad is None:
                continue
            if not bool(torch.isfinite(p.grad).all()):
                return name
            m = float(p.grad.abs().max())
            largest, where = (m, name) if m > largest else (largest, where)
        return f"none; all finite but the norm overflows, largest |grad| {largest:.3g} in {where}"

    def _log_step(self, step: StepResult) -> None:
        """Per-step TensorBoard scalars; losses, accuracies and grad norm only for applied steps."""
        scalars = {"train/lr": step.lr, "train/skipped_steps": float(self.state.skipped_steps)}
        groups = self.optimizer.param_groups
        if len(groups) > 1:
            scalars.update({f"train/lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(groups)})
        if self.scaler.is_enabled():
            scalars["train/amp_scale"] = self.scaler.get_scale()
        if not step.bad:
            scalars.update(
                {
                    "train/loss": step.loss,
                    "train/loss_inst": step.inst,
                    "train/acc_inst": 100.0 * step.hits_inst / step.batch,
                    "train/grad_norm": step.grad_norm,
                }
            )
            if step.protos:
                scalars["train/loss_proto"] = step.proto
                scalars["train/acc_proto"] = 100.0 * sum(step.hits_proto) / (step.batch * len(step.protos))
        self.tb.scalars(scalars, self.state.global_step)

    # ------------------------------------------------------------------ kNN monitor
    def evaluate(self) -> float | None:
        """Weighted kNN top-1 (%) of query-backbone features on the eval split; rank 0 only."""
        ld, t = self.loaders, self.cfg.train
        if ld.knn_eval is None or not self.info.is_main:
            return None
        self.model.eval()
        fn = self.raw.backbone_features
        bank = extract(fn, ld.knn_train, self.device, self.autocast, "kNN bank")
        test = extract(fn, ld.knn_eval, self.device, self.autocast, "kNN eval")
        self.model.train()
        return knn_top1(bank, ld.train_labels, test, ld.eval_labels, ld.num_classes, t.knn_k, t.knn_t)

    # ------------------------------------------------------------------ the EM loop
    def fit(self, stop_after: int | None = None) -> float | None:
        """Train from ``state.epoch`` to ``--epochs``; returns the last kNN top-1 (or None)."""
        t, knn = self.cfg.train, None
        start = self.state.epoch
        end = t.epochs if stop_after is None else min(t.epochs, start + stop_after)
        self.metrics.resume(start)
        self.policy.reset()
        for epoch in range(start, end):
            t_epoch, self.epoch_scalars = time.time(), {}
            if not self.position:  # mid-epoch resume: the checkpoint holds this epoch's cluster result
                self.cluster_result = self.estep(epoch) if epoch >= t.warmup_epochs else None
            with self.timer.phase("mstep"):
                stats = self.train_epoch(epoch, self.cluster_result)
            knn_due = bool(t.knn_freq) and ((epoch + 1) % t.knn_freq == 0 or epoch + 1 == end)
            if knn_due:
                with self.timer.phase("knn"):
                    knn = self.evaluate()
            scalars = {
                "epoch/acc_inst": stats.acc_inst,
                "epoch/loss": stats.loss,
                "epoch/skipped_steps": float(stats.skipped),
                "time/epoch_seconds": stats.seconds,
                **self.timer.pop(),
            }
            if self.cluster_result is not None:
                scalars.update({"epoch/acc_proto": stats.acc_proto, "epoch/loss_proto": stats.loss_proto})
            if knn_due and knn is not None:
                scalars["eval/knn_top1"] = knn
            scalars["time/epoch_total_seconds"] = time.time() - t_epoch  # E-step + M-step + kNN monitor
            scalars.update({f"memory/{k}": v for k, v in peak_memory_mib(self.device).items()})
            self.tb.scalars(scalars, epoch)
            self.tb.flush()
            self.epoch_scalars.update(scalars)
            self.metrics.add(epoch, self.epoch_scalars)  # before the checkpoint: a resume redoes this epoch
            self.state.epoch = epoch + 1
            with self.timer.phase("checkpoint"):
                self.save()
            ckpt_time = self.timer.pop()  # time/checkpoint_seconds
            self.tb.scalars(ckpt_time, epoch)
            self.epoch_scalars.update(ckpt_time)
            self.metrics.add(epoch, self.epoch_scalars)  # the same record, now with the checkpoint's time
            if self.info.is_main:
                msg = f"epoch {epoch}: loss {stats.loss:.4f} acc_inst {stats.acc_inst:.1f}"
                if self.cluster_result is not None:
                    msg += f" acc_proto {stats.acc_proto:.1f}"
                if "eval/knn_top1" in scalars:
                    msg += f" knn_top1 {knn:.2f}"
                msg += f" skipped {stats.skipped} ({stats.seconds:.0f}s)"
                tqdm.write(msg)
        self.tb.close()
        return knn
