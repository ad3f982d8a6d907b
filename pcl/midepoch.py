"""Mid-epoch checkpoints: when to write one, and where in the epoch's sampler order to continue.

The training sampler's order depends on (seed, epoch) only, and global step ``s`` of an epoch always covers
positions ``[s*B, (s+1)*B)`` of that order whatever the number of ranks, so "steps done in this epoch" is all
a checkpoint needs to continue at the next batch (also with a different number of processes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from pcl import distributed as pdist


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch after its first ``skip`` indices (this rank's share).

    ``skip`` applies to the next iteration only (it is reset to 0 when the iteration starts).
    """

    skip: int = 0

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return iter(list(super().__iter__())[skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SavePolicy:
    """``--save-every-steps N`` and/or ``--save-every-minutes M``; ranks agree through one all-reduce."""

    def __init__(self, every_steps: int = 0, every_minutes: float = 0.0) -> None:
        self.every_steps, self.every_seconds = every_steps, every_minutes * 60.0
        self.last = time.monotonic()

    def reset(self) -> None:
        self.last = time.monotonic()

    def due(self, steps_in_epoch: int, signal_requested: bool, world: int, device: torch.device) -> tuple[bool, bool]:
        """``(save now, stop after saving)`` after a step; identical on every rank."""
        by_steps = bool(self.every_steps) and steps_in_epoch % self.every_steps == 0
        by_time = bool(self.every_seconds) and time.monotonic() - self.last >= self.every_seconds
        flags = [float(by_steps or by_time), float(signal_requested)]
        if world > 1:
            flags = pdist.all_reduce_sum(torch.tensor(flags, device=device)).tolist()
        stop = flags[1] > 0
        return flags[0] > 0 or stop, stop
