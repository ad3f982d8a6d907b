"""Low-shot protocol: one-vs-rest linear SVMs on k frozen features per class (``pcl.eval.lowshot``).

``eval.json``: ``lowshot`` (``{"<k>": {"top1", "top1_std", "map", "map_std", "cost_selection", "draws"}}``; absent
when not run) and ``settings.lowshot``. Summary columns: top-1 at k = 1 and k = 16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from pcl.analysis.cluster_metrics import has_classes
from pcl.eval.context import EvalContext
from pcl.eval.lowshot import OFFICIAL_COST, LowShotConfig, lowshot_svm
from pcl.eval.registry import Block, Protocol, Rows, SummaryColumn, draws_se, figure, pm, register_protocol
from pcl.utils.errors import PCLError


def compute(ctx: EvalContext, s: LowShotConfig) -> Block:
    """Low-shot SVM top-1 and mAP per k on the context's frozen features (seeded by the evaluation's seed)."""
    feats, cfg = ctx.features, replace(s, seed=ctx.seed)
    if not has_classes(feats.train_labels):
        raise PCLError("--lowshot needs class labels: the train split has a single class")
    result = lowshot_svm(feats.train, feats.train_labels, feats.test, feats.test_labels, cfg)
    settings = {
        **asdict(cfg),
        "features": f"{ctx.encoder} backbone, L2-normalised",
        "svm": "one-vs-rest LinearSVC, squared hinge, class_weight {1: 2, -1: 1}, max_iter 2000",
        "cost": f"cross-validated in the k-shot sample (k >= 2), else the official fixed {OFFICIAL_COST}",
    }
    return Block({"lowshot": result}, {"lowshot": settings})


def rows(result: Mapping[str, Any]) -> Rows:
    out = []
    for k, s in (result.get("lowshot") or {}).items():
        name = f"low-shot k={k} ({len(s['draws'])} draws, cost {s['cost_selection']})"
        out.append((f"{name} top-1 / mAP", f"{pm(s, 'top1', unit='%')} / {pm(s, 'map', unit='%')}"))
    return out


def _top1(k: str) -> SummaryColumn:
    return SummaryColumn(f"lowshot_k{k}", f"low-shot top-1 k={k} (%)", lambda e: figure(e, "lowshot", k, "top1"),
                         se=lambda e: draws_se(e, (e.get("lowshot") or {}).get(k)))  # fmt: skip


PROTOCOL = register_protocol(
    Protocol(
        name="lowshot",
        help="linear SVMs on k = --lowshot images per class, --lowshot-draws seeded draws",
        settings=LowShotConfig,
        compute=compute,
        rows=rows,
        columns=(_top1("1"), _top1("16")),
        switch="ks",
    )
)
