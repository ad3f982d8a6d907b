"""Semi-supervised and full fine-tuning: the whole backbone plus a linear head trained on p % of the labels.

For each percentage p, a class-balanced seeded subset of the train split (the same number of images from every
class, ``round(p / 100 * N / C)``, at least one; 100 % = every image) is written as an index file, so that another
run or another codebase can train on the same images. The backbone (BatchNorm in train mode) and a linear head are
trained by SGD with momentum, a small lr for the backbone and a larger one for the head, a cosine schedule over
all steps, on RandomResizedCrop + flip views; the test split is scored by top-1 and top-5 (center crop, eval mode).

CPU defaults (``FinetuneConfig``): 30 epochs of the subset, batch 32, lr 0.01 backbone / 0.1 head, weight decay 0,
momentum 0.9. A GPU setting after SwAV's published recipe (ImageNet, batch 256, 20 epochs): lr 0.02 backbone / 5
head for 1 %, 0.01 / 0.2 for 10 % (``tools/evaluate.py --finetune-lr 0.02 --finetune-head-lr 5 --finetune-epochs 20
--finetune-batch-size 256``).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pcl.data.datasets import IndexedImageFolder, eval_loader
from pcl.eval.linear_official import linear_classifier
from pcl.eval.linear_probe import topk_accuracy
from pcl.utils.atomic import write_atomic
from pcl.utils.errors import PCLError
from pcl.utils.flags import flag, float_list


@dataclass(frozen=True)
class FinetuneConfig:
    """Label fractions (percent) and the SGD recipe; the defaults fine-tune 1 % and 10 % of the bundled data."""

    percents: tuple[float, ...] = flag(
        (1.0, 10.0), "--finetune", type=float_list, gt=0, le=100, help="percent of the labels; turns it on"
    )
    epochs: int = flag(30, "--finetune-epochs", gt=0, help="passes over the label subset")
    batch_size: int = flag(32, "--finetune-batch-size", gt=0)
    lr: float = flag(0.01, "--finetune-lr", gt=0, help="backbone lr (cosine schedule)")
    head_lr: float = flag(0.1, "--finetune-head-lr", gt=0, help="linear head lr")
    momentum: float = 0.9
    weight_decay: float = flag(0.0, "--finetune-wd", ge=0, help="weight decay")
    seed: int = 0  # the evaluation's --seed


@dataclass
class FinetuneResult:
    """Test accuracies (%), the subset size and the mean training loss of every epoch; ``model`` is the trained
    ``nn.Sequential(backbone, head)`` (not serialised)."""

    top1: float
    top5: float
    n_train: int
    epoch_loss: list[float] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)


def percent_key(p: float) -> str:
    """``1.0 -> "1"``, ``0.5 -> "0.5"``: the key of a percentage in ``eval.json`` and in file names."""
    return f"{p:g}"


def balanced_subset(labels: np.ndarray, percent: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced seeded ``percent`` % of ``labels (N,)``: ``round(percent / 100 * N / C)``
    (at least 1) images of every class, drawn without replacement; 100 % is every index.

    Seeded by ``(seed, percent)`` only. Raises ``PCLError`` when a class has too few images.
    """
    labels = np.asarray(labels)
    if not 0 < percent <= 100:
        raise PCLError(f"--finetune percentages must lie in (0, 100], got {percent:g}")
    if percent == 100:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    per_class = max(1, round(percent / 100 * len(labels) / len(classes)))
    if per_class > counts.min():
        smallest = classes[counts.argmin()]
        raise PCLError(
            f"--finetune {percent:g}% needs {per_class} images per class but class {smallest} has {counts.min()}"
        )
    rng = np.random.default_rng([seed, round(percent * 1000)])
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(picks))


def write_subset(path: Path, indices: np.ndarray, dataset: IndexedImageFolder) -> None:
    """One line per image of the subset: ``INDEX<TAB>class/file`` (the path relative to the split's root)."""
    root = dataset.root
    lines = [f"{int(i)}\t{os.path.relpath(dataset.samples[int(i)][0], root)}\n" for i in indices]
    text = "".join(lines).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write(text), "fine-tuning subset")


def read_subset(path: Path) -> np.ndarray:
    """The indices of an index file written by :func:`write_subset`."""
    return np.array([int(line.split("\t", 1)[0]) for line in path.read_text().splitlines() if line])


def cosine_lr(base: float, step: int, total: int) -> float:
    """``base * (1 + cos(pi * step / total)) / 2``: from ``base`` at step 0 towards 0 at ``total``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


@torch.no_grad()
def _score(model: nn.Module, loader: DataLoader, targets: torch.Tensor, device: torch.device) -> tuple[float, float]:
    model.eval()
    logits, ys = [], []
    for images, index in loader:
        logits.append(model(images.to(device, non_blocking=True)).float().cpu())
        ys.append(targets[index])
    out, y = torch.cat(logits), torch.cat(ys)
    return topk_accuracy(out, y, 1), topk_accuracy(out, y, 5)


def finetune(
    backbone: nn.Module,
    feat_dim: int,
    train_aug: IndexedImageFolder,
    indices: np.ndarray,
    test: IndexedImageFolder,
    cfg: FinetuneConfig,
    device: torch.device,
    workers: int = 2,
    show: bool = True,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` (``(B, 3, H, W) -> (B, feat_dim)``; the original is left untouched) and a
    linear head on the ``indices`` of ``train_aug`` (augmented views), score ``test`` (eval transform)."""
    torch.manual_seed(cfg.seed)
    net = copy.deepcopy(backbone)
    for p in net.parameters():
        p.requires_grad = True
    head = linear_classifier(feat_dim, len(train_aug.classes))
    model = nn.Sequential(net, head).to(device)
    groups = [
        {"params": list(net.parameters()), "lr": cfg.lr, "base_lr": cfg.lr},
        {"params": list(head.parameters()), "lr": cfg.head_lr, "base_lr": cfg.head_lr},
    ]
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    targets = torch.tensor(train_aug.targets)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        Subset(train_aug, [int(i) for i in indices]),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        generator=g,
        pin_memory=device.type == "cuda",
    )
    total, step, epoch_loss = cfg.epochs * len(loader), 0, []
    for epoch in range(cfg.epochs):
        model.train()  # BatchNorm in train mode: the backbone is fine-tuned, not frozen
        losses = []
        for images, index in tqdm(loader, desc=f"fine-tune epoch {epoch}", disable=not show, leave=False):
            if len(index) < 2:  # BatchNorm cannot train on one image; the schedule still advances
                step += 1
                continue
            for group in opt.param_groups:
                group["lr"] = cosine_lr(group["base_lr"], step, total)
            loss = F.cross_entropy(model(images.to(device, non_blocking=True)), targets[index].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        if not all(math.isfinite(v) for v in losses):
            raise PCLError(f"fine-tuning diverged (non-finite loss at epoch {epoch}); lower --finetune-lr/head-lr")
        epoch_loss.append(float(np.mean(losses)) if losses else float("nan"))
    test_targets = torch.tensor(test.targets)
    top1, top5 = _score(model, eval_loader(test, 256, workers), test_targets, device)
    return FinetuneResult(top1, top5, len(indices), epoch_loss, model)
