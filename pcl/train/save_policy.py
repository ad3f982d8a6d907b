"""Mid-epoch checkpoints: when to write one (``--save-every-steps`` / ``--save-every-minutes`` / a signal)."""

from __future__ import annotations

import time

import torch

from pcl.utils import distributed as pdist


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
