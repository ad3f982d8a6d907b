"""A toy method for the tests: PCL plus one extra loss term, in one file and one registration (the decorator).

``--method pcl-uniform`` adds ``0.1 x`` the uniformity loss of Wang & Isola (2020), ``log mean exp(-2 |q_i -
q_j|^2)`` over the batch's query pairs, named ``loss_uniform`` ("uniformity"): the engine logs it as
``train/loss_uniform`` / ``epoch/loss_uniform`` and the guard checks it, with no change anywhere else.
"""

from __future__ import annotations

import torch

from pcl.methods.base import StepOutput, register_method
from pcl.methods.moco import Embeddings
from pcl.methods.pcl import PCL

WEIGHT = 0.1


def uniformity(q: torch.Tensor) -> torch.Tensor:
    """``log mean_{i != j} exp(-2 |q_i - q_j|^2)`` of L2-normalised ``q (B, d)``; a scalar."""
    sq = torch.pdist(q, p=2).pow(2)
    return sq.mul(-2).exp().mean().log()


@register_method
class PCLUniform(PCL):
    """PCL + ``WEIGHT`` x uniformity of the queries."""

    name = "pcl-uniform"

    def objective(self, out: Embeddings, index: torch.Tensor) -> StepOutput:
        step = super().objective(out, index)
        term = uniformity(out.q.float())
        step.loss = step.loss + WEIGHT * term
        step.terms["loss_uniform"] = term
        step.checked["loss_uniform"] = "uniformity"
        return step
