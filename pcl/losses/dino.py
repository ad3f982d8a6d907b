"""DINO's loss (Caron et al., 2021): the student's crops predict the centred, sharpened teacher's global crops.

``P_t = softmax((t - c) / tau_t)`` of the teacher's outputs ``t`` (centre ``c``, an EMA of the teacher's batch
means; temperature ``tau_t`` warmed up from 0.04 to 0.07), ``P_s = softmax(s / tau_s)`` of the student's. The loss
is the cross-entropy ``H(P_t, P_s) = h(P_t) + KL(P_t || P_s)`` averaged over every (teacher crop, student crop)
pair of different crops. Two collapses are possible: every output uniform (``h(P_t) = log K``) or dominated by
one dimension (``h(P_t) -> 0``); in both the outputs stop depending on the input, which the KL of each teacher
distribution to that of the centre shows (``-> 0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pcl.utils import distributed as pdist


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """``tau_t`` of ``epoch``: linear from ``warmup_temp`` (epoch 0) to ``temp`` (epoch ``warmup_epochs - 1``), then
    ``temp`` (the reference's ``np.linspace`` over the warmup epochs)."""
    if epoch >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)


def cosine_to_one(step: int, total_steps: int, base: float) -> float:
    """The teacher momentum of ``step``: ``1 - (1 - base) (1 + cos(pi step / total)) / 2``, ``base`` at step 0 rising
    to 1 at ``total_steps`` (the reference's cosine schedule; steps past the end stay at 1)."""
    t = min(step, total_steps) / max(total_steps, 1)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class DinoLoss:
    """One batch's loss and what reveals a collapse, all scalars: ``loss`` (the mean cross-entropy),
    ``teacher_entropy`` (mean ``h(P_t)`` over the teacher's crops, nats), ``kl_centre`` (mean
    ``KL(softmax(t / tau_t) || softmax(c / tau_t))``: how far the teacher's outputs are from their centre), ``hits``
    (float count out of ``B``: student crops whose arg-max is the teacher's, mean over pairs)."""

    loss: torch.Tensor
    teacher_entropy: torch.Tensor
    kl_centre: torch.Tensor
    hits: torch.Tensor


def dino_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    centre: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> DinoLoss:
    """DINO's loss of ``V`` student crops against the ``G`` teacher crops.

    Args:
        student: ``V`` tensors ``(B, K)``, the student's head outputs of every crop (global ones first).
        teacher: ``G`` tensors ``(B, K)``, the teacher's outputs of the global crops; teacher crop ``i`` is the same
            view as student crop ``i``, a pair the loss skips.
        centre: ``(1, K)`` centre of the teacher's outputs.
    """
    logp_s = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    p_t = [F.softmax((t - centre) / teacher_temp, dim=-1).detach() for t in teacher]
    pairs = [(i, v) for i in range(len(teacher)) for v in range(len(student)) if v != i]
    if not pairs:
        raise ValueError("DINO needs at least two crops (a crop is never its own target)")
    loss = torch.stack([-(p_t[i] * logp_s[v]).sum(dim=-1).mean() for i, v in pairs]).mean()
    with torch.no_grad():
        entropy = torch.stack([-(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1).mean() for p in p_t]).mean()
        log_c = F.log_softmax(centre / teacher_temp, dim=-1)
        kl = [F.kl_div(log_c.expand_as(t), F.log_softmax(t / teacher_temp, dim=-1), reduction="none", log_target=True)
              for t in teacher]  # fmt: skip
        kl_centre = torch.stack([k.sum(dim=-1).mean() for k in kl]).mean()
        hits = torch.stack([(student[v].argmax(-1) == teacher[i].argmax(-1)).sum() for i, v in pairs]).float().mean()
    return DinoLoss(loss, entropy, kl_centre, hits)


@torch.no_grad()
def updated_centre(centre: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """``m c + (1 - m) mean(teacher)``: the new ``(1, K)`` centre after the teacher's ``(N, K)`` outputs of one
    batch (this rank's rows; the mean is over every rank's)."""
    total = pdist.all_reduce_sum(teacher.float().sum(dim=0, keepdim=True))
    count = pdist.all_reduce_sum(torch.tensor([float(teacher.shape[0])], device=teacher.device))
    return centre * momentum + (total / count) * (1.0 - momentum)
