"""The training loop's settings: the schedule and devices (:class:`TrainConfig`) and what one step does besides
the method's own work (:class:`StepConfig`: autocast, memory format, gradient clipping, the non-finite guard and
collapse stops). The run folder's settings are :class:`pcl.run.checkpointer.CheckpointConfig`, the monitors'
:class:`pcl.train.monitor.MonitorConfig`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from pcl.train.amp import AMP_MODES
from pcl.utils.flags import check_fields, flag

CLIP_MODES = ("global", "tensor")


@dataclass
class TrainConfig:
    """Epochs and the global batch, logging interval, seed and devices."""

    GROUP: ClassVar[str] = "optimisation"

    epochs: int = flag(200, gt=0)  # the official schedule; `make train` passes its quick CPU one (6 epochs, 2 warmup)
    batch_size: int = flag(128, "-b", "--batch-size", gt=0, help="global batch size (all ranks together)")
    print_freq: int = flag(10, gt=0, group="run", help="progress-bar update interval (steps)")
    seed: int = flag(0, ge=0, le=2**31 - 1, group="run")  # numpy seeds must be < 2**32 (seed + rank)
    device: str = flag("auto", choices=("auto", "cpu", "cuda"), group="run")
    dist_backend: str = flag("auto", choices=("auto", "nccl", "gloo"), group="run")

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range."""
        check_fields(self)


@dataclass
class StepConfig:
    """What the engine does around a method's step: autocast, memory format, clipping, the guard's limit."""

    GROUP: ClassVar[str] = "optimisation"

    amp: str = flag("off", choices=AMP_MODES, help="autocast for the forward passes")
    channels_last: bool = flag(
        False, action="store_true", help="channels-last memory format for the training step (for GPUs)"
    )
    accum_steps: int = flag(
        1,
        gt=0,
        le=4096,
        help="gradient accumulation: --batch-size in this many micro-batches, one optimizer step (and enqueue) "
        "after all of them",
    )
    clip_grad: float | None = flag(  # None: no clipping (or the method's recipe: DINO 3.0)
        None, type=float, gt=0, finite=False, help="clip the gradient norm (default: per method, DINO 3.0, else none)"
    )
    clip_mode: str | None = flag(
        None,
        choices=CLIP_MODES,
        help="--clip-grad bounds the global norm or each parameter tensor's (default: per method, DINO tensor, as "
        "its reference; else global)",
    )
    max_bad_steps: int = flag(20, gt=0, help="stop after this many consecutive non-finite steps")
    stop_on_collapse: bool = flag(
        False,
        action="store_true",
        help="stop with a checkpoint (exit code 3) when the embeddings collapse (health/*, docs: reliability)",
    )

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range."""
        check_fields(self)

    def resolved(self) -> StepConfig:
        """This config with the clipping mode filled in (``global`` unless the method's recipe chose one)."""
        return self if self.clip_mode is not None else replace(self, clip_mode="global")
