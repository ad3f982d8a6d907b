"""The PCL objective of one M-step batch: InfoNCE + the mean ProtoNCE over granularities (PCL eq. 11).

``loss = InfoNCE(q, k, queue) + proto_weight x mean_m ProtoNCE_m(q_cluster, prototypes_m, phi_m)``

- InfoNCE (:func:`pcl.losses.infonce.info_nce`): the instance task against the queue of momentum keys.
- ProtoNCE (:func:`pcl.losses.protonce.proto_nce`): one term per clustering granularity of the last E-step;
  none during the warmup epochs (the objective is then MoCo v2's).
- phi (:func:`prototype_temperatures`): each prototype's estimated concentration
  (:func:`pcl.estep.clustering.concentration`), or the temperature for every prototype with
  ``--fixed-concentration`` (the paper's ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from pcl.losses.config import LossConfig
from pcl.losses.infonce import info_nce
from pcl.losses.protonce import proto_nce


class Prototypes(Protocol):
    """One granularity of an E-step result (e.g. :class:`pcl.estep.clustering.Granularity`)."""

    im2cluster: torch.Tensor  # (N,) long: cluster id of every training image
    centroids: torch.Tensor  # (k, d) L2-normalised prototypes
    density: torch.Tensor  # (k,) estimated concentrations phi


@dataclass
class Objective:
    """One batch's losses: ``total`` (scalar, to backpropagate), ``inst`` InfoNCE (scalar), ``logits``
    ``(B, 1 + r)`` of InfoNCE, and per granularity ``(ProtoNCE scalar, hits)``."""

    total: torch.Tensor
    inst: torch.Tensor
    logits: torch.Tensor
    protos: list[tuple[torch.Tensor, torch.Tensor]]


def total_loss(inst: torch.Tensor, protos: list[torch.Tensor], proto_weight: float = 1.0) -> torch.Tensor:
    """InfoNCE + ``proto_weight`` x the mean of the ProtoNCE losses over granularities (all scalars).

    With weight 1 this is the official ``loss = InfoNCE + mean_m ProtoNCE_m`` (same operations, same rounding);
    without granularities it is InfoNCE.
    """
    if not protos:
        return inst
    proto = torch.stack(protos).mean()
    return inst + proto if proto_weight == 1.0 else inst + proto_weight * proto


def prototype_temperatures(density: torch.Tensor, temperature: float, fixed: bool) -> torch.Tensor:
    """Per-prototype temperatures phi ``(k,)``: the estimated concentration ``density``, or ``temperature``
    for every prototype when ``fixed`` (``--fixed-concentration``, the PCL paper's ablation)."""
    return torch.full_like(density, temperature) if fixed else density


def pcl_objective(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    q_cluster: torch.Tensor,
    index: torch.Tensor,
    levels: Sequence[Prototypes],
    cfg: LossConfig,
    num_negatives: int,
) -> Objective:
    """InfoNCE of queries ``q (B, d)`` against keys ``k (B, d)`` and ``queue (d, r)``, plus ProtoNCE of the
    cluster-task queries ``q_cluster (B, d)`` (images ``index (B,)``) on every granularity in ``levels``, each
    against ``num_negatives`` negative prototypes (the queue size ``--pcl-r``, as in the official code)."""
    inst, logits = info_nce(q, k, queue, cfg.temperature)
    protos = []
    for g in levels:
        phi = prototype_temperatures(g.density, cfg.temperature, cfg.fixed_concentration)
        protos.append(proto_nce(q_cluster, g.im2cluster[index], g.centroids, phi, num_negatives))
    return Objective(total_loss(inst, [p[0] for p in protos], cfg.proto_weight), inst, logits, protos)
