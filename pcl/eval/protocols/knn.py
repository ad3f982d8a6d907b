"""kNN protocol: weighted kNN top-1 on the L2-normalised frozen features, the train split as the bank.

``eval.json``: ``knn_top1`` (percent; null when not run) and ``settings.knn`` (``k``, ``t``, ``features``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F

from pcl.analysis.knn import knn_top1
from pcl.eval.context import EvalContext
from pcl.eval.frozen import FrozenFeatures
from pcl.eval.registry import Block, Protocol, Rows, SummaryColumn, accuracy_se, figure, register_protocol
from pcl.utils.flags import flag


@dataclass(frozen=True)
class KnnSettings:
    """Neighbours and temperature of the weighted vote (the training monitor's defaults)."""

    k: int = flag(200, "--knn-k", gt=0, help="neighbours")
    t: float = flag(0.1, "--knn-t", gt=0, help="temperature of the similarity weights")


def knn_accuracy(feats: FrozenFeatures, k: int = 200, t: float = 0.1) -> float:
    """Weighted kNN top-1 (%) on the L2-normalised features (train split as the bank)."""
    bank, query = F.normalize(feats.train, dim=1), F.normalize(feats.test, dim=1)
    return knn_top1(bank, feats.train_labels, query, feats.test_labels, feats.num_classes, k, t)


def compute(ctx: EvalContext, s: KnnSettings) -> Block:
    """kNN top-1 of the context's frozen features."""
    top1 = knn_accuracy(ctx.features, s.k, s.t)
    return Block({"knn_top1": top1}, {"knn": {"k": s.k, "t": s.t, "features": ctx.feature_note}})


def rows(result: Mapping[str, Any]) -> Rows:
    top1 = result.get("knn_top1")
    return [] if top1 is None else [("kNN top-1", f"{top1:.2f}%")]


def top1(evaluation: Mapping[str, Any]) -> float | None:
    return figure(evaluation, "knn_top1")


def top1_se(evaluation: Mapping[str, Any]) -> float | None:
    """The binomial standard error of the kNN top-1 over the test images."""
    return accuracy_se(evaluation, top1(evaluation))


PROTOCOL = register_protocol(
    Protocol(
        name="knn",
        help="weighted kNN top-1 (k = --knn-k, t = --knn-t) on the frozen features",
        settings=KnnSettings,
        compute=compute,
        rows=rows,
        empty={"knn_top1": None},
        columns=(SummaryColumn("knn", "kNN top-1 (%)", top1, always=True, se=top1_se),),
        default_on=True,
    )
)
