"""Fine-tuning protocol: the whole backbone + a linear head on p % of the labels (``pcl.eval.finetune``).

Per percentage, ``--finetune-draws`` seeded draws of a validation split and a labelled subset (index files in
``finetune/`` next to ``eval.json``), the frozen linear probe on the same labels (the reference row), a small grid
of learning rates fitted for a fixed number of steps, the choice made on the validation split, the chosen fit
scored on the test split. ``eval.json``: ``finetune`` (``{"<percent>": {"top1", "top1_std", "top5", "top5_std",
"linear_top1", "linear_top1_std", "linear_top5", "n_train", "n_val", "vs_linear", "recipe_failed", "draws":
[{"top1", "top5", "linear_top1", "linear_wd", "lr", "head_lr", "val_top1", "grid_val_top1", "subset_file",
"val_file", "loss_first", "loss_last"}]}}``; absent when not run) and ``settings.finetune`` (the effective recipe
of every percentage, the cost in seconds). Summary columns: fine-tune top-1 at 1 % and 10 %, and the linear
reference on the same labels.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from pcl.analysis.cluster_metrics import has_classes
from pcl.analysis.intervals import WORSE, binomial_se, paired_interval, single_interval, verdict
from pcl.config import stored_config
from pcl.data.augment import AugConfig
from pcl.eval.context import EvalContext
from pcl.eval.finetune import (
    FinetuneConfig,
    Recipe,
    balanced_subset,
    check_splits,
    diverged,
    linear_head,
    percent_key,
    predict,
    recalibrate,
    recipe,
    train,
    train_transform,
    validation_split,
    write_subset,
)
from pcl.eval.linear_official import linear_classifier
from pcl.eval.linear_probe import topk_accuracy
from pcl.eval.registry import Block, Protocol, Rows, SummaryColumn, draws_se, figure, register_protocol
from pcl.utils.errors import PCLError


@dataclasses.dataclass
class Shared:
    """What every draw of one evaluation reads: labels, file lists, the pretraining's crop scale."""

    labels: np.ndarray
    train_files: list[str]
    test_files: set[str]
    targets: torch.Tensor
    crop_min: float


def _shared(ctx: EvalContext) -> Shared:
    train, test = ctx.sets
    if not has_classes(train.targets):
        raise PCLError("--finetune needs class labels: the train split has a single class")
    crop = AugConfig().crop_min
    if ctx.pre.checkpoint is not None:
        crop = stored_config(ctx.pre.checkpoint, ctx.ckpt_path or "checkpoint").data.aug.crop_min
    test_files = {os.path.realpath(p) for p, _ in test.samples}
    return Shared(np.array(train.targets), [p for p, _ in train.samples], test_files, torch.tensor(train.targets), crop)


def _bn_images(ctx: EvalContext) -> Subset:
    """The eval-view train images a ``recalibrate`` fit recomputes its BatchNorm statistics on (``--bn-images``)."""
    train, n = ctx.sets[0], len(ctx.sets[0])
    keep = np.arange(n)
    if n > ctx.cfg.bn_images:
        keep = np.sort(np.random.default_rng(ctx.seed).choice(n, size=ctx.cfg.bn_images, replace=False))
    return Subset(train, keep.tolist())


def _files(ctx: EvalContext, p: float, draw: int, idx: np.ndarray, val: np.ndarray) -> tuple[str | None, str | None]:
    folder = ctx.side_folder("finetune")
    if folder is None:
        return None, None
    train, tag = ctx.sets[0], f"seed{ctx.seed}_draw{draw}"
    subset, val_file = folder / f"{percent_key(p)}percent_{tag}.txt", folder / f"{percent_key(p)}percent_{tag}_val.txt"
    write_subset(subset, idx, train)
    write_subset(val_file, val, train)
    return str(subset), str(val_file)


def _head(ctx: EvalContext, r: Recipe, probe_head: nn.Sequential, classes: int) -> nn.Sequential:
    """The head a fit starts from: the linear probe's (``lp``) or a random one behind the same scaling."""
    if r.init == "lp":
        return probe_head
    return nn.Sequential(probe_head[0], linear_classifier(ctx.pre.feat_dim, classes))


def _draw(ctx: EvalContext, cfg: FinetuneConfig, p: float, draw: int, sh: Shared) -> dict:
    """One draw of percentage ``p``: splits, the linear probe, the grid's fits, the choice, the test score."""
    val = validation_split(sh.labels, cfg.val_per_class, cfg.seed, draw)
    idx = balanced_subset(sh.labels, p, cfg.seed, draw, exclude=val)
    check_splits(sh.train_files, sh.test_files, idx, val)
    r = recipe(cfg, p, len(idx), sh.crop_min)
    subset_file, val_file = _files(ctx, p, draw, idx, val)
    f, dev = ctx.features, ctx.features.train.device
    it, iv = torch.as_tensor(idx, device=dev), torch.as_tensor(val, device=dev)
    probe = linear_head(f.train[it], f.train_labels[it], f.train[iv], f.train_labels[iv], f.test, f.test_labels,
                        f.num_classes)  # fmt: skip
    train_set, test_set = ctx.sets
    train_aug = train_set.with_transform(train_transform(ctx.pre.image_size, r.crop_min, r.flip))
    val_set, val_y = Subset(train_set, val.tolist()), torch.as_tensor(sh.labels[val])
    head = _head(ctx, r, probe.head, f.num_classes)
    best, grid = None, {}
    for lrs in r.grid:
        model, losses = train(ctx.pre.backbone, head, train_aug, sh.targets, idx, r, lrs, ctx.device,
                              seed=cfg.seed * 1000 + draw, workers=ctx.cfg.workers, show=ctx.cfg.show)  # fmt: skip
        if diverged(losses):
            grid[f"{lrs[0]:g}/{lrs[1]:g}"] = None  # diverged: never chosen
            continue
        if r.bn == "recalibrate":
            recalibrate(model, _bn_images(ctx), ctx.device, ctx.cfg.workers)
        score = topk_accuracy(predict(model, val_set, ctx.device, ctx.cfg.workers), val_y, 1)
        grid[f"{lrs[0]:g}/{lrs[1]:g}"] = score
        if best is None or score > best[0]:  # ties: the first in grid order
            best = (score, lrs, model, losses)
    if best is None:
        raise PCLError(f"fine-tuning {p:g}% diverged at every grid point ({', '.join(grid)}): lower --finetune-lr / "
                       "--finetune-head-lr")  # fmt: skip
    score, lrs, model, losses = best
    logits, test_y = predict(model, test_set, ctx.device, ctx.cfg.workers), torch.tensor(test_set.targets)
    return {
        "top1": topk_accuracy(logits, test_y, 1),
        "top5": topk_accuracy(logits, test_y, 5),
        "linear_top1": probe.top1,
        "linear_top5": probe.top5,
        "linear_wd": probe.wd,
        "linear_val_top1": probe.val_top1[probe.wd],
        "lr": lrs[0],
        "head_lr": lrs[1],
        "val_top1": score,
        "grid_val_top1": grid,
        "subset_file": subset_file,
        "val_file": val_file,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "n_train": len(idx),
        "n_val": len(val),
        "recipe": asdict(r),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _vs_linear(draws: list[dict], n_test: int) -> dict:
    """Fine-tune minus the frozen linear probe on the same labels, paired by draw (95 % interval)."""
    diffs = [d["top1"] - d["linear_top1"] for d in draws]
    iv = paired_interval(diffs)
    if not iv.defined:  # one draw: the two test accuracies' binomial errors
        a, b = draws[0]["top1"], draws[0]["linear_top1"]
        iv = single_interval(a, binomial_se(a, n_test), b, binomial_se(b, n_test))
    return {"diff": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": len(diffs), "method": iv.method, "verdict": verdict(iv)}


def _percent_block(draws: list[dict], n_test: int) -> dict:
    out: dict[str, Any] = {}
    for key in ("top1", "top5", "linear_top1", "linear_top5"):
        out[key], out[f"{key}_std"] = _mean_std([d[key] for d in draws])
    out.update(n_train=draws[0]["n_train"], n_val=draws[0]["n_val"], vs_linear=_vs_linear(draws, n_test))
    out["recipe_failed"] = out["vs_linear"]["verdict"] == WORSE
    out["draws"] = [{k: v for k, v in d.items() if k not in ("n_train", "n_val", "recipe")} for d in draws]
    return out


def compute(ctx: EvalContext, s: FinetuneConfig) -> Block:
    """Every percentage's draws (module docstring); the choice of every fit is made on its validation split."""
    t0, cfg = time.time(), replace(s, seed=ctx.seed)
    shared = _shared(ctx)
    n_test = len(ctx.sets[1])
    ctx.settings.setdefault("n_test", n_test)
    out, recipes = {}, {}
    for p in cfg.percents:
        draws = [_draw(ctx, cfg, p, d, shared) for d in range(cfg.draws)]
        out[percent_key(p)] = _percent_block(draws, n_test)
        recipes[percent_key(p)] = draws[0]["recipe"]
    settings = {
        "percents": list(cfg.percents),
        "preset": cfg.preset,
        "draws": cfg.draws,
        "val_per_class": cfg.val_per_class,
        "seed": cfg.seed,
        "recipes": recipes,
        "choice": "the grid point with the best top-1 on the validation split (train images, never labelled, "
        "never test); ties: the first",
        "schedule": "cosine over the fixed number of steps",
        "seconds": round(time.time() - t0, 1),
    }
    return Block({"finetune": out}, {"finetune": settings})


def rows(result: Mapping[str, Any]) -> Rows:
    out = []
    for p, s in (result.get("finetune") or {}).items():
        if "top1_std" not in s:  # an eval.json of the former protocol (one draw, no reference)
            name = f"fine-tune {p}% ({s['n_train']} images) top-1 / top-5"
            out.append((name, f"{s['top1']:.2f}% / {s['top5']:.2f}%"))
            continue
        draws = len(s["draws"])
        name = f"fine-tune {p}% ({s['n_train']} labels, {draws} draws) top-1 / top-5"
        out.append((name, f"{s['top1']:.2f} +- {s['top1_std']:.2f}% / {s['top5']:.2f} +- {s['top5_std']:.2f}%"))
        lin = f"{s['linear_top1']:.2f} +- {s['linear_top1_std']:.2f}%"
        out.append((f"  frozen linear probe, same {s['n_train']} labels, top-1", lin))
    return out


def notes(result: Mapping[str, Any]) -> list[str]:
    return [
        f"fine-tune {p}%: below the frozen linear probe on the same labels ({s['vs_linear']['diff']:+.2f} points): the "
        "recipe failed, not the encoder"
        for p, s in (result.get("finetune") or {}).items()
        if s.get("recipe_failed")
    ]


def _block(e: Mapping[str, Any], p: str) -> Any:
    return (e.get("finetune") or {}).get(p)


def _top1(p: str) -> SummaryColumn:
    return SummaryColumn(f"finetune_{p}", f"fine-tune top-1 {p}% (%)", lambda e: figure(e, "finetune", p, "top1"),
                         se=lambda e: draws_se(e, _block(e, p)))  # fmt: skip


def _linear(p: str) -> SummaryColumn:
    return SummaryColumn(f"finetune_lp_{p}", f"linear, same {p}% labels (%)",
                         lambda e: figure(e, "finetune", p, "linear_top1"),
                         se=lambda e: draws_se(e, _block(e, p), "linear_top1"))  # fmt: skip


PROTOCOL = register_protocol(
    Protocol(
        name="finetune",
        help="backbone + linear head trained on --finetune percent of the labels, lr chosen on a validation split",
        settings=FinetuneConfig,
        compute=compute,
        rows=rows,
        columns=(_top1("1"), _top1("10"), _linear("1"), _linear("10")),
        switch="percents",
        notes=notes,
    )
)
