"""Backbones: one :func:`build_backbone` for the model, evaluation, export and the untrained reference.

A backbone maps ``(B, 3, H, W)`` images to ``(B, D)`` features (no classifier). Builders are registered by
family in :data:`BACKBONES` (:func:`register_backbone`); the family of a name is the first whose ``accepts``
says yes: torchvision ResNets (``--arch resnet18`` ...) with an optional small-image stem and split BatchNorm,
then any timm model (:mod:`pcl.model.timm_backbone`: ViT, ConvNeXt, ...). :func:`probe_backbone` builds a spec on
the meta device (no memory, no random numbers) to learn what it is (batch norm, ViT-like) and which input sizes it
takes.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

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
    """What a backbone is built from: its name (``--arch``), the stem (``imagenet`` | ``small``, torchvision
    ResNets), the image size it is built for (``--image-size``: a ViT's position embeddings), the number of
    split-BatchNorm sub-batches (1 = plain BN), a ViT's patch size (None: the model's), whether a ViT takes other
    input sizes too (``dynamic_img_size``, for local crops) and a local weights file to start from (``--pretrained``;
    None: random initialisation)."""

    arch: str
    stem: str = "imagenet"
    image_size: int = 32
    bn_splits: int = 1
    patch_size: int | None = None
    dynamic_size: bool = True
    pretrained: str | Path | None = None


@dataclass(frozen=True)
class BackboneFamily:
    """A registered builder: ``accepts(name)`` says whether it builds ``name``; ``build(spec)`` returns
    ``(module (B,3,H,W) -> (B,D), D)``; ``names`` lists the names for help texts and error messages (``about``
    describes a family too large to list, ``catalogue()`` gives all its names for close matches)."""

    name: str
    accepts: Callable[[str], bool]
    build: Callable[[BackboneSpec], tuple[nn.Module, int]]
    names: tuple[str, ...]
    about: str = ""
    catalogue: Callable[[], Sequence[str]] | None = None


BACKBONES: list[BackboneFamily] = []


def register_backbone(family: BackboneFamily) -> BackboneFamily:
    """Add a family of backbones to :data:`BACKBONES` (later families are asked after earlier ones)."""
    BACKBONES.append(family)
    return family


def backbone_family(arch: str) -> BackboneFamily:
    """The registered family that builds ``arch``; a one-line ``PCLError`` with the closest known names otherwise."""
    for family in BACKBONES:
        if family.accepts(arch):
            return family
    every = list(dict.fromkeys(n for f in BACKBONES for n in (f.catalogue() if f.catalogue is not None else f.names)))
    close = difflib.get_close_matches(arch, every, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}; " if close else ""
    kinds = "; ".join(f.about or ", ".join(f.names) for f in BACKBONES)
    raise PCLError(f"unknown arch {arch!r}; {hint}choose from {kinds}")


def check_arch(arch: str) -> None:
    """Raise a one-line ``PCLError`` unless a registered family builds ``arch``."""
    backbone_family(arch)


def build_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """The backbone ``spec`` names, with its feature dimension: ``(module (B,3,H,W) -> (B,D), D)``."""
    return backbone_family(spec.arch).build(spec)


def has_batchnorm(net: nn.Module) -> bool:
    """True when ``net`` holds a batch-norm layer (shuffle BN and split BN then matter)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def is_vit_like(net: nn.Module) -> bool:
    """True for a transformer on image patches (a ``patch_embed`` module: timm's ViT, DeiT, Swin, EVA ...)."""
    return isinstance(getattr(net, "patch_embed", None), nn.Module)


@dataclass(frozen=True)
class BackboneProbe:
    """What a spec builds, learnt on the meta device: its feature dimension, whether it has batch norm, whether it
    is ViT-like (:func:`is_vit_like`)."""

    dim: int
    batchnorm: bool
    vit: bool


@functools.cache
def probe_backbone(spec: BackboneSpec) -> BackboneProbe:
    """Build ``spec`` (without weights) on the meta device: no memory, no random numbers drawn."""
    with torch.device("meta"):
        net, dim = build_backbone(replace(spec, pretrained=None, bn_splits=1))
    return BackboneProbe(dim, has_batchnorm(net), is_vit_like(net))


def check_input_sizes(spec: BackboneSpec, sizes: Sequence[int]) -> None:
    """Raise a one-line ``PCLError`` when the backbone cannot take square inputs of every size in ``sizes`` px
    (e.g. a ConvNeXt below 32 px; tried on the meta device)."""
    with torch.device("meta"):
        net, _ = build_backbone(replace(spec, pretrained=None, bn_splits=1))
        for size in sorted(set(sizes)):
            try:
                net.eval()(torch.empty(2, 3, size, size))
            except (RuntimeError, ValueError, AssertionError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise PCLError(
                    f"--arch {spec.arch} cannot take {size}-px crops ({first}); use larger crops (--image-size, "
                    "--local-crop-size)" + ("" if spec.patch_size is None else " or another --patch-size")
                ) from None


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


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors``, else a ``torch.save`` state dict (``weights_only``); a
    one-line ``PCLError`` for a missing or unreadable file or one that holds other objects."""
    path = Path(path)
    if not path.is_file():
        raise PCLError(f"{what} {path}: no such file (weights are never downloaded: give a local file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PCLError(f"{what} {path} cannot be read as a state dict: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PCLError(f"{what} {path} is not a state dict of tensors")
    return state


def torchvision_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """:func:`resnet_backbone` for ``spec``, initialised from ``spec.pretrained`` (a torchvision state dict, its
    ``fc.*`` ignored) when given."""
    net, dim = resnet_backbone(spec.arch, spec.stem == "small", spec.bn_splits)
    if spec.pretrained is not None:
        state = {k: v for k, v in read_state_dict(spec.pretrained, "--pretrained").items() if not k.startswith("fc.")}
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            what = f"--pretrained {spec.pretrained}"
            raise PCLError(f"{what} does not fit a {spec.arch} ({spec.stem} stem): {first}") from None
    return net, dim


register_backbone(
    BackboneFamily("torchvision", accepts=lambda name: name in ARCHS, build=torchvision_backbone, names=ARCHS)
)
