"""Non-finite guard of the M-step: a step whose losses or gradients hold NaN/Inf changes nothing.

The engine computes a step's losses and gradient norm, asks :func:`non_finite_terms` which of them are not
finite, and either applies the step or hands it to :meth:`NonFiniteGuard.skip`: no optimizer step, no momentum
update, no enqueue; the step is counted and reported, and ``--max-bad-steps`` consecutive bad steps stop the
run with the remedies below. fp16 gradient overflow with finite losses is GradScaler's normal back-off.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm import tqdm

from pcl.train.meters import StepStats

REMEDIES = (
    "lower --lr or add --lr-warmup-epochs; try --clip-grad 1.0; use --amp bf16 or off instead of fp16; "
    "for lamb/lars try --exclude-bn-bias; or fall back to --optimizer sgd-cos"
)


def first_non_finite_grad(model: nn.Module) -> str:
    """Name of the first parameter whose gradient holds NaN/Inf (only called on a bad step)."""
    largest, where = 0.0, "none"
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if not bool(torch.isfinite(p.grad).all()):
            return name
        m = float(p.grad.abs().max())
        largest, where = (m, name) if m > largest else (largest, where)
    return f"none; all finite but the norm overflows, largest |grad| {largest:.3g} in {where}"


def non_finite_terms(step: StepStats, model: nn.Module) -> list[str]:
    """Names of ``step``'s non-finite terms: the losses the method's step names in ``checked`` (e.g. InfoNCE,
    then one per granularity) and, for a non-finite gradient norm, the first parameter with a non-finite
    gradient."""
    bad = [words for name, words in step.checked.items() if not math.isfinite(step.terms[name])]
    if not math.isfinite(step.grad_norm):
        bad.append(f"gradients (first: {first_non_finite_grad(model)})")
    return bad


class NonFiniteGuard:
    """Counts consecutive skipped steps against ``max_bad_steps`` (the run's total is the engine's counter)."""

    def __init__(self, max_bad_steps: int, show: bool = True) -> None:
        self.max_bad_steps, self.show = max_bad_steps, show
        self.consecutive = 0

    def applied(self) -> None:
        """A finite step was applied: the run of bad steps ends."""
        self.consecutive = 0

    def skip(self, step: StepStats, global_step: int, scaler: torch.amp.GradScaler) -> str:
        """A non-finite step (``step.bad`` set): counted and reported; returns the stop message past the limit.

        fp16 gradient overflow with finite losses is skipped and counted, but it counts towards
        ``--max-bad-steps`` only once the scale cannot drop further.
        """
        overflow_only = (
            len(step.bad) == 1
            and step.bad[0].startswith("gradients")
            and scaler.is_enabled()
            and scaler.get_scale() > 1
        )
        scaler.update()  # fp16: lowers the scale; otherwise a no-op
        self.consecutive += 0 if overflow_only else 1
        amp = f", amp_scale={scaler.get_scale():.4g}" if scaler.is_enabled() else ""
        diag = (
            f"step {global_step}: non-finite {', '.join(step.bad)} "
            f"(lr={step.lr:.4g}, grad_norm={step.grad_norm:.4g}{amp})"
        )
        if self.show:
            tqdm.write(f"{diag}; step skipped ({self.consecutive} in a row)")
        if self.consecutive >= self.max_bad_steps and not overflow_only:
            return f"{self.max_bad_steps} consecutive non-finite steps, last {diag}. Remedies: {REMEDIES}"
        return ""
