"""The run folder's checkpoints: what a training checkpoint holds, when it is written, and how a run resumes.

A checkpoint (``torch.save`` of a dict, written atomically, finite values only) holds::

    epoch, step_in_epoch, epoch_meter   completed epochs; mid-epoch: steps done in ``epoch`` and its meter
    epoch_scalars, epoch_timer          mid-epoch: the epoch's scalars logged so far (E-step figures) and its
                                        phase seconds, so that metrics.json keeps them (None at an epoch end;
                                        absent in older checkpoints, which resume as None)
    num_train, global_step, skipped_steps, world
    model, optimizer, scheduler, scaler state dicts (the model's buffers hold the queue)
    cluster_result                      the last E-step's result (``ClusterResult.state_dict()``) or None: the
                                        method's own state besides its modules (``Method.extra_state``)
    rng                                 every rank's Python / NumPy / torch (CUDA) generator states
    config                              the resolved configuration (``pcl.config.to_dict``)

``<exp-dir>/checkpoints/last.pth`` is the latest; ``checkpoint_XXXX.pth`` is kept every ``--save-freq`` epochs and
after the last. On resume the new configuration's lr / wd / momentum replace the stored ones
(:mod:`pcl.run.resume_check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from pcl.run.checkpoint import copy_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pcl.run.resume_check import apply_hyperparams, snapshot_hyperparams
from pcl.run.run_dir import RunDir, checkpoint_position
from pcl.utils import distributed as pdist
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, flag


@dataclass
class CheckpointConfig:
    """The run folder and its checkpoints: where (``--exp-dir``), what to resume, how often to save, when to
    stop this invocation, and the SLURM requeue after a stop."""

    GROUP: ClassVar[str] = "run"

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

    @property
    def run_dir(self) -> RunDir:
        """The paths of ``--exp-dir``."""
        return RunDir(self.exp_dir)

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range or contradictory run flags."""
        check_fields(self)
        if self.overwrite and self.resume:
            raise PCLError("--overwrite starts from scratch and --resume continues: pass only one of them")


@dataclass
class TrainState:
    """Counters that persist across epochs and are checkpointed."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    skipped_steps: int = 0


@dataclass
class Resumed:
    """What a restored checkpoint gives the engine besides the modules' states.

    ``extra``: the checkpoint's method entries (``cluster_result``: ``ClusterResult.state_dict()`` or None; the
    keys a ``Method.extra_state`` wrote); ``step_in_epoch`` / ``epoch_meter`` /
    ``epoch_scalars`` / ``epoch_timer``: a mid-epoch position and what the epoch logged so far (0 / None at an
    epoch end); ``pending_rng``: this rank's RNG state to set once the epoch's loader iterator exists (mid-epoch
    only; otherwise it is set already).
    """

    state: TrainState
    extra: dict
    step_in_epoch: int = 0
    epoch_meter: dict | None = None
    pending_rng: dict | None = None
    epoch_scalars: dict | None = None
    epoch_timer: dict | None = None


# the checkpoint's own keys; every other key is the method's (``Method.extra_state``)
CORE_KEYS = frozenset(
    {"epoch", "step_in_epoch", "epoch_meter", "epoch_scalars", "epoch_timer", "num_train", "global_step"}
    | {"skipped_steps", "model", "optimizer", "scheduler", "scaler", "rng", "world", "config", "data_identity"}
)


class Checkpointer:
    """Writes and restores the training checkpoints of ``run_dir`` for one model / optimizer / scheduler /
    GradScaler; rank 0 reads and writes, every rank takes part (RNG gather, broadcast, barrier)."""

    def __init__(
        self,
        run_dir: RunDir,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        info: DistInfo,
        config: dict,
        save_freq: int,
        epochs: int,
    ) -> None:
        self.run_dir, self.model, self.optimizer, self.scheduler, self.scaler = (
            run_dir,
            model,
            optimizer,
            scheduler,
            scaler,
        )
        self.info, self.config, self.save_freq, self.epochs = info, config, save_freq, epochs

    def numbered(self, epoch: int) -> Path | None:
        """The kept ``checkpoint_XXXX.pth`` after ``epoch`` completed epochs (every ``--save-freq`` and the
        last), or None."""
        return self.run_dir.checkpoint(epoch) if epoch % self.save_freq == 0 or epoch == self.epochs else None

    def state(
        self,
        st: TrainState,
        num_train: int,
        extra: dict,
        step_in_epoch: int = 0,
        meter: dict | None = None,
        scalars: dict | None = None,
        timer: dict | None = None,
    ) -> dict:
        """Everything needed to continue bit-identically (the keys of the module docstring; ``extra``: the method's
        own entries, ``Method.extra_state``); mid-epoch (``step_in_epoch`` > 0) also the epoch's ``meter`` state,
        logged ``scalars`` and ``timer`` seconds.

        Collective under DDP (gathers the RNG states): every rank must call it.
        """
        rngs = pdist.all_gather_object(rng_state())
        return {
            "epoch": st.epoch,
            "step_in_epoch": step_in_epoch,
            "epoch_meter": meter,
            "epoch_scalars": scalars,
            "epoch_timer": timer,
            "num_train": num_train,
            "global_step": st.global_step,
            "skipped_steps": st.skipped_steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **extra,
            "rng": rngs,
            "world": self.info.world,
            "config": self.config,
        }

    def save(self, state: dict) -> Path:
        """Write ``state`` (from :meth:`state`) as ``last.pth`` from rank 0, atomically; all ranks wait for it.

        At an epoch end the kept ``checkpoint_XXXX.pth`` is written first and ``last.pth`` copied from it (an
        independent file), so a kill between the two cannot lose the numbered one.
        """
        last = self.run_dir.last
        if self.info.is_main:
            numbered = None if state["step_in_epoch"] else self.numbered(state["epoch"])
            if numbered is not None:
                save_checkpoint(state, numbered)
                copy_checkpoint(numbered, last)
            else:
                save_checkpoint(state, last)
        pdist.barrier()
        return last

    def restore(self, path: Path, ckpt: dict | None, seed: int) -> Resumed:
        """Load the checkpoint ``path`` (rank 0 reads it unless ``ckpt`` is given, and sends it on) into the
        model, optimizer, scheduler and scaler; the new configuration's lr / wd / momentum replace the stored
        ones. With a different number of processes the RNG continues from fresh rank-dependent seeds."""
        info = self.info
        if info.is_main and ckpt is None:
            ckpt = load_checkpoint(path)
        ckpt = pdist.broadcast_object(ckpt if info.is_main else None)
        fresh = snapshot_hyperparams(self.optimizer, self.scheduler)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        changes = apply_hyperparams(self.optimizer, self.scheduler, fresh)
        self.scaler.load_state_dict(ckpt["scaler"])
        position = ckpt.get("step_in_epoch", 0)
        out = Resumed(
            TrainState(ckpt["epoch"], ckpt["global_step"], ckpt["skipped_steps"]),
            {k: v for k, v in ckpt.items() if k not in CORE_KEYS},
            position,
            ckpt.get("epoch_meter"),
            epoch_scalars=ckpt.get("epoch_scalars"),
            epoch_timer=ckpt.get("epoch_timer"),
        )
        rngs = ckpt["rng"]
        rng = rngs[info.rank] if len(rngs) == info.world else None
        if rng is None:  # different number of processes: continue with fresh, rank-dependent seeds
            torch.manual_seed(seed + 1000 * ckpt["epoch"] + info.rank)
        elif position:
            out.pending_rng = rng
        else:
            set_rng_state(rng)
        if info.is_main:
            where = f", {position} steps into epoch {ckpt['epoch']}" if position else ""
            print(f"resumed from {path}: {ckpt['epoch']} epochs done{where}, step {ckpt['global_step']}")
            for c in changes:
                print(f"resume: {c} applied from step {ckpt['global_step']} on")
            numbered = None if position else self.numbered(ckpt["epoch"])
            if numbered is not None and not numbered.exists() and ckpt["epoch"] > 0:
                save_checkpoint(ckpt, numbered)  # lost by a kill between the two writes (older versions)
                print(f"recreated {numbered}")
            self._restore_last(Path(path), (int(ckpt["epoch"]), int(position or 0)))
        return out

    def _restore_last(self, path: Path, position: tuple[int, int]) -> None:
        """After resuming from a kept checkpoint of this run that is ahead of ``last.pth`` (or with ``last.pth``
        unreadable), make ``last.pth`` its copy again, so that the run folder says where the run stands (a run
        resumed from its final checkpoint is finished). An older kept checkpoint asked for by path is left alone."""
        last = self.run_dir.last
        if path.parent != self.run_dir.checkpoints or path.name == last.name or not path.is_file():
            return
        current = checkpoint_position(last)
        if current is None or current < position:
            copy_checkpoint(path, last)
            print(f"restored {last} from {path.name}")


def load_resumable(path: Path, run_dir: RunDir | None = None) -> tuple[Path, dict]:
    """``(path, checkpoint)`` read from ``path``; with ``run_dir`` (``--resume auto``), when ``path`` cannot be
    read, the newest readable ``checkpoint_XXXX.pth`` instead, announced in one line. Raises the ``PCLError``
    of ``path`` when nothing can be read."""
    try:
        return path, load_checkpoint(path)
    except PCLError as e:
        if run_dir is None:
            raise
        for other in reversed(run_dir.kept_checkpoints()):
            if other == path:
                continue
            try:
                ckpt = load_checkpoint(other)
            except PCLError:
                continue
            reason = (str(e).split(": ", 1)[-1].strip().splitlines() or ["unreadable"])[0]
            print(f"--resume auto: {path} cannot be read ({reason}); resuming from {other}")
            return other, ckpt
        raise
