"""The frozen backbone to evaluate: a training checkpoint's query (or key) backbone, an exported one, or an untrained
one. Where a checkpoint keeps its backbones is its method's (``Method.backbone_prefixes``, by the stored
``method``): MoCo / PCL ``encoder_q.backbone.`` / ``encoder_k.backbone.``, SwAV ``encoder.backbone.`` (one
encoder), DINO ``student.backbone.`` / ``teacher.backbone.``.

All three give the trunk ``build_backbone`` makes (a torchvision ResNet with ``fc = Identity``, or a timm model
without classifier) mapping ``(B, 3, H, W) -> (B, D)`` raw (not normalised) pooled features, in eval mode.
Identical weights give identical features whatever the source (tested). An exported ``.safetensors`` file
(``tools/export_backbone.py``) names its architecture in its metadata. :func:`recalibrated` recomputes a
backbone's BatchNorm statistics on the train images (the fair untrained reference; ``--recalibrate-bn`` for any
encoder).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from pcl.config import stored_config
from pcl.data.datasets import eval_loader
from pcl.methods import method_class
from pcl.model.backbone import BackboneSpec, build_backbone
from pcl.model.bn import recalibrate_bn
from pcl.run.checkpoint import load_checkpoint
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

INIT_BN = "BatchNorm statistics at init (mean 0, variance 1)"  # an untrained backbone's, before recalibration
TRAINED_BN = "BatchNorm statistics as trained"
PREFIXES = method_class("pcl").backbone_prefixes  # MoCo / PCL's; a checkpoint's own: backbone_prefixes()


@dataclass
class Pretrained:
    """A frozen backbone and what it was built with; ``checkpoint`` holds the full PCL checkpoint if any."""

    backbone: nn.Module
    feat_dim: int
    arch: str
    stem: str
    image_size: int
    source: str  # one line for printing, e.g. "runs/default/checkpoints/last.pth (epoch 6)"
    epoch: int | None = None
    checkpoint: dict | None = field(default=None, repr=False)
    ident: str = ""  # identifies the weights for the feature cache: file path, size and mtime, or arch + seed
    kind: str = "query"  # what the weights are: query | key (a checkpoint's encoders) | exported | untrained
    patch_size: int | None = None  # a ViT's --patch-size (None: the model's own)
    bn: str = TRAINED_BN  # where the BatchNorm statistics come from: as trained | at init | recalibrated (a note)

    @property
    def spec(self) -> BackboneSpec:
        """The backbone's build spec (plain batch norm, no weights file)."""
        return BackboneSpec(self.arch, self.stem, self.image_size, 1, self.patch_size)

    def settings(self) -> dict:
        """JSON-ready description of the source and architecture."""
        out = {
            "source": self.source,
            "arch": self.arch,
            "stem": self.stem,
            "image_size": self.image_size,
            "epoch": self.epoch,
            "bn": self.bn,
        }
        if self.patch_size is not None:
            out["patch_size"] = self.patch_size
        return out


def backbone_prefixes(checkpoint: dict) -> dict[str, str]:
    """``{"query": prefix, "key": prefix}`` of the checkpoint's backbones in its ``model`` state, from the method its
    stored configuration names (MoCo / PCL's for a checkpoint without one)."""
    try:
        method = stored_config(checkpoint).method
    except PCLError:
        method = "pcl"
    prefixes = method_class(method).backbone_prefixes
    if not prefixes:
        raise PCLError(f"method {method!r} declares no backbone_prefixes: its checkpoints cannot be evaluated")
    return prefixes


def backbone_state_dict(checkpoint: dict, encoder: str = "query") -> dict[str, torch.Tensor]:
    """torchvision-named tensors of a training checkpoint's query- (or key-: momentum / teacher) backbone (no
    ``fc``), wherever its method keeps them (:func:`backbone_prefixes`)."""
    prefix = backbone_prefixes(checkpoint)[encoder]
    return {k.removeprefix(prefix): v.clone() for k, v in checkpoint["model"].items() if k.startswith(prefix)}


def _file_ident(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _build(spec: BackboneSpec, state: dict[str, torch.Tensor] | None, what: str) -> tuple[nn.Module, int]:
    net, dim = build_backbone(spec)
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            patch = "" if spec.patch_size is None else f", patch size {spec.patch_size}"
            built = f"a {spec.arch} with the {spec.stem} stem{patch} at {spec.image_size} px"
            raise PCLError(f"{what} does not match {built}: {first}") from None
    for p in net.parameters():
        p.requires_grad = False
    return net.eval(), dim


def from_checkpoint(path: Path, encoder: str = "query") -> Pretrained:
    """The query (``encoder="key"``: momentum / teacher) backbone of a training checkpoint, built with the
    architecture flags stored in it."""
    if encoder not in PREFIXES:
        raise PCLError(f"unknown encoder {encoder!r}; choose from {', '.join(PREFIXES)}")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise PCLError(f"{path} is not a PCL training checkpoint")
    cfg = stored_config(ckpt, path)  # one clear error for a file without a configuration (an exported backbone)
    if not isinstance(ckpt.get("model"), dict):
        raise PCLError(f"{path} is not a PCL training checkpoint (no 'model')")
    state = backbone_state_dict(ckpt, encoder)
    if not state:
        raise PCLError(f"{path} holds no {encoder} backbone ({backbone_prefixes(ckpt)[encoder]}* tensors)")
    arch, stem, size, patch = cfg.model.arch, cfg.model.stem, cfg.data.aug.image_size, cfg.model.patch_size
    net, dim = _build(BackboneSpec(arch, stem, size, 1, patch), state, str(path))
    epoch = ckpt.get("epoch")
    what = "" if encoder == "query" else f", {encoder} encoder"
    ident = _file_ident(path) + ("" if encoder == "query" else f":{encoder}")
    source = f"{path} (epoch {epoch}{what})"
    return Pretrained(net, dim, arch, stem, size, source, epoch, ckpt, ident, encoder, patch)


def exported_metadata(path: Path) -> dict[str, str]:
    """The architecture ``tools/export_backbone.py`` wrote into a ``.safetensors`` file's metadata (``arch``,
    ``stem``, ``image_size``, ``patch_size``); empty for other files."""
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PCLError(f"exported backbone {path} cannot be read: {first}") from None
    return json.loads(meta.get("pcl", "{}")) if isinstance(meta.get("pcl"), str) else {}


def from_exported(
    path: Path, arch: str | None, stem: str | None, image_size: int | None, patch_size: int | None = None
) -> Pretrained:
    """A backbone ``state_dict`` written by ``tools/export_backbone.py`` (``.pth``, or ``.safetensors`` whose
    metadata gives the architecture flags left None); ``stem=None`` infers it from conv1."""
    if not path.is_file():
        raise PCLError(f"exported backbone {path} does not exist")
    meta = exported_metadata(path)
    arch = arch or meta.get("arch") or "resnet18"
    image_size = image_size or meta.get("image_size") or 32
    patch_size = patch_size if patch_size is not None else meta.get("patch_size")
    stem = stem or meta.get("stem")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # objects other than tensors, e.g. a training checkpoint's config
        raise PCLError(
            f"{path} is not a backbone state_dict (tools/export_backbone.py output); "
            "give a training checkpoint as RUN (the file or its run directory)"
        ) from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PCLError(f"exported backbone {path} cannot be read: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PCLError(f"{path} is not a backbone state_dict (tools/export_backbone.py output)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if stem is None:
        conv1 = state.get("conv1.weight")
        stem = "small" if conv1 is not None and conv1.shape[-1] == 3 else "imagenet"
    net, dim = _build(BackboneSpec(arch, stem, image_size, 1, patch_size), state, str(path))
    ident = f"{_file_ident(path)}:{stem}"
    source = f"{path} (exported)"
    return Pretrained(net, dim, arch, stem, image_size, source, ident=ident, kind="exported", patch_size=patch_size)


def untrained(arch: str, stem: str, image_size: int, seed: int, patch_size: int | None = None) -> Pretrained:
    """A randomly initialised backbone: the same weights as a fresh ``PCL`` model's query backbone at ``seed``."""
    torch.manual_seed(seed)
    net, dim = _build(BackboneSpec(arch, stem, image_size, 1, patch_size), None, "")
    ident = f"untrained:{arch}:{stem}:{seed}" + ("" if patch_size is None else f":p{patch_size}:{image_size}")
    what = f"untrained {arch} (seed {seed})"
    kw = {"ident": ident, "kind": "untrained", "bn": INIT_BN, "patch_size": patch_size}
    return Pretrained(net, dim, arch, stem, image_size, what, **kw)


def recalibrated(
    pre: Pretrained,
    train: Dataset,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 2,
    max_images: int = 10_000,
    seed: int = 0,
) -> Pretrained:
    """A copy of ``pre`` whose BatchNorm running statistics are recomputed on ``train`` (the eval view of the
    train images, items ``(image, index)``): every image, or a seeded subset of ``max_images`` when there are
    more, in index order (``pcl.model.bn.recalibrate_bn``: forward passes only, no labels, no gradient). ``pre``
    itself is left untouched; the copy's ``bn`` says what was done and its ``ident`` differs (feature cache)."""
    n = len(train)
    part: Dataset = train
    if n > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
        part = Subset(train, keep.tolist())
    net = copy.deepcopy(pre.backbone).to(device)
    done = recalibrate_bn(net, (images for images, _ in eval_loader(part, batch_size, workers)), device)
    net.eval()
    where = f"the eval view of {'a seeded subset of ' if n > max_images else ''}the train images"
    bn = f"{done.note()} ({where})" if done.layers else done.note()
    ident = f"{pre.ident}:bn-recalibrated:{len(part)}:{seed}" if done.layers else pre.ident
    return dataclasses.replace(pre, backbone=net, bn=bn, ident=ident)


# ---------------------------------------------------------------------- command-line flags of the tools


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The backbone to evaluate: ``RUN`` (a run directory or a checkpoint file) | ``--untrained`` | ``--exported
    FILE``, and the architecture flags of the latter two."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("run", type=Path, nargs="?", help="run directory (its checkpoints/last.pth) or a checkpoint file")
    src.add_argument("--untrained", action="store_true", help="no run: --arch at random initialisation (--seed)")
    src.add_argument("--exported", type=Path, help="no run: a backbone state_dict of tools/export_backbone.py")
    p.add_argument("-a", "--arch", default=None, help="for --untrained / --exported (default resnet18)")
    p.add_argument("--stem", default=None, choices=("imagenet", "small"), help="for --untrained / --exported")
    p.add_argument(
        "--image-size", type=ranged(int, gt=0, le=4096), default=None, help="for --untrained / --exported (default 32)"
    )
    p.add_argument(
        "--patch-size", type=ranged(int, gt=0, le=1024), default=None, help="for --untrained / --exported (a ViT's)"
    )


def load_source(a: argparse.Namespace, seed: int = 0) -> Path | Pretrained:
    """The run (its path) or the backbone named by the flags of :func:`add_source_args` (an exported
    ``.safetensors`` file's metadata fills the architecture flags not given)."""
    patch = getattr(a, "patch_size", None)
    if a.run is not None:
        if any(v is not None for v in (a.arch, a.stem, a.image_size, patch)):
            flags = "--arch / --stem / --image-size / --patch-size"
            raise PCLError(f"{flags} apply to --untrained and --exported (a run stores its own)")
        return a.run
    if a.exported is not None:
        return from_exported(a.exported, a.arch, a.stem, a.image_size, patch)
    return untrained(a.arch or "resnet18", a.stem or "imagenet", a.image_size or 32, seed, patch)
