"""Losses of the M-step: InfoNCE (instance task) and ProtoNCE (cluster task), one per module."""

from pcl.losses.infonce import info_nce
from pcl.losses.protonce import proto_nce, sample_negative_prototypes

__all__ = ["info_nce", "proto_nce", "sample_negative_prototypes"]
