"""Encoders: a backbone followed by the shared projection head, and the model's settings (``--arch`` ...)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from pcl.model.backbone import ARCHS, BackboneSpec, build_backbone, check_arch, probe_backbone
from pcl.model.heads import CLUSTER_HEADS, projection_head
from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, flag


@dataclass
class ModelConfig:
    """The encoders' settings (``--arch`` ... ``--pretrained``); the defaults are the command line's.

    ``pcl_r`` is the queue size, which is also the number of negatives of InfoNCE and of ProtoNCE. ``bn_splits``
    applies in a single process only (DDP uses 1), and only to backbones with batch norm.
    """

    GROUP: ClassVar[str] = "model"

    arch: str = flag(
        "resnet18",
        "-a",
        "--arch",
        help=f"torchvision ResNet ({', '.join(ARCHS)}) or any timm model (vit_tiny_patch16_224, convnext_atto, "
        "timm:resnet50, ...; docs/training.md)",
    )
    stem: str = flag(
        "imagenet",
        choices=("imagenet", "small"),
        help="small = CIFAR stem (3x3 stride-1 conv, no max-pool): better for 32-px data, ~12x the compute",
    )
    low_dim: int = flag(128, gt=0, le=65536, help="embedding dimension")
    pcl_r: int = flag(
        1024, gt=0, help="queue size = number of negatives, instance and prototype (official ImageNet: 16384)"
    )
    moco_m: float = flag(0.99, ge=0, lt=1, help="momentum of the key encoder (official: 0.999)")
    mlp: bool = flag(True, action=argparse.BooleanOptionalAction, help="MoCo v2 MLP head")
    cluster_head: str = flag("none", choices=CLUSTER_HEADS, help="extra head for the cluster task")
    bn_splits: int = flag(8, gt=0, help="sub-batches for single-process shuffle BN (1 = plain BN)")
    patch_size: int | None = flag(  # None: the model's (16 for vit_*_patch16_*)
        None, type=int, gt=0, le=1024, help="ViT patch size (timm ViTs; default: the model's, e.g. 4 for 32-px images)"
    )
    pretrained: Path | None = flag(  # None: random initialisation
        None,
        type=Path,
        help="initialise the backbone from this local weights file (.safetensors / .pth; never downloaded)",
    )

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range, an unknown arch or a missing
        ``--pretrained`` file (before any data is read)."""
        check_arch(self.arch)
        check_fields(self)
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise PCLError(
                f"--pretrained {self.pretrained}: no such file; weights are never downloaded (no network): fetch "
                "them elsewhere (e.g. the model's safetensors file from its hub page) and give the local file"
            )

    def backbone(self, bn_splits: int | None = None, image_size: int = 32) -> BackboneSpec:
        """The backbone these settings name, built for ``image_size`` px (the global crops and eval view:
        ``--image-size``); ``bn_splits`` overrides ``self.bn_splits`` (1 for a backbone without batch norm)."""
        splits = self.bn_splits if bn_splits is None else bn_splits
        spec = BackboneSpec(self.arch, self.stem, image_size, splits, self.patch_size, True, self.pretrained)
        if splits > 1 and self.arch not in ARCHS and not probe_backbone(spec).batchnorm:
            spec = BackboneSpec(self.arch, self.stem, image_size, 1, self.patch_size, True, self.pretrained)
        return spec


class Encoder(nn.Module):
    """Backbone followed by the shared projection head: ``(B,3,H,W) -> (B, low_dim)`` (not normalised)."""

    def __init__(self, spec: BackboneSpec, low_dim: int, mlp: bool) -> None:
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(spec)
        self.head = projection_head(self.feat_dim, low_dim, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, low_dim)`` (not normalised)."""
        return self.head(self.backbone(x))
