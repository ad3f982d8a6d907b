"""Linear probe, ``official`` protocol: MoCo / PCL ``eval_cls_imagenet.py`` on a frozen backbone.

A linear layer on the frozen backbone's average-pooled features, trained on augmented views
(RandomResizedCrop + flip) by SGD (lr 5 for PCL v2, 30 for MoCo; momentum 0.9, weight decay 0, batch 256)
for 100 epochs with lr x0.1 at epochs 60 and 80; the backbone (BatchNorm included) stays in eval mode.
Slow: it runs the backbone on every view of every epoch, so it is meant for a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import MISSING, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from pcl.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from pcl.eval.linear_probe import ProbeResult, topk_accuracy
from pcl.utils.flags import flag, int_list
from pcl.utils.logs import progress


@dataclass
class OfficialConfig:
    """The official recipe's defaults (``eval_cls_imagenet.py``; MoCo's ``main_lincls.py`` uses lr 30)."""

    epochs: int = flag(100, "--linear-epochs", gt=0, help="official: epochs")
    batch_size: int = flag(256, "--linear-batch-size", gt=0, help="official: batch size")
    lr: float = flag(5.0, "--linear-lr", gt=0, help="official: lr (5 for PCL v2, 30 for MoCo)")
    momentum: float = flag(0.9, "--linear-momentum", ge=0, lt=1, help="official: SGD momentum")
    weight_decay: float = flag(0.0, "--linear-wd", ge=0, help="official: weight decay")
    schedule: list[int] = flag(
        MISSING,
        "--linear-schedule",
        default_factory=lambda: [60, 80],
        type=int_list,
        ge=0,
        help="official: lr x0.1 at these epochs",
    )


def linear_train_transform(image_size: int) -> transforms.Compose:
    """The official linear-probe training view: RandomResizedCrop (scale 0.08-1) + horizontal flip."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def linear_classifier(feat_dim: int, num_classes: int) -> nn.Linear:
    """``nn.Linear(D, C)`` initialised as in the official code: weights N(0, 0.01), bias 0."""
    fc = nn.Linear(feat_dim, num_classes)
    nn.init.normal_(fc.weight, mean=0.0, std=0.01)
    nn.init.zeros_(fc.bias)
    return fc


def step_lr(cfg: OfficialConfig, epoch: int) -> float:
    """lr of ``epoch`` (0-based): ``lr * 0.1 ** (number of milestones <= epoch)``."""
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.schedule)


def train_official(
    backbone: nn.Module,
    feat_dim: int,
    num_classes: int,
    train_loader: DataLoader,
    train_targets: torch.Tensor,
    test_loader: DataLoader,
    test_targets: torch.Tensor,
    cfg: OfficialConfig,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    show: bool = True,
) -> ProbeResult:
    """Train the linear layer on ``train_loader``, score ``test_loader``; both yield ``(images, dataset index)``
    and ``*_targets (N,)`` give the class of each dataset index.

    ``backbone`` maps ``(B, 3, H, W) -> (B, feat_dim)``; it is frozen and kept in eval mode throughout.
    """
    backbone = backbone.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad = False
    fc = linear_classifier(feat_dim, num_classes).to(device)
    opt = torch.optim.SGD(fc.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = step_lr(cfg, epoch)
        for images, index in progress(train_loader, f"linear epoch {epoch}", show=show):
            with torch.no_grad(), autocast():
                feats = backbone(images.to(device, non_blocking=True)).float()
            loss = F.cross_entropy(fc(feats), train_targets[index].to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    logits, targets = [], []
    with torch.no_grad():
        for images, index in progress(test_loader, "linear test", show=show):
            with autocast():
                feats = backbone(images.to(device, non_blocking=True)).float()
            logits.append(fc(feats))
            targets.append(test_targets[index].to(device))
    logits_all, y = torch.cat(logits), torch.cat(targets)
    return ProbeResult(topk_accuracy(logits_all, y, 1), topk_accuracy(logits_all, y, 5), cfg.weight_decay)
