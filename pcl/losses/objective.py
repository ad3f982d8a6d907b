"""The PCL objective of one M-step batch: InfoNCE + the mean ProtoNCE over granularities (PCL eq. 11).

``loss = InfoNCE(q, k, queue) + proto_weight x mean_m ProtoNCE_m(q_cluster, prototypes_m, phi_m)``

- InfoNCE (:func:`pcl.losses.infonce.info_nce`): the instance task against the queue of momentum keys.
- ProtoNCE (:func:`pcl.losses.protonce.proto_nce`): one term per clustering granularity of the last E-step;
  none during the warmup epochs (the objective is then MoCo v2's).
- phi (:func:`prototype_concentrations`): each prototype's estimated concentration
  (:func:`pcl.estep.clustering.concentration`), or the temperature for every prototype with
  ``--fixed-concentration`` (the paper's ablation).

Multi-crop (``q_local``, ``k_extra``): every query crop (the first global crop and each local crop) against every
key crop (the other global crops), InfoNCE averaged over the pairs; ProtoNCE of every query crop against its
image's prototypes (as HCSC), averaged over the crops. Without local crops and extra keys the operations are
exactly the two-crop ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from pcl.losses.config import LossConfig
from pcl.losses.infonce import info_nce
from pcl.losses.protonce import proto_nce


class Prototypes(Protocol):
    """One granularity of an E-step result (e.g. :class:`pcl.estep.clustering.Granularity`)."""

    im2cluster: torch.Tensor  # (N,) long: cluster id of every training image
    centroids: torch.Tensor  # (k, d) L2-normalised prototypes
    concentration: torch.Tensor  # (k,) estimated concentrations phi


@dataclass
class Objective:
    """One batch's losses: ``total`` (scalar, to backpropagate), ``inst`` InfoNCE (scalar, over every query-key
    pair of crops), ``logits`` ``(B, 1 + r)`` of InfoNCE of the first global crop's query against the first key
    crop, per granularity ``(ProtoNCE scalar over the query crops, hits of the first global crop)``; with local
    crops ``local_terms`` (``loss_inst_local``, ``loss_proto_local``: the local crops' share) and ``local_hits``
    (``acc_inst_local``, ``acc_proto_local``: hits per image averaged over the local crops)."""

    total: torch.Tensor
    inst: torch.Tensor
    logits: torch.Tensor
    protos: list[tuple[torch.Tensor, torch.Tensor]]
    local_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    local_hits: dict[str, torch.Tensor] = field(default_factory=dict)


def total_loss(inst: torch.Tensor, protos: list[torch.Tensor], proto_weight: float = 1.0) -> torch.Tensor:
    """InfoNCE + ``proto_weight`` x the mean of the ProtoNCE losses over granularities (all scalars).

    With weight 1 this is the official ``loss = InfoNCE + mean_m ProtoNCE_m`` (same operations, same rounding);
    without granularities it is InfoNCE.
    """
    if not protos:
        return inst
    proto = torch.stack(protos).mean()
    return inst + proto if proto_weight == 1.0 else inst + proto_weight * proto


def prototype_concentrations(concentration: torch.Tensor, temperature: float, fixed: bool) -> torch.Tensor:
    """Per-prototype temperatures phi ``(k,)``: the estimated concentration ``concentration``, or ``temperature``
    for every prototype when ``fixed`` (``--fixed-concentration``, the PCL paper's ablation)."""
    return torch.full_like(concentration, temperature) if fixed else concentration


def pcl_objective(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    q_cluster: torch.Tensor,
    index: torch.Tensor,
    levels: Sequence[Prototypes],
    cfg: LossConfig,
    num_negatives: int,
    q_local: Sequence[torch.Tensor] = (),
    q_cluster_local: Sequence[torch.Tensor] = (),
    k_extra: Sequence[torch.Tensor] = (),
) -> Objective:
    """InfoNCE of queries ``q (B, d)`` against keys ``k (B, d)`` and ``queue (d, r)``, plus ProtoNCE of the
    cluster-task queries ``q_cluster (B, d)`` (images ``index (B,)``) on every granularity in ``levels``, each
    against ``num_negatives`` negative prototypes (the queue size ``--pcl-r``, as in the official code).

    Multi-crop: ``q_local`` / ``q_cluster_local`` the local crops' queries (each ``(B, d)``), ``k_extra`` the keys
    of further global crops (each ``(B, d)``); see the module docstring. With neither, every mean below is over one
    term (exactly that term, gradient included): the two-crop operations."""
    keys, n_local, t = [k, *k_extra], len(q_local), cfg.temperature
    pairs = [[info_nce(query, key, queue, t) for key in keys] for query in [q, *q_local]]  # [query crop][key crop]
    inst = torch.stack([loss for row in pairs for loss, _ in row]).mean()
    logits = pairs[0][0][1]
    local_terms: dict[str, torch.Tensor] = {}
    local_hits: dict[str, torch.Tensor] = {}
    if n_local:
        local_terms["loss_inst_local"] = torch.stack([loss for row in pairs[1:] for loss, _ in row]).mean()
        hits = [(row[0][1].argmax(dim=1) == 0).sum() for row in pairs[1:]]
        local_hits["acc_inst_local"] = torch.stack(hits).float().mean()
    protos, local_protos = [], []
    for g in levels:
        phi = prototype_concentrations(g.concentration, t, cfg.fixed_concentration)
        positives = g.im2cluster[index]
        crops = [proto_nce(z, positives, g.centroids, phi, num_negatives) for z in [q_cluster, *q_cluster_local]]
        protos.append((torch.stack([loss for loss, _ in crops]).mean(), crops[0][1]))
        local_protos.append(crops[1:])
    if levels and n_local:
        local_terms["loss_proto_local"] = torch.stack([loss for crops in local_protos for loss, _ in crops]).mean()
        local_hits["acc_proto_local"] = torch.stack([h for crops in local_protos for _, h in crops]).float().mean()
    total = total_loss(inst, [p[0] for p in protos], cfg.proto_weight)
    return Objective(total, inst, logits, protos, local_terms, local_hits)
