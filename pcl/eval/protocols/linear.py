"""Linear protocol: a linear classifier on the frozen backbone, test top-1 / top-5.

``--linear-protocol features`` (default, fast): multinomial logistic regression on the frozen features
(``pcl.eval.linear_probe``), its L2 strength chosen from ``--wd-grid`` on a held-out ``--val-fraction`` of the
train split. ``--linear-protocol official``: ``eval_cls_imagenet.py``'s SGD recipe on augmented views
(``pcl.eval.linear_official``; slow, meant for a GPU). ``eval.json``: ``linear_top1``, ``linear_top5`` (percent;
null when not run) and ``settings.linear`` (``protocol`` and its settings, the chosen ``wd`` and ``val_top1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pcl.data.datasets import eval_loader
from pcl.eval.context import EvalContext
from pcl.eval.linear_official import OfficialConfig, linear_train_transform, train_official
from pcl.eval.linear_probe import DEFAULT_WDS, ProbeResult, linear_probe
from pcl.eval.registry import Block, Protocol, Rows, SummaryColumn, accuracy_se, figure, register_protocol
from pcl.utils.flags import flag, float_list

LINEAR_PROTOCOLS = ("features", "official")


@dataclass(frozen=True)
class LinearSettings:
    """Which linear protocol, the ``features`` protocol's choice of L2 strength, the ``official`` recipe."""

    protocol: str = flag(
        "features",
        "--linear-protocol",
        choices=LINEAR_PROTOCOLS,
        help="features: logistic regression on the frozen features; official: eval_cls_imagenet.py (slow, GPU)",
    )
    wd_grid: tuple[float, ...] = flag(
        DEFAULT_WDS, "--wd-grid", type=float_list, ge=0, help="features: L2 strengths to choose from (comma list)"
    )
    val_fraction: float = flag(0.2, gt=0, lt=1, help="features: held-out share of the train split for the choice")
    max_iter: int = flag(200, gt=0, help="features: L-BFGS iterations per fit")
    official: OfficialConfig = field(default_factory=OfficialConfig)


def official_probe(ctx: EvalContext, cfg: OfficialConfig) -> ProbeResult:
    """The ``official`` protocol: augmented views (RandomResizedCrop + flip), frozen backbone in eval mode."""
    train, test = ctx.sets
    pre, workers = ctx.pre, ctx.cfg.workers
    g = torch.Generator().manual_seed(ctx.seed)
    loader = torch.utils.data.DataLoader(
        train.with_transform(linear_train_transform(pre.image_size)),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        generator=g,
        pin_memory=ctx.device.type == "cuda",
    )
    torch.manual_seed(ctx.seed)
    test_loader = eval_loader(test, cfg.batch_size, workers)
    return train_official(
        pre.backbone, pre.feat_dim, len(train.classes), loader, torch.tensor(train.targets), test_loader,
        torch.tensor(test.targets), cfg, ctx.device, show=ctx.cfg.show,
    )  # fmt: skip


def compute(ctx: EvalContext, s: LinearSettings) -> Block:
    """The chosen linear protocol's test accuracies."""
    if s.protocol == "official":
        probe = official_probe(ctx, s.official)
        settings: dict = {"protocol": "official", **asdict(s.official), "seed": ctx.seed}
    else:
        f = ctx.features
        args = (f.train, f.train_labels, f.test, f.test_labels, f.num_classes)
        probe = linear_probe(*args, s.wd_grid, s.val_fraction, ctx.seed, s.max_iter)
        settings = {
            "protocol": "features",
            "wd_grid": list(s.wd_grid),
            "wd": probe.wd,
            "val_fraction": s.val_fraction,
            "val_top1": {str(k): v for k, v in probe.val_top1.items()},
            "max_iter": s.max_iter,
            "seed": ctx.seed,
        }
    return Block({"linear_top1": probe.top1, "linear_top5": probe.top5}, {"linear": settings})


def rows(result: Mapping[str, Any]) -> Rows:
    if result.get("linear_top1") is None:
        return []
    official = ((result.get("settings") or {}).get("linear") or {}).get("protocol") == "official"
    what = " (official protocol)" if official else ""
    return [(f"linear top-{k}{what}", f"{result[f'linear_top{k}']:.2f}%") for k in (1, 5)]


def top1(evaluation: Mapping[str, Any]) -> float | None:
    return figure(evaluation, "linear_top1")


def top1_se(evaluation: Mapping[str, Any]) -> float | None:
    """The binomial standard error of the linear top-1 over the test images."""
    return accuracy_se(evaluation, top1(evaluation))


PROTOCOL = register_protocol(
    Protocol(
        name="linear",
        help="linear probe on the frozen backbone (--linear-protocol features | official)",
        settings=LinearSettings,
        compute=compute,
        rows=rows,
        empty={"linear_top1": None, "linear_top5": None},
        columns=(SummaryColumn("linear", "linear top-1 (%)", top1, se=top1_se),),
        default_on=True,
    )
)
