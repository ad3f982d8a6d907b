"""``--estep-features bank``: the M-step's momentum-encoder features of the training views, kept for the E-step.

DeepCluster-v2's memory bank for PCL: during the M-step of epoch ``e`` every applied step writes the momentum
encoder's feature of each image's key view (``(B, d)``, by dataset index; one row per image, since an epoch
visits each image at most once) into the feature store that the E-step of epoch ``e + 1`` clusters instead of a
separate eval-view pass: ``<feature-dir>/epoch{e+1:04d}/rank{r}-*``, the shards of today's E-step. Each rank
writes the rows of its own batches. Only epochs followed by an E-step write (``first <= e + 1 < last``), so the
first E-step after the warmup clusters the last warmup epoch's bank.

Checkpoints carry the open writer (:meth:`ViewBank.state`: its shards stay on disk, its buffered rows go into
the checkpoint), so a resumed run, mid-epoch too, clusters the same features. A store is deleted after the first
checkpoint written once its E-step is done (kept with ``--keep-features``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from pcl.estep.estep import EStepConfig
from pcl.estep.feature_store import ShardWriter, remove_shards
from pcl.utils import distributed as pdist


def _world() -> int:
    return dist.get_world_size() if pdist.is_distributed() else 1


class ViewBank:
    """The open store of the next E-step, written by the M-step (see the module docstring).

    ``dim``: feature width; ``first``: the first epoch with an E-step (``--warmup-epochs``); ``last``: the number of
    epochs (None: unknown, every epoch from ``first - 1`` on writes).
    """

    def __init__(self, cfg: EStepConfig, dim: int, first: int, last: int | None) -> None:
        self.cfg, self.dim, self.first, self.last = cfg, dim, first, last
        self.epoch: int | None = None  # the E-step epoch the open writer is for
        self.writer: ShardWriter | None = None

    def _directory(self, epoch: int) -> Path:
        if self.cfg.feature_dir is None:
            raise ValueError("EStepConfig.feature_dir is unset (main_pcl sets it to <exp-dir>/features)")
        return self.cfg.feature_dir / f"epoch{epoch:04d}"

    def begin(self, epoch: int, rank: int) -> None:
        """Before the M-step of ``epoch``: open the store of E-step ``epoch + 1`` when that epoch has one."""
        nxt = epoch + 1
        due = nxt >= self.first and (self.last is None or nxt < self.last)
        self.epoch = nxt if due else None
        self.writer = None
        if due:
            c = self.cfg
            self.writer = ShardWriter(self._directory(nxt), self.dim, c.feature_dtype, c.shard_rows, f"rank{rank}")

    def take(self, epoch: int) -> ShardWriter | None:
        """The writer of E-step ``epoch`` (None when no bank was written for it), handed over to the E-step."""
        writer = self.writer if self.epoch == epoch else None
        self.writer, self.epoch = None, None
        return writer

    @torch.no_grad()
    def add(self, features: torch.Tensor, index: torch.Tensor) -> None:
        """Rows ``features (B, d)`` of images ``index (B,)`` (an applied step's key views), if a store is open."""
        if self.writer is not None:
            self.writer.add(features, index)

    def after_save(self, rank: int) -> None:
        """After a checkpoint: delete this rank's clustered stores (every one but the open writer's)."""
        if self.cfg.keep_features or self.cfg.feature_dir is None or not self.cfg.feature_dir.is_dir():
            return
        keep = None if self.epoch is None else self._directory(self.epoch)
        for d in sorted(self.cfg.feature_dir.glob("epoch*")):
            if d != keep and d.is_dir():
                remove_shards(d, f"rank{rank}")

    def state(self) -> dict:
        """The checkpoint entry: the open writer of every rank (``ShardWriter.state``); collective."""
        mine = None if self.writer is None else self.writer.state()
        writers = pdist.all_gather_object(mine)
        return {"epoch": self.epoch, "world": len(writers), "writers": writers}

    def load_state(self, state: dict | None, rank: int) -> str | None:
        """Restore :meth:`state`'s writer of ``rank``; returns a note when the bank cannot continue exactly (then
        it continues empty, and the E-step takes the eval view of the images it lacks), else None."""
        self.writer, self.epoch = None, None
        if not state or state.get("epoch") is None:
            return None
        epoch, world = int(state["epoch"]), _world()
        writer = ShardWriter.restore(state["writers"][rank]) if int(state["world"]) == world else None
        note = None
        if writer is None:
            why = f"{state['world']} processes wrote it, {world} resume" if int(state["world"]) != world else ""
            note = (
                f"--estep-features bank: the bank of E-step {epoch} cannot be restored "
                f"({why or 'its shards are gone'}); it restarts, the E-step takes the eval view of what it lacks"
            )
            c = self.cfg
            writer = ShardWriter(self._directory(epoch), self.dim, c.feature_dtype, c.shard_rows, f"rank{rank}")
        self.writer, self.epoch = writer, epoch
        return note
