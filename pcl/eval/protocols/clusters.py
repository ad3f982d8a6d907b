"""Clusters protocol: the run's own last E-step clusters against the class labels (NMI, AMI, purity per k).

The newer of the checkpoint's cluster result and ``RUN_DIR/clusters/epoch_*.pth`` (up to the checkpoint's epoch)
is scored, and only on the data the run was trained on (the clusters index its images). ``eval.json``:
``cluster`` (``{"<K>": {"nmi", "ami", "purity"}}``, ``{}`` when not run or nothing to score) and
``settings.cluster_epoch``, or ``settings.cluster_skipped`` saying why they were not scored.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pcl.analysis.cluster_metrics import cluster_scores, has_classes
from pcl.eval.context import EvalContext
from pcl.eval.registry import Block, Protocol, Rows, SummaryColumn, register_protocol
from pcl.utils.errors import PCLError


@dataclass(frozen=True)
class ClustersSettings:
    """No settings: the run's clusters are what its E-step made."""


def _skipped(ctx: EvalContext) -> str | None:
    """Why the run's clusters cannot be scored here (None: they can)."""
    if ctx.pre.checkpoint is None:
        return f"an {ctx.encoder} backbone without a run has no clusters"
    if ctx.encoder == "untrained":
        return "the run's clusters come from its trained encoder, not an untrained one"
    if not ctx.own:  # the run's clusters index the images it was trained on, not these
        return f"the run's clusters belong to {ctx.own_data or 'the bundled subset'}, not {ctx.data}"
    return None


def compute(ctx: EvalContext, s: ClustersSettings) -> Block:
    """NMI / AMI / purity of every granularity of the run's last clusters (when the data has classes)."""
    reason = _skipped(ctx)
    if reason is not None:
        return Block({}, {"cluster_skipped": reason})
    found = ctx.cluster_result()
    if found is None:  # a MoCo v2 run, or stopped before its first E-step
        epoch = (ctx.pre.checkpoint or {}).get("epoch")
        return Block({}, {"cluster_skipped": f"the run has no E-step clusters yet (a MoCo v2 run, or a PCL run "
                                             f"before its first E-step; checkpoint of epoch {epoch})"})  # fmt: skip
    train = ctx.source.train
    if len(train) != found.levels[0].im2cluster.numel():
        raise PCLError(
            f"the cluster result covers {found.levels[0].im2cluster.numel()} images but {train.where} has {len(train)}"
        )
    values = {}
    if train.labels is not None and has_classes(train.labels):
        values["cluster"] = {str(k): v for k, v in cluster_scores(found, torch.tensor(train.labels)).items()}
    return Block(values, {"cluster_epoch": found.epoch})


def rows(result: Mapping[str, Any]) -> Rows:
    return [
        (f"k={k} NMI / AMI / purity", f"{s['nmi']:.4f} / {s['ami']:.4f} / {s['purity']:.4f}")
        for k, s in (result.get("cluster") or {}).items()
    ]


def notes(result: Mapping[str, Any]) -> list[str]:
    reason = (result.get("settings") or {}).get("cluster_skipped")
    return [f"clusters not scored: {reason}"] if reason else []


def mean_ami(evaluation: Mapping[str, Any]) -> float | None:
    """Mean AMI over the granularities of ``eval.json``'s ``cluster`` block (None: no block)."""
    block = evaluation.get("cluster") or {}
    vals = [v["ami"] for v in block.values() if isinstance(v, dict) and v.get("ami") is not None]
    return statistics.fmean(vals) if vals else None


PROTOCOL = register_protocol(
    Protocol(
        name="clusters",
        help="the run's own last E-step clusters: NMI, AMI, purity per k",
        settings=ClustersSettings,
        compute=compute,
        rows=rows,
        empty={"cluster": {}},
        columns=(SummaryColumn("ami", "AMI", mean_ami, digits=3),),
        default_on=True,
        needs_labels=False,
        trained_only=True,
        notes=notes,
    )
)
