"""Losses of the M-step: InfoNCE (instance task), ProtoNCE (cluster task), the objective that sums them, and
their settings (:class:`pcl.losses.config.LossConfig`)."""

from pcl.losses.config import LossConfig
from pcl.losses.infonce import info_nce
from pcl.losses.objective import pcl_objective, prototype_concentrations, total_loss
from pcl.losses.protonce import proto_nce, sample_negative_prototypes

__all__ = [
    "LossConfig",
    "info_nce",
    "pcl_objective",
    "proto_nce",
    "prototype_concentrations",
    "sample_negative_prototypes",
    "total_loss",
]
