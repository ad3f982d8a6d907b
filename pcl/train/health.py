"""Finite-collapse detection: health signals of the embeddings and a warning when they show a collapse.

The non-finite guard (:mod:`pcl.train.guard`) catches NaN/Inf; the failure met more often is finite: every
embedding becomes the same, InfoNCE sits at chance ``log(1 + r)`` and ``acc_inst`` at ``1 / (1 + r)``. Every
``--print-freq`` steps the engine measures, on the batch's L2-normalised query embeddings ``q (B, d)`` it
already has (no extra forward pass; the values travel in the step's one all-reduce / host sync):

- ``health/embedding_std``: mean over dimensions of the per-dimension std; about ``1/sqrt(d)`` when the
  embeddings spread over the sphere, -> 0 when they collapse to one point. Reported as ``std_ratio`` =
  std x sqrt(d) (about 1 healthy, 0 collapsed) in ``health/std_ratio``.
- ``health/effective_rank``: ``exp(entropy(s / sum(s)))`` of the singular values ``s`` of ``q``
  (Roy & Vetterli 2007): 1 when every embedding is the same direction, up to ``min(B, d)``.
- ``health/infonce_gap``: ``log(1 + r) - InfoNCE``; about 0 (or below) when the positive key is no easier to
  find than the ``r`` queue negatives.

A step *shows a collapse* when ``std_ratio < STD_RATIO_MIN`` and ``infonce_gap < GAP_MIN_FRACTION x
log(1 + r)``; after ``WINDOW`` such measurements in a row, one warning names the signs and the remedies
(``--stop-on-collapse`` then stops the run with a checkpoint, exit code :data:`COLLAPSE_EXIT`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

STD_RATIO_MIN = 0.05  # healthy runs stay above ~0.2 even at initialisation; a collapse ends below 1e-3
GAP_MIN_FRACTION = 0.02  # InfoNCE within 2% of chance (or above it)
WINDOW = 5  # measurements in a row (every --print-freq steps)
COLLAPSE_EXIT = 3  # exit code of --stop-on-collapse
REMEDIES = "lower --lr, a longer --lr-warmup-epochs, or --optimizer sgd-cos"


@torch.no_grad()
def embedding_signals(q: torch.Tensor) -> torch.Tensor:
    """``(2,)`` float32 on ``q``'s device: mean per-dimension std and effective rank of ``q (B, d)``; no sync.

    Non-finite entries count as 0 (such a step is skipped by the guard and its signals are not used; the SVD
    would otherwise fail).
    """
    q = torch.nan_to_num(q.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    std = q.std(dim=0).mean() if q.shape[0] > 1 else q.new_zeros(())
    s = torch.linalg.svdvals(q)
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return torch.stack([std, entropy.exp()])


class CollapseStop(Exception):
    """``--stop-on-collapse``: raised once the mid-epoch checkpoint ``checkpoint`` is written (exit code 3)."""

    code = COLLAPSE_EXIT

    def __init__(self, checkpoint: str) -> None:
        super().__init__(f"finite collapse (--stop-on-collapse): checkpoint written: {checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class HealthMonitor:
    """Collects the measurements of an epoch and watches for a sustained collapse (warns once per run)."""

    dim: int  # embedding dimension d
    queue: int = 0  # r, the number of InfoNCE negatives
    chance_value: float | None = None  # the watched loss at chance, when it is not log(1 + queue)
    collapsed_in_a_row: int = 0
    warned: bool = False
    epoch_values: dict[str, list[float]] = field(default_factory=dict)

    @property
    def chance(self) -> float:
        """InfoNCE of a model that cannot tell the positive from the ``r`` negatives: ``log(1 + r)`` (or the
        method's own chance level, ``chance_value``)."""
        return math.log(1 + self.queue) if self.chance_value is None else self.chance_value

    def observe(self, std: float, effective_rank: float, infonce: float) -> dict[str, float]:
        """Record one measurement; returns its ``health/*`` scalars."""
        values = {
            "health/embedding_std": std,
            "health/std_ratio": std * math.sqrt(self.dim),
            "health/effective_rank": effective_rank,
            "health/infonce_gap": self.chance - infonce,
        }
        for k, v in values.items():
            self.epoch_values.setdefault(k, []).append(v)
        collapsed = values["health/std_ratio"] < STD_RATIO_MIN and values["health/infonce_gap"] < (
            GAP_MIN_FRACTION * self.chance
        )
        self.collapsed_in_a_row = self.collapsed_in_a_row + 1 if collapsed else 0
        return values

    @property
    def collapse(self) -> bool:
        """The last ``WINDOW`` measurements all showed a collapse."""
        return self.collapsed_in_a_row >= WINDOW

    def warning(self, step: int, values: dict[str, float]) -> str:
        """The one-time warning text (empty once given or without a sustained collapse)."""
        if not self.collapse or self.warned:
            return ""
        self.warned = True
        return (
            f"warning: the embeddings collapsed (finite collapse) at step {step}: for {WINDOW} measurements in a "
            f"row the per-dimension std is {values['health/std_ratio']:.3g} x 1/sqrt({self.dim}) (healthy ~1), "
            f"the effective rank {values['health/effective_rank']:.3g}, InfoNCE {values['health/infonce_gap']:+.3g} "
            f"from chance {self.chance:.3f}; acc_inst near 1/(1+r). "
            f"Remedies: {REMEDIES}; --stop-on-collapse stops such a run with a checkpoint"
        )

    def pop_epoch(self) -> dict[str, float]:
        """This epoch's means ``health/epoch_*`` (empty without measurements), and start over."""
        out = {k.replace("health/", "health/epoch_"): sum(v) / len(v) for k, v in self.epoch_values.items() if v}
        self.epoch_values = {}
        return out
