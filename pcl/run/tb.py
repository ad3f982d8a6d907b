"""Logging stage: TensorBoard scalars, written by rank 0 only."""

from __future__ import annotations

from pathlib import Path


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

    def flush(self) -> None:
        """Write pending events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
