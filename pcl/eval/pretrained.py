"""The frozen backbone to evaluate: a training checkpoint's query (or key) backbone, an exported one, or an untrained
one. Where a checkpoint keeps its backbones is its method's (``Method.backbone_prefixes``, by the stored
``method``): MoCo / PCL ``encoder_q.backbone.`` / ``encoder_k.backbone.``, SwAV ``encoder.backbone.`` (one
encoder), DINO ``student.backbone.`` / ``teacher.backbone.``.

All three give a torchvision ResNet trunk with ``fc = Identity`` mapping ``(B, 3, H, W) -> (B, D)`` raw
(not normalised) average-pooled features, in eval mode. Identical weights give identical features whatever
the source (tested).
"""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pcl.config import stored_config
from pcl.methods import method_class
from pcl.model.backbone import BackboneSpec, build_backbone
from pcl.run.checkpoint import load_checkpoint
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

PREFIX = "encoder_q.backbone."
PREFIXES = {"query": PREFIX, "key": "encoder_k.backbone."}  # MoCo / PCL's (other methods: backbone_prefixes)


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

    def settings(self) -> dict:
        """JSON-ready description of the source and architecture."""
        return {
            "source": self.source,
            "arch": self.arch,
            "stem": self.stem,
            "image_size": self.image_size,
            "epoch": self.epoch,
        }


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
    return Pretrained(net, dim, arch, stem, image_size, what, ident=ident, kind="untrained")


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
