"""The frozen backbone to evaluate: a PCL checkpoint's query (or key) backbone, an exported one, or an untrained one.

All three give a torchvision ResNet trunk with ``fc = Identity`` mapping ``(B, 3, H, W) -> (B, D)`` raw
(not normalised) average-pooled features, in eval mode. Identical weights give identical features whatever
the source (tested). :func:`recalibrated` recomputes a backbone's BatchNorm statistics on the train images (the
fair untrained reference; ``--recalibrate-bn`` for any encoder).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from pcl.config import stored_config
from pcl.data.datasets import eval_loader
from pcl.model.backbone import BackboneSpec, build_backbone
from pcl.model.bn import recalibrate_bn
from pcl.run.checkpoint import load_checkpoint
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

INIT_BN = "BatchNorm statistics at init (mean 0, variance 1)"  # an untrained backbone's, before recalibration
TRAINED_BN = "BatchNorm statistics as trained"
PREFIX = "encoder_q.backbone."
PREFIXES = {"query": PREFIX, "key": "encoder_k.backbone."}  # a checkpoint's two encoders


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
    bn: str = TRAINED_BN  # where the BatchNorm statistics come from: as trained | at init | recalibrated (a note)

    def settings(self) -> dict:
        """JSON-ready description of the source and architecture."""
        return {
            "source": self.source,
            "arch": self.arch,
            "stem": self.stem,
            "image_size": self.image_size,
            "epoch": self.epoch,
            "bn": self.bn,
        }


def backbone_state_dict(checkpoint: dict, encoder: str = "query") -> dict[str, torch.Tensor]:
    """torchvision-named tensors of a PCL checkpoint's query- (or key-) encoder backbone (no ``fc``)."""
    prefix = PREFIXES[encoder]
    return {k.removeprefix(prefix): v.clone() for k, v in checkpoint["model"].items() if k.startswith(prefix)}


def _file_ident(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _build(arch: str, stem: str, state: dict[str, torch.Tensor] | None, what: str) -> tuple[nn.Module, int]:
    net, dim = build_backbone(BackboneSpec(arch, stem))
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise PCLError(f"{what} does not match a {arch} with the {stem} stem: {first}") from None
    for p in net.parameters():
        p.requires_grad = False
    return net.eval(), dim


def from_checkpoint(path: Path, encoder: str = "query") -> Pretrained:
    """The query (``encoder="key"``: momentum) backbone of a PCL training checkpoint, built with the architecture
    flags stored in it."""
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
        raise PCLError(f"{path} holds no {encoder} backbone ({PREFIXES[encoder]}* tensors)")
    arch, stem, size = cfg.model.arch, cfg.model.stem, cfg.data.aug.image_size
    net, dim = _build(arch, stem, state, str(path))
    epoch = ckpt.get("epoch")
    what = "" if encoder == "query" else f", {encoder} encoder"
    ident = _file_ident(path) + ("" if encoder == "query" else f":{encoder}")
    return Pretrained(net, dim, arch, stem, size, f"{path} (epoch {epoch}{what})", epoch, ckpt, ident, encoder)


def from_exported(path: Path, arch: str, stem: str | None, image_size: int) -> Pretrained:
    """A backbone ``state_dict`` written by ``tools/export_backbone.py``; ``stem=None`` infers it from conv1."""
    if not path.is_file():
        raise PCLError(f"exported backbone {path} does not exist")
    try:
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
    net, dim = _build(arch, stem, state, str(path))
    ident = f"{_file_ident(path)}:{stem}"
    return Pretrained(net, dim, arch, stem, image_size, f"{path} (exported)", ident=ident, kind="exported")


def untrained(arch: str, stem: str, image_size: int, seed: int) -> Pretrained:
    """A randomly initialised backbone: the same weights as a fresh ``PCL`` model's query backbone at ``seed``."""
    torch.manual_seed(seed)
    net, dim = _build(arch, stem, None, "")
    ident = f"untrained:{arch}:{stem}:{seed}"
    what = f"untrained {arch} (seed {seed})"
    return Pretrained(net, dim, arch, stem, image_size, what, ident=ident, kind="untrained", bn=INIT_BN)


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


def load_source(a: argparse.Namespace, seed: int = 0) -> Path | Pretrained:
    """The run (its path) or the backbone named by the flags of :func:`add_source_args`."""
    if a.run is not None:
        if any(v is not None for v in (a.arch, a.stem, a.image_size)):
            raise PCLError("--arch / --stem / --image-size apply to --untrained and --exported (a run stores its own)")
        return a.run
    arch, size = a.arch or "resnet18", a.image_size or 32
    if a.exported is not None:
        return from_exported(a.exported, arch, a.stem, size)
    return untrained(arch, a.stem or "imagenet", size, seed)
