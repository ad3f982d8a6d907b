"""Model stage: the PCL builder (MoCo v2 query/key encoders, task-specific heads, queue, momentum update).

Like MoCo's ``builder.py``, one ``nn.Module`` holds the whole method's state. The forward pass only
computes embeddings; the engine decides after the optimizer step (and the non-finite guard) whether to
run :meth:`PCL.momentum_update` and :meth:`PCL.enqueue`, so a skipped step changes neither.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pcl.model.backbone import ARCHS, BackboneSpec, build_backbone, check_arch
from pcl.model.heads import CLUSTER_HEADS, cluster_head, projection_head
from pcl.utils import distributed as pdist
from pcl.utils.flags import check_fields, flag


@dataclass
class ModelConfig:
    """The method's settings (``--arch`` ... ``--temperature``); the defaults are the command line's.

    ``pcl_r`` is the queue size and the number of negative prototypes; ``temperature`` is InfoNCE's T and
    the mean of the concentrations phi. ``bn_splits`` applies in a single process only (DDP uses 1).
    """

    arch: str = flag("resnet18", "-a", "--arch", help=f"torchvision ResNet ({', '.join(ARCHS)})")
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
    temperature: float = flag(0.2, gt=0, help="InfoNCE temperature T (also mean of phi)")

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range or an unknown arch."""
        check_arch(self.arch)
        check_fields(self)


class Encoder(nn.Module):
    """Backbone followed by the shared projection head: ``(B,3,H,W) -> (B, low_dim)`` (not normalised)."""

    def __init__(self, arch: str, low_dim: int, mlp: bool, small_stem: bool, bn_splits: int) -> None:
        super().__init__()
        spec = BackboneSpec(arch, "small" if small_stem else "imagenet", bn_splits=bn_splits)
        self.backbone, self.feat_dim = build_backbone(spec)
        self.head = projection_head(self.feat_dim, low_dim, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, low_dim)`` (not normalised)."""
        return self.head(self.backbone(x))


@dataclass
class Embeddings:
    """Outputs of one forward pass, all L2-normalised ``(B, low_dim)``.

    ``q``/``k``: instance task (shared head). ``q_cluster``: the ProtoNCE queries (cluster head if any).
    """

    q: torch.Tensor
    k: torch.Tensor
    q_cluster: torch.Tensor


class PCL(nn.Module):
    """Query/key encoders with momentum ``m``, a queue of ``r`` keys and an optional cluster head.

    Build it with :meth:`from_config`; the keyword arguments have no defaults so that every caller states them.
    """

    def __init__(
        self,
        *,
        arch: str,
        low_dim: int,
        r: int,
        m: float,
        mlp: bool,
        cluster_head_kind: str,
        small_stem: bool,
        bn_splits: int,
    ) -> None:
        super().__init__()
        self.r, self.m, self.low_dim = r, m, low_dim
        self.encoder_q = Encoder(arch, low_dim, mlp, small_stem, bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.cluster_q = cluster_head(cluster_head_kind, low_dim)
        self.cluster_k = copy.deepcopy(self.cluster_q)
        for p in self.key_parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(low_dim, r), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @classmethod
    def from_config(cls, cfg: ModelConfig, bn_splits: int | None = None) -> PCL:
        """The model described by ``cfg``; ``bn_splits`` overrides ``cfg.bn_splits`` (1 under DDP)."""
        return cls(
            arch=cfg.arch,
            low_dim=cfg.low_dim,
            r=cfg.pcl_r,
            m=cfg.moco_m,
            mlp=cfg.mlp,
            cluster_head_kind=cfg.cluster_head,
            small_stem=cfg.stem == "small",
            bn_splits=cfg.bn_splits if bn_splits is None else bn_splits,
        )

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.encoder_q, self.encoder_k)]
        if self.cluster_q is not None:
            pairs.append((self.cluster_q, self.cluster_k))
        return pairs

    def key_parameters(self) -> list[nn.Parameter]:
        """Parameters of the momentum (key) side: key encoder and key cluster head; never trained by SGD."""
        return [p for _, k in self._pairs() for p in k.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``theta_k <- m * theta_k + (1 - m) * theta_q`` for the encoder and the cluster head."""
        for q_mod, k_mod in self._pairs():
            q_params, k_params = list(q_mod.parameters()), list(k_mod.parameters())
            torch._foreach_mul_(k_params, self.m)
            torch._foreach_add_(k_params, q_params, alpha=1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``(B, d)`` keys (gathered from all ranks) at the pointer, wrapping around the ring."""
        keys = pdist.concat_all_gather(keys.float())
        b = keys.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(b, device=keys.device)) % self.r
        self.queue[:, idx] = keys.T
        self.queue_ptr[0] = (int(self.queue_ptr) + b) % self.r

    @torch.no_grad()
    def _shuffled_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Key embeddings ``(B, d)`` computed on a shuffled batch (shuffle BN), returned in input order."""
        if pdist.is_distributed():
            return self._shuffled_keys_ddp(im_k)
        perm = torch.randperm(im_k.shape[0], device=im_k.device)
        k = self.encoder_k(im_k[perm])
        return torch.empty_like(k).index_copy_(0, perm, k)

    @torch.no_grad()
    def _shuffled_keys_ddp(self, im_k: torch.Tensor) -> torch.Tensor:
        """MoCo's cross-rank batch shuffle: gather all keys' images, permute globally, unshuffle after."""
        b = im_k.shape[0]
        x_all = pdist.concat_all_gather(im_k)
        perm = torch.randperm(x_all.shape[0], device=im_k.device)
        pdist.broadcast(perm, src=0)
        rank = pdist.rank()
        mine = perm.view(-1, b)[rank]
        k = self.encoder_k(x_all[mine])
        k_all = pdist.concat_all_gather(k)
        out = torch.empty_like(k_all).index_copy_(0, perm, k_all)
        return out[rank * b : (rank + 1) * b]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, with_cluster: bool) -> Embeddings:
        """``im_q``, ``im_k``: ``(B, 3, H, W)`` views of the same images."""
        q_raw = self.encoder_q(im_q)
        q = F.normalize(q_raw, dim=1)
        k = F.normalize(self._shuffled_keys(im_k), dim=1)
        q_cluster = q
        if with_cluster and self.cluster_q is not None:
            q_cluster = F.normalize(self.cluster_q(q_raw), dim=1)
        return Embeddings(q=q, k=k, q_cluster=q_cluster)

    @torch.no_grad()
    def cluster_features(self, images: torch.Tensor) -> torch.Tensor:
        """E-step features: momentum encoder (+ momentum cluster head), L2-normalised ``(B, low_dim)``."""
        z = self.encoder_k(images)
        if self.cluster_k is not None:
            z = self.cluster_k(z)
        return F.normalize(z, dim=1)

    @torch.no_grad()
    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Query backbone features for the kNN monitor, L2-normalised ``(B, D)``."""
        return F.normalize(self.encoder_q.backbone(images), dim=1)

    @torch.no_grad()
    def key_backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Momentum (key) backbone features for the kNN monitor (``--knn-encoder key``), L2-normalised ``(B, D)``."""
        return F.normalize(self.encoder_k.backbone(images), dim=1)

    @torch.no_grad()
    def cluster_and_bank_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One momentum-encoder pass for the E-step and the kNN bank: ``(cluster_features (B, low_dim),
        key_backbone_features (B, D))``, each equal to its own method's result (the same operations)."""
        h = self.encoder_k.backbone(images)
        z = self.encoder_k.head(h)
        if self.cluster_k is not None:
            z = self.cluster_k(z)
        return F.normalize(z, dim=1), F.normalize(h, dim=1)
