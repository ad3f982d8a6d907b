"""Logging stage: TensorBoard scalars and images, written by rank 0 only."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class TBLogger:
    """Thin wrapper over ``SummaryWriter``; a no-op when ``enabled`` is False (ranks other than 0)."""

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log every ``{tag: value}`` at ``step``."""
        if self.writer is not None:
            for tag, v in values.items():
                self.writer.add_scalar(tag, v, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Log an ``(H, W, 3) uint8`` picture (TensorBoard's Images tab) at ``step``."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        """Write pending events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
