"""timm backbones: any ``timm.create_model`` name as ``--arch`` (ViT, DeiT, ConvNeXt, timm's ResNets, ...).

``--arch vit_tiny_patch16_224 --patch-size 4`` builds ``timm.create_model(name, pretrained=False, num_classes=0,
img_size=--image-size, patch_size=4, dynamic_img_size=True)``: a ``(B, 3, H, W) -> (B, D)`` trunk (pooled
features, no classifier) whose position embeddings are resampled for other input sizes (local crops). Models
without an image-size argument (ConvNeXt, ResNets) are built without it. A name torchvision also has
(``resnet50``) is torchvision's; ``timm:resnet50`` is timm's.

Nothing is downloaded (no network): ``--pretrained FILE`` initialises the model from a local weights file
(timm's own loader: ``.safetensors``, ``.pth``/``.bin``, ViT ``.npz``; the classifier is dropped and the position
embeddings resampled to the image and patch size), and a name that points at the Hugging Face hub is refused.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from pcl.model.backbone import BackboneFamily, BackboneSpec, SplitBatchNorm, register_backbone
from pcl.utils.errors import PCLError

PREFIX = "timm:"  # --arch timm:resnet50: timm's model where torchvision has one of the same name
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def _timm() -> ModuleType:
    import timm  # a few seconds of start-up: imported only when a timm model is named

    return timm


def timm_name(arch: str) -> str:
    """The ``timm.create_model`` name of ``--arch`` (without the ``timm:`` prefix)."""
    return arch.removeprefix(PREFIX)


def is_timm_model(arch: str) -> bool:
    """True when timm knows ``arch`` (a model name, with or without a pretrained tag such as ``.dino``)."""
    if arch.startswith(HUB_PREFIXES):
        raise PCLError(
            f"--arch {arch}: models are never fetched from the hub (no network); give the timm model name "
            "and the weights as a local file with --pretrained FILE"
        )
    name = timm_name(arch)
    return bool(name) and _timm().is_model(name)


@functools.cache
def timm_names() -> tuple[str, ...]:
    """Every timm model name (``timm.list_models()``), for close matches of an unknown ``--arch``."""
    return tuple(_timm().list_models())


def _kwarg_tiers(spec: BackboneSpec) -> list[dict]:
    """``create_model`` keyword sets to try in order: image size + dynamic size (ViT-like), image size, none."""
    patch = {} if spec.patch_size is None else {"patch_size": spec.patch_size}
    sized = {"img_size": spec.image_size, **patch}
    tiers = [{**sized, "dynamic_img_size": True}, sized] if spec.dynamic_size else [sized]
    return [*tiers, {}] if spec.patch_size is None else tiers


def create_kwargs(spec: BackboneSpec) -> dict:
    """The keyword arguments :func:`timm_backbone` passes to ``timm.create_model`` for ``spec`` (the first set the
    model's constructor accepts; built on the meta device, so this costs no memory), for the export recipe."""
    return _create(spec, torch.device("meta"))[1]


def _create(spec: BackboneSpec, device: torch.device | None = None) -> tuple[nn.Module, dict]:
    """``(timm model, the keyword arguments that built it)``; a one-line ``PCLError`` for a patch size the model
    cannot take or an unreadable weights file."""
    timm, name = _timm(), timm_name(spec.arch)
    weights = _weights(spec.pretrained)
    error: Exception | None = None
    for kwargs in _kwarg_tiers(spec):
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                net = timm.create_model(name, num_classes=0, **weights, **kwargs)
            return net, kwargs
        except TypeError as e:  # the constructor takes no img_size / dynamic_img_size / patch_size
            if "unexpected keyword argument" not in str(e):
                raise
            error = e
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            if not weights:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PCLError(f"--pretrained {spec.pretrained}: cannot load it into {name}: {first}") from None
    raise PCLError(f"--patch-size {spec.patch_size}: timm's {name} takes no patch size ({error})")


def _weights(pretrained: str | Path | None) -> dict:
    """``create_model`` arguments that load ``pretrained`` from the local file only (url and hub cleared)."""
    if pretrained is None:
        return {"pretrained": False}
    path = Path(pretrained)
    if not path.is_file():
        raise PCLError(
            f"--pretrained {pretrained}: no such file; weights are never downloaded (no network): fetch them "
            "elsewhere (e.g. the model's safetensors file from its hub page) and give the local file"
        )
    overlay = {"file": str(path), "url": None, "hf_hub_id": None, "source": None, "custom_load": path.suffix == ".npz"}
    return {"pretrained": True, "pretrained_cfg_overlay": overlay}


def split_batchnorm(net: nn.Module, splits: int) -> nn.Module:
    """``net`` with every plain ``nn.BatchNorm2d`` replaced by a :class:`SplitBatchNorm` of ``splits`` sub-batches
    (same parameters and buffers, so state dicts keep their keys)."""
    for name, child in net.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SplitBatchNorm(child.num_features, splits, eps=child.eps, momentum=child.momentum,
                                 affine=child.affine, track_running_stats=child.track_running_stats)  # fmt: skip
            new.load_state_dict(child.state_dict())
            setattr(net, name, new.to(child.weight.device if child.weight is not None else None))
        else:
            split_batchnorm(child, splits)
    return net


def feature_dim(net: nn.Module) -> int:
    """Width of a timm trunk's pooled output (``num_classes=0``)."""
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


def timm_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """The timm model ``spec.arch`` without classifier: ``(module (B,3,H,W) -> (B,D), D)``."""
    if spec.stem != "imagenet":
        raise PCLError(f"--stem {spec.stem} applies to torchvision ResNets; {spec.arch} is a timm model (its own stem)")
    net, _ = _create(spec)
    if spec.bn_splits > 1:
        net = split_batchnorm(net, spec.bn_splits)
    return net, feature_dim(net)


register_backbone(
    BackboneFamily(
        "timm",
        accepts=is_timm_model,
        build=timm_backbone,
        names=(),
        about="any timm model (timm.list_models(): vit_tiny_patch16_224, convnext_atto, timm:resnet50, ...)",
        catalogue=timm_names,
    )
)
