"""Losses of the M-step: InfoNCE (instance task), ProtoNCE (cluster task), and the objective that sums them."""

from pcl.losses.infonce import info_nce
from pcl.losses.objective import pcl_objective, prototype_temperatures, total_loss
from pcl.losses.protonce import proto_nce, sample_negative_prototypes

__all__ = [
    "info_nce",
    "pcl_objective",
    "proto_nce",
    "prototype_temperatures",
    "sample_negative_prototypes",
    "total_loss",
]
