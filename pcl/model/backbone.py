"""Backbones: one :func:`build_backbone` for the model, evaluation, export and the untrained reference.

A backbone maps ``(B, 3, H, W)`` images to ``(B, D)`` features (no classifier). Builders are registered by
family in :data:`BACKBONES` (:func:`register_backbone`); the family of a name is the first whose ``accepts``
says yes. Today: torchvision ResNets (``--arch resnet18`` ...) with an optional small-image stem and split
BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is built from: its name (``--arch``), the stem (``imagenet`` | ``small``), the image size
    and the number of split-BatchNorm sub-batches (1 = plain BN)."""

    arch: str
    stem: str = "imagenet"
    image_size: int = 32
    bn_splits: int = 1


@dataclass(frozen=True)
class BackboneFamily:
    """A registered builder: ``accepts(name)`` says whether it builds ``name``; ``build(spec)`` returns
    ``(module (B,3,H,W) -> (B,D), D)``; ``names`` lists the names for help texts and error messages."""

    name: str
    accepts: Callable[[str], bool]
    build: Callable[[BackboneSpec], tuple[nn.Module, int]]
    names: tuple[str, ...]


BACKBONES: list[BackboneFamily] = []


def register_backbone(family: BackboneFamily) -> BackboneFamily:
    """Add a family of backbones to :data:`BACKBONES` (later families are asked after earlier ones)."""
    BACKBONES.append(family)
    return family


def backbone_family(arch: str) -> BackboneFamily:
    """The registered family that builds ``arch``; a one-line ``PCLError`` with the known names otherwise."""
    for family in BACKBONES:
        if family.accepts(arch):
            return family
    known = ", ".join(n for f in BACKBONES for n in f.names)
    raise PCLError(f"unknown arch {arch!r}; choose from {known}")


def check_arch(arch: str) -> None:
    """Raise a one-line ``PCLError`` unless a registered family builds ``arch``."""
    backbone_family(arch)


def build_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """The backbone ``spec`` names, with its feature dimension: ``(module (B,3,H,W) -> (B,D), D)``."""
    return backbone_family(spec.arch).build(spec)


def resnet_backbone(arch: str, small_stem: bool, bn_splits: int = 1) -> tuple[nn.Module, int]:
    """A torchvision ResNet with ``fc = Identity``; returns ``(module mapping (B,3,H,W)->(B,D), D)``."""
    if arch not in ARCHS:
        raise PCLError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    norm = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    net = models.__dict__[arch](norm_layer=norm)
    if small_stem:  # CIFAR-style stem for 32-px images: 3x3 conv, stride 1, no max-pool
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


register_backbone(
    BackboneFamily(
        "torchvision",
        accepts=lambda name: name in ARCHS,
        build=lambda spec: resnet_backbone(spec.arch, spec.stem == "small", spec.bn_splits),
        names=ARCHS,
    )
)
