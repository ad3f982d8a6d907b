"""Engine stage: the forward and backward passes of one optimizer step, in ``--accum-steps`` micro-batches.

With ``A = --accum-steps`` the per-process batch of ``B`` images is cut into ``A`` consecutive micro-batches of
``B / A`` (every view the same way); each gets its forward pass, objective and backward pass (loss x 1 / A, so the
summed gradient is the mean over the ``B`` images), under DDP without gradient sync but for the last. The
micro-batches' :class:`~pcl.methods.base.StepOutput` are merged into one (terms sample-weighted, hits and batch
summed, embeddings and pending work concatenated in order: :meth:`pcl.methods.base.Method.merge_pending`), so the
engine logs, checks and applies one step: the non-finite guard skips all ``A`` micro-batches together, and
``method.after_step`` runs once after the optimizer step. Every micro-batch therefore sees the same queue and key
encoder, and the queue receives the ``B`` keys of all micro-batches in order: a model without batch norm gets the
update of one batch of ``B`` (to float rounding; tested). The lr schedule, the step counters and the mid-epoch
position count optimizer steps (loader batches), so checkpoints and resume are unchanged. With ``A = 1`` the
operations are those of a plain step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pcl.methods.base import Method, StepOutput


def micro_batches(
    views: list[torch.Tensor], index: torch.Tensor, accum: int
) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """``accum`` consecutive equal parts of a batch: ``[(views_a, index_a)]``, view ``i`` of part ``a`` the rows
    ``a * B / accum ...`` of view ``i`` (``B`` divisible by ``accum``: checked by ``pcl.config.validate``)."""
    parts = [v.chunk(accum) for v in views]
    return [([p[a] for p in parts], i) for a, i in enumerate(index.chunk(accum))]


def merge_steps(steps: list[StepOutput], method: Method) -> StepOutput:
    """One :class:`StepOutput` for the micro-batches of a step: ``loss`` and terms weighted by their batch (the
    mean over all rows), hits and batch summed, embeddings concatenated, pending merged by the method."""
    if len(steps) == 1:
        return steps[0]
    batch = sum(s.batch for s in steps)

    def weighted(values: list[torch.Tensor]) -> torch.Tensor:
        return sum(v.detach() * s.batch for v, s in zip(values, steps, strict=True)) / batch

    first = steps[0]
    embeddings = [s.embedding for s in steps]
    return StepOutput(
        loss=weighted([s.loss for s in steps]),
        terms={name: weighted([s.terms[name] for s in steps]) for name in first.terms},
        hits={name: sum(s.hits[name] for s in steps) for name in first.hits},
        batch=batch,
        checked=dict(first.checked),
        embedding=None if any(e is None for e in embeddings) else torch.cat([e.detach() for e in embeddings]),
        pending=method.merge_pending([s.pending for s in steps]),
    )


@dataclass
class Accumulator:
    """Forward + objective + backward of one step's ``accum`` micro-batches for the engine (``model``: the method
    or its DDP wrapper; ``scale_loss``: the GradScaler's ``scale``)."""

    method: Method
    model: nn.Module
    autocast: Callable[[], contextlib.AbstractContextManager]
    scale_loss: Callable[[torch.Tensor], torch.Tensor]
    accum: int = 1

    def run(self, views: list[torch.Tensor], index: torch.Tensor) -> StepOutput:
        """The merged step of the batch ``(views, index)``; gradients accumulated in ``.grad`` (zero them first)."""
        if self.accum == 1:
            return self._micro(views, index, None)
        parts = micro_batches(views, index, self.accum)
        steps = []
        for a, (v, i) in enumerate(parts):
            last = a == len(parts) - 1
            no_sync = getattr(self.model, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                steps.append(self._micro(v, i, 1.0 / self.accum))
        return merge_steps(steps, self.method)

    def _micro(self, views: list[torch.Tensor], index: torch.Tensor, weight: float | None) -> StepOutput:
        with self.autocast():
            out = self.model(views, index)
        step = self.method.objective(out, index)
        self.scale_loss(step.loss if weight is None else step.loss * weight).backward()
        return step
