"""Backbones: torchvision ResNets with an optional small-image stem and split BatchNorm."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from pcl.utils.errors import PCLError

ARCHS = tuple(
    sorted(n for n in models.list_models(module=models) if n.startswith(("resnet", "resnext", "wide_resnet")))
)


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over ``num_splits`` strided sub-batches.

    With the key batch shuffled before the encoder, this emulates MoCo's multi-GPU shuffle BN in one process.
    Parameters and buffers are those of ``nn.BatchNorm2d``, so weights load into a plain ResNet.
    """

    def __init__(self, num_features: int, num_splits: int, **kw: object) -> None:
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        """BatchNorm statistics over each of the ``num_splits`` interleaved sub-batches (training); plain BN in eval."""
        n, c, h, w = x.shape
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        s = self.num_splits
        mean_split = self.running_mean.repeat(s)
        var_split = self.running_var.repeat(s)
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        out = F.batch_norm(
            x.reshape(-1, c * s, h, w), mean_split, var_split, weight, bias, True, self.momentum, self.eps
        ).reshape(n, c, h, w)
        self.running_mean.copy_(mean_split.view(s, c).mean(0))
        self.running_var.copy_(var_split.view(s, c).mean(0))
        return out


def check_arch(arch: str) -> None:
    """Raise a one-line ``PCLError`` unless ``arch`` is one of :data:`ARCHS`."""
    if arch not in ARCHS:
        raise PCLError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")


def resnet_backbone(arch: str, small_stem: bool, bn_splits: int = 1) -> tuple[nn.Module, int]:
    """A torchvision ResNet with ``fc = Identity``; returns ``(module mapping (B,3,H,W)->(B,D), D)``."""
    check_arch(arch)
    norm = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    net = models.__dict__[arch](norm_layer=norm)
    if small_stem:  # CIFAR-style stem for 32-px images: 3x3 conv, stride 1, no max-pool
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim
