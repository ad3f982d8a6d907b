"""Resumable training sampler: where in the epoch's sampler order a mid-epoch resume continues.

The training sampler's order depends on (seed, epoch) only, and global step ``s`` of an epoch always covers
positions ``[s*B, (s+1)*B)`` of that order whatever the number of ranks, so "steps done in this epoch" is all
a checkpoint needs to continue at the next batch (also with a different number of processes).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler


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
