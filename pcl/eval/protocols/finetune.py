"""Fine-tuning protocol: the whole backbone + a linear head on p % of the labels (``pcl.eval.finetune``).

Each percentage's class-balanced seeded subset is written as an index file to ``finetune/`` next to ``eval.json``.
``eval.json``: ``finetune`` (``{"<percent>": {"top1", "top5", "n_train", "subset_file", "epoch_loss"}}``; absent
when not run) and ``settings.finetune``. Summary columns: top-1 at 1 % and 10 %.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from pcl.analysis.cluster_metrics import has_classes
from pcl.eval.context import EvalContext
from pcl.eval.finetune import FinetuneConfig, balanced_subset, finetune, percent_key, write_subset
from pcl.eval.linear_official import linear_train_transform
from pcl.eval.registry import Block, Protocol, Rows, SummaryColumn, figure, register_protocol
from pcl.utils.errors import PCLError


def compute(ctx: EvalContext, s: FinetuneConfig) -> Block:
    """Fine-tune a copy of the backbone on each percentage's subset, score the test split."""
    cfg = replace(s, seed=ctx.seed)
    train, test = ctx.sets
    if not has_classes(train.targets):
        raise PCLError("--finetune needs class labels: the train split has a single class")
    train_aug = train.with_transform(linear_train_transform(ctx.pre.image_size))
    folder = ctx.side_folder("finetune")
    out = {}
    for p in cfg.percents:
        idx = balanced_subset(np.array(train.targets), p, cfg.seed)
        subset_file = None if folder is None else folder / f"{percent_key(p)}percent_seed{cfg.seed}.txt"
        if subset_file is not None:
            write_subset(subset_file, idx, train)
        res = finetune(ctx.pre.backbone, ctx.pre.feat_dim, train_aug, idx, test, cfg, ctx.device, ctx.cfg.workers,
                       ctx.cfg.show)  # fmt: skip
        out[percent_key(p)] = {
            "top1": res.top1,
            "top5": res.top5,
            "n_train": res.n_train,
            "subset_file": None if subset_file is None else str(subset_file),
            "epoch_loss": res.epoch_loss,
        }
    settings = {**asdict(cfg), "schedule": "cosine over all steps", "augmentation": "RandomResizedCrop + flip"}
    return Block({"finetune": out}, {"finetune": settings})


def rows(result: Mapping[str, Any]) -> Rows:
    return [
        (f"fine-tune {p}% ({s['n_train']} images) top-1 / top-5", f"{s['top1']:.2f}% / {s['top5']:.2f}%")
        for p, s in (result.get("finetune") or {}).items()
    ]


def _top1(p: str) -> SummaryColumn:
    return SummaryColumn(f"finetune_{p}", f"fine-tune top-1 {p}% (%)", lambda e: figure(e, "finetune", p, "top1"))


PROTOCOL = register_protocol(
    Protocol(
        name="finetune",
        help="backbone + linear head trained on --finetune percent of the labels",
        settings=FinetuneConfig,
        compute=compute,
        rows=rows,
        columns=(_top1("1"), _top1("10")),
        switch="percents",
    )
)
