"""Data stage: the training augmentation as one declarative recipe, rendered for PIL images and for kornia.

A :class:`Recipe` is a list of op specs with their parameters (random-resized crop, colour jitter, grayscale,
Gaussian blur, horizontal flip, to-tensor, normalize), made from :class:`AugConfig` and one crop group of the
view spec (:mod:`pcl.data.views`) by a builder registered in :data:`RECIPES` (``mocov2``, ``mocov1``).
``Recipe.pil()`` renders it to a torchvision ``Compose`` for the DataLoader path (the ops, order, parameters
and random stream of the MoCo code); ``Recipe.kornia()`` to an ``nn.Sequential`` for ``(B, 3, H, W)`` float
batches in [0, 1] on the training device (``--gpu-aug``).

Differences of the kornia rendering (same parameter distributions; tested on crop scales, output ranges):
ColorJitter's order of the four adjustments is drawn per call (one call per crop group, shared by its views)
rather than per image; resizing is kornia's bilinear interpolation (no antialiasing) rather than PIL's; blur
uses a Gaussian kernel of about 10 % of the crop size (odd, >= 3) instead of PIL's radius-based filter; an op
with p = 0 is left out (the PIL rendering keeps it: its coin is drawn, which keeps the random stream).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import ClassVar

import torch
from PIL import Image, ImageFilter
from torch import nn
from torchvision import transforms

from pcl.data.views import GLOBAL, LOCAL, CropGroup, ViewSpec
from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, flag, float_list

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugConfig:
    """Augmentation strength (``--image-size`` ... ``--blur-prob``); MoCo v2's ``--aug-plus`` recipe at 32 px; the
    views of a batch (``--global-crops``, ``--local-crops`` ...: multi-crop, :meth:`view_spec`)."""

    GROUP: ClassVar[str] = "data and augmentation"

    image_size: int = flag(32, gt=0, le=4096)
    aug_plus: bool = flag(True, action=argparse.BooleanOptionalAction, help="MoCo v2 augmentation")
    crop_min: float = flag(0.2, gt=0, le=1, help="RandomResizedCrop minimum scale (of the global crops)")
    color_jitter: float = flag(0.4, ge=0, le=2, help="colour-jitter strength")
    color_jitter_prob: float = flag(0.8, ge=0, le=1)
    grayscale_prob: float = flag(0.2, ge=0, le=1)
    blur_prob: float | None = flag(  # None: 0.5, or 0 for images <= 64 px
        None, type=float, ge=0, le=1, help="Gaussian-blur probability (default: 0.5, or 0 for images <= 64 px)"
    )
    global_crops: int = flag(
        2, gt=0, le=64, help="global crops per image (--image-size px, scale (--crop-min, 1)): the query and key views"
    )
    local_crops: int = flag(0, ge=0, le=64, help="local (multi-crop) crops per image: extra queries (0: off)")
    local_crop_size: int | None = flag(  # None: 96/224 of --image-size, a multiple of 8
        None, type=int, gt=0, le=4096, help="side of the local crops, px (default: 96/224 of --image-size: 16 at 32)"
    )
    local_crop_scale: list[float] | None = flag(  # None: (min(0.05, crop_min), crop_min)
        None,
        type=float_list,
        gt=0,
        le=1,
        help="scale range MIN,MAX of the local crops (default: 0.05 up to the global crops' minimum; SwAV: 0.05,0.14)",
    )

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range (the hue jitter is strength / 4
        with ``aug_plus``, strength without, and torchvision accepts at most 0.5), or a bad view spec."""
        check_fields(self)
        if not self.aug_plus and self.color_jitter > 0.5:
            raise PCLError(
                f"--color-jitter must be <= 0.5 with --no-aug-plus (it is the hue jitter), got {self.color_jitter}"
            )
        scale = self.local_crop_scale
        if scale is not None and (len(scale) != 2 or scale[0] > scale[1]):
            raise PCLError(f"--local-crop-scale must be two numbers MIN,MAX with MIN <= MAX, got {scale}")
        self.view_spec().validate()

    def resolved(self) -> AugConfig:
        """This config with the derived defaults filled in (``blur_prob``; with local crops their size and scale)."""
        out = self if self.blur_prob is not None else replace(self, blur_prob=0.0 if self.image_size <= 64 else 0.5)
        if out.local_crops and out.local_crop_size is None:
            out = replace(out, local_crop_size=default_local_size(out.image_size))
        if out.local_crops and out.local_crop_scale is None:
            out = replace(out, local_crop_scale=[min(0.05, out.crop_min), out.crop_min])
        return out

    def view_spec(self) -> ViewSpec:
        """The views of a batch: ``global_crops`` crops of ``image_size`` at scale ``(crop_min, 1)``, then
        ``local_crops`` of ``local_crop_size`` at ``local_crop_scale`` (the defaults: two global crops, no local)."""
        groups = [CropGroup(self.global_crops, self.image_size, (self.crop_min, 1.0), GLOBAL)]
        if self.local_crops:
            r = self.resolved()
            scale = (float(r.local_crop_scale[0]), float(r.local_crop_scale[-1]))
            groups.append(CropGroup(self.local_crops, r.local_crop_size, scale, LOCAL))
        return ViewSpec(tuple(groups))


def default_local_size(image_size: int) -> int:
    """Local crop side of SwAV / DINO (96 px for 224 px images) scaled to ``image_size``, rounded to a multiple of
    8 (at least 8): 16 px for 32-px images, 96 for 224."""
    return max(8, round(image_size * 96 / 224 / 8) * 8)


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian kernel of about 10 % of the image size (SimCLR), at least 3 (the kornia blur)."""
    k = max(3, int(0.1 * image_size))
    return k if k % 2 else k + 1


class PILGaussianBlur:
    """Gaussian blur of a PIL image with a random radius, as in MoCo v2 / SimCLR."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, x: Image.Image) -> Image.Image:
        """``x`` blurred with a sigma drawn uniformly from ``self.sigma``."""
        s = float(torch.empty(1).uniform_(*self.sigma))
        return x.filter(ImageFilter.GaussianBlur(radius=s))


def _kornia() -> ModuleType:
    import kornia.augmentation as K  # imported when a kornia pipeline is built (a second of start-up)

    return K


class AugOp:
    """One op of a recipe with its parameters, and its two renderings: :meth:`pil` (torchvision transforms on a
    PIL image or a ``(3, H, W)`` tensor) and :meth:`kornia` (modules on ``(B, 3, H, W)`` floats in [0, 1])."""

    def pil(self) -> list[Callable]:
        """The torchvision transforms of this op, in order."""
        raise NotImplementedError

    def kornia(self) -> list[nn.Module]:
        """The kornia modules of this op, in order (none when it does nothing on a batch)."""
        raise NotImplementedError


def _coin(op: Callable, p: float | None) -> Callable:
    """``op`` applied with probability ``p`` (``None``: always, no coin drawn)."""
    return op if p is None else transforms.RandomApply([op], p=p)


@dataclass(frozen=True)
class ResizedCrop(AugOp):
    """RandomResizedCrop to ``size`` x ``size``: area fraction in ``scale``, aspect ratio in ``ratio``."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def pil(self) -> list[Callable]:
        return [transforms.RandomResizedCrop(self.size, scale=self.scale, ratio=self.ratio)]

    def kornia(self) -> list[nn.Module]:
        return [_kornia().RandomResizedCrop((self.size, self.size), scale=self.scale, ratio=self.ratio)]


@dataclass(frozen=True)
class ColorJitter(AugOp):
    """Brightness, contrast, saturation and hue jitter of these strengths, with probability ``p`` (None: always)."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    p: float | None = None

    def pil(self) -> list[Callable]:
        return [_coin(transforms.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue), self.p)]

    def kornia(self) -> list[nn.Module]:
        p = 1.0 if self.p is None else self.p
        strengths = (self.brightness, self.contrast, self.saturation, self.hue)
        return [_kornia().ColorJitter(*strengths, p=p)] if p > 0 else []


@dataclass(frozen=True)
class Grayscale(AugOp):
    """Grey image (three equal channels) with probability ``p``."""

    p: float

    def pil(self) -> list[Callable]:
        return [transforms.RandomGrayscale(p=self.p)]

    def kornia(self) -> list[nn.Module]:
        return [_kornia().RandomGrayscale(p=self.p)] if self.p > 0 else []


@dataclass(frozen=True)
class GaussianBlur(AugOp):
    """Gaussian blur, sigma uniform in ``sigma``, with probability ``p`` (None: always); ``kernel_size`` is the
    kornia kernel (PIL's filter is radius-based)."""

    sigma: tuple[float, float]
    p: float | None
    kernel_size: int

    def pil(self) -> list[Callable]:
        return [_coin(PILGaussianBlur(self.sigma), self.p)]

    def kornia(self) -> list[nn.Module]:
        p = 1.0 if self.p is None else self.p
        return [_kornia().RandomGaussianBlur(self.kernel_size, self.sigma, p=p)] if p > 0 else []


@dataclass(frozen=True)
class HorizontalFlip(AugOp):
    """Left-right flip with probability ``p``."""

    p: float = 0.5

    def pil(self) -> list[Callable]:
        return [transforms.RandomHorizontalFlip(p=self.p)]

    def kornia(self) -> list[nn.Module]:
        return [_kornia().RandomHorizontalFlip(p=self.p)]


@dataclass(frozen=True)
class ToTensor(AugOp):
    """PIL image -> ``(3, H, W)`` float in [0, 1]; nothing on the kornia path (its input is that already)."""

    def pil(self) -> list[Callable]:
        return [transforms.ToTensor()]

    def kornia(self) -> list[nn.Module]:
        return []


@dataclass(frozen=True)
class Normalize(AugOp):
    """Per-channel ``(x - mean) / std``."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def pil(self) -> list[Callable]:
        return [transforms.Normalize(self.mean, self.std)]

    def kornia(self) -> list[nn.Module]:
        return [_kornia().Normalize(torch.tensor(self.mean), torch.tensor(self.std))]


@dataclass(frozen=True)
class Recipe:
    """A named list of op specs, and its two renderings."""

    name: str
    ops: tuple[AugOp, ...]

    def pil(self) -> transforms.Compose:
        """PIL image -> ``(3, S, S)`` normalised random view (a torchvision ``Compose``)."""
        return transforms.Compose([t for op in self.ops for t in op.pil()])

    def kornia(self) -> nn.Sequential:
        """``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, S, S)`` normalised random views, per-sample parameters."""
        return nn.Sequential(*[m for op in self.ops for m in op.kornia()])


RecipeBuilder = Callable[[AugConfig, CropGroup], list[AugOp]]
RECIPES: dict[str, RecipeBuilder] = {}


def register_recipe(name: str) -> Callable[[RecipeBuilder], RecipeBuilder]:
    """Decorator: add a builder ``(resolved AugConfig, crop group) -> [op specs]`` to :data:`RECIPES` as ``name``."""

    def add(builder: RecipeBuilder) -> RecipeBuilder:
        if name in RECIPES:
            raise ValueError(f"augmentation recipe {name!r} is registered twice")
        RECIPES[name] = builder
        return builder

    return add


def build_recipe(cfg: AugConfig, group: CropGroup | None = None) -> Recipe:
    """The recipe of ``group`` (default: a global crop of ``--image-size``): the group's own recipe name, else
    ``mocov2`` with ``aug_plus`` and ``mocov1`` without; an unknown name is a one-line ``PCLError``."""
    cfg = cfg.resolved()
    group = group or cfg.view_spec().groups[0]
    name = group.recipe or ("mocov2" if cfg.aug_plus else "mocov1")
    if name not in RECIPES:
        raise PCLError(f"unknown augmentation recipe {name!r}; choose from {', '.join(sorted(RECIPES))}")
    return Recipe(name, tuple(RECIPES[name](cfg, group)))


def train_transform(cfg: AugConfig, group: CropGroup | None = None) -> transforms.Compose:
    """Random view of a PIL image for the M-step: ``build_recipe(cfg, group)`` rendered for PIL."""
    return build_recipe(cfg, group).pil()


def kornia_train_aug(cfg: AugConfig, group: CropGroup | None = None) -> nn.Sequential:
    """``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, S, S)`` random views: ``build_recipe(cfg, group)`` for kornia."""
    return build_recipe(cfg, group).kornia()


def _to_normalised_tensor() -> list[AugOp]:
    return [HorizontalFlip(0.5), ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)]


@register_recipe("mocov2")
def mocov2(cfg: AugConfig, group: CropGroup) -> list[AugOp]:
    """MoCo v2 (``--aug-plus``): crop, colour jitter (hue at strength / 4) with its p, grayscale, blur, flip."""
    j = cfg.color_jitter
    return [
        ResizedCrop(group.size, group.scale),
        ColorJitter(j, j, j, j / 4, p=cfg.color_jitter_prob),
        Grayscale(cfg.grayscale_prob),
        GaussianBlur((0.1, 2.0), p=cfg.blur_prob, kernel_size=blur_kernel_size(group.size)),
        *_to_normalised_tensor(),
    ]


@register_recipe("mocov1")
def mocov1(cfg: AugConfig, group: CropGroup) -> list[AugOp]:
    """MoCo v1 (``--no-aug-plus``): crop, grayscale, colour jitter every time (hue at strength), flip."""
    j = cfg.color_jitter
    crop = ResizedCrop(group.size, group.scale)
    return [crop, Grayscale(cfg.grayscale_prob), ColorJitter(j, j, j, j), *_to_normalised_tensor()]
