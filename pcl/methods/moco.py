"""MoCo v2 (``--method moco``): query encoder trained by SGD, momentum key encoder, a queue of keys as InfoNCE
negatives (He et al. 2020; Chen et al. 2020). PCL (:mod:`pcl.methods.pcl`) is this method plus the E-step and
ProtoNCE; with ``--method pcl --warmup-epochs >= --epochs`` it trains the same MoCo v2.

Views (``cfg.data.aug.view_spec()``): the first global crop is the query view, the other global crops are key
views (the two-crop batch: one of each, as ever), and every local crop is one more query view; every query is
contrasted with the keys of every key view (:func:`pcl.losses.objective.pcl_objective`). The local crops go
through the query encoder in one forward per size. The queue receives the first key view's keys. A backbone without
batch norm (a ViT) encodes its keys unshuffled: shuffle BN would change nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pcl.data.views import ViewSpec
from pcl.losses.config import LossConfig
from pcl.losses.objective import Objective, pcl_objective
from pcl.methods.base import Method, MethodSettings, StepOutput, register_method
from pcl.model.backbone import has_batchnorm, probe_backbone
from pcl.model.encoder import Encoder, ModelConfig
from pcl.model.momentum import frozen_copy, update_momentum
from pcl.model.multicrop import size_runs
from pcl.model.shuffle import shuffled_forward
from pcl.utils import distributed as pdist
from pcl.utils.errors import PCLError


@dataclass
class Embeddings:
    """Outputs of one forward pass, all L2-normalised ``(B, low_dim)``.

    ``q``/``k``: instance task (shared head) of the query view and the first key view. ``q_cluster``: the ProtoNCE
    queries (the cluster head's, if any; else ``q``). Multi-crop: ``q_local`` / ``q_cluster_local`` one entry per
    local crop, ``k_extra`` one per further key view (global crops 3, 4, ...). ``k_raw``: the first key view's
    head output before normalising (PCL's bank feeds it to the cluster head).
    """

    q: torch.Tensor
    k: torch.Tensor
    q_cluster: torch.Tensor
    q_local: tuple[torch.Tensor, ...] = ()
    q_cluster_local: tuple[torch.Tensor, ...] = ()
    k_extra: tuple[torch.Tensor, ...] = ()
    k_raw: torch.Tensor | None = None


@register_method
class MoCo(Method):
    """Query/key encoders with momentum ``m`` and a queue of ``r`` keys; views ``[query view, key view(s), local
    crops]`` as ``views`` (the view spec) says, the backbone built for its global crops' size.

    Build it with :meth:`from_config`; the keyword arguments have no defaults so that every caller states them.
    """

    name = "moco"
    backbone_prefixes: ClassVar[dict[str, str]] = {"query": "encoder_q.backbone.", "key": "encoder_k.backbone."}
    shuffle_bn = True

    def __init__(self, *, model: ModelConfig, loss: LossConfig, bn_splits: int, views: ViewSpec) -> None:
        super().__init__()
        self.r, self.m, self.low_dim = model.pcl_r, model.moco_m, model.low_dim
        self.embedding_dim = model.low_dim
        self.loss_cfg = loss
        self.num_global = views.num_global
        self.encoder_q = Encoder(model.backbone(bn_splits, views.groups[0].size), model.low_dim, model.mlp)
        self.shuffle_keys = has_batchnorm(self.encoder_q)  # shuffle BN: only where there is batch norm
        self.encoder_k = frozen_copy(self.encoder_q)
        self.cluster_q = self._cluster_head(model)  # before the queue's draw: the same RNG order as ever
        self.cluster_k = frozen_copy(self.cluster_q)
        self.register_buffer("queue", F.normalize(torch.randn(model.low_dim, model.pcl_r), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def _cluster_head(self, model: ModelConfig) -> nn.Module | None:
        """The cluster task's extra head (PCL's ``--cluster-head``); MoCo v2 has none."""
        return None

    @classmethod
    def from_config(cls, cfg: MethodSettings, bn_splits: int | None = None) -> MoCo:
        splits = cfg.model.bn_splits if bn_splits is None else bn_splits
        return cls(model=cfg.model, loss=cfg.loss, bn_splits=splits, views=cfg.data.aug.view_spec())

    @classmethod
    def notes(cls, cfg: MethodSettings) -> list[str]:
        spec = cfg.model.backbone(image_size=cfg.data.aug.image_size)
        if probe_backbone(spec).batchnorm:
            return []
        return [f"--arch {cfg.model.arch} has no batch norm: shuffle BN would do nothing, so the keys are encoded "
                "unshuffled (and --bn-splits is unused)"]  # fmt: skip

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        if cls is MoCo and cfg.model.cluster_head != "none":
            raise PCLError(f"--cluster-head {cfg.model.cluster_head} is PCL's: use --method pcl, or drop it")
        aug = cfg.data.aug
        if aug.global_crops < 2:
            raise PCLError(
                f"--global-crops {aug.global_crops}: {cls.name} needs at least 2 global crops (a query and a key view)"
            )
        if cfg.train.batch_size > cfg.model.pcl_r:
            raise PCLError(
                f"--batch-size {cfg.train.batch_size} is larger than the queue --pcl-r {cfg.model.pcl_r}: "
                "one batch of keys would overwrite itself; raise --pcl-r or lower the batch size"
            )

    @classmethod
    def validate_data(cls, cfg: MethodSettings, num_train: int) -> None:
        r = cfg.model.pcl_r
        if r >= num_train:
            raise PCLError(
                f"--pcl-r {r} is not smaller than the {num_train} training images: each image's own "
                "older keys would sit in the queue as negatives; use about a tenth of the data set"
            )

    # -------------------------------------------------------------- state
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
            update_momentum(q_mod, k_mod, self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``(B, d)`` keys (gathered from all ranks) at the pointer, wrapping around the ring."""
        keys = pdist.concat_all_gather(keys.float())
        b = keys.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(b, device=keys.device)) % self.r
        self.queue[:, idx] = keys.T
        self.queue_ptr[0] = (int(self.queue_ptr) + b) % self.r

    # -------------------------------------------------------------- the step
    def forward(
        self, views: list[torch.Tensor], index: torch.Tensor | None = None, with_cluster: bool | None = None
    ) -> Embeddings:
        """``views``: ``[im_q, im_k, ...]``, each ``(B, 3, H, W)`` views of the same images (the query view, the key
        views, then the local crops); embeddings only.

        ``with_cluster``: compute the cluster head's queries (default: when the method has prototypes).
        """
        g = self.num_global
        cluster = self.cluster_q is not None and (self.has_prototypes() if with_cluster is None else with_cluster)
        q_raw = self.encoder_q(views[0])
        q = F.normalize(q_raw, dim=1)
        keys_raw = self._encode_keys(views[1] if g == 2 else torch.cat(views[1:g]))
        k_raw = keys_raw.chunk(g - 1)[0] if g > 2 else keys_raw
        keys = F.normalize(keys_raw, dim=1)
        k, *k_extra = keys.chunk(g - 1) if g > 2 else (keys,)
        q_cluster = F.normalize(self.cluster_q(q_raw), dim=1) if cluster else q
        q_local, q_cluster_local = [], []
        local = views[g:]
        for s in size_runs(local):  # one forward per local-crop size
            run = local[s]
            raw = self.encoder_q(torch.cat(run)) if len(run) > 1 else self.encoder_q(run[0])
            q_local += F.normalize(raw, dim=1).chunk(len(run))
            if cluster:
                q_cluster_local += F.normalize(self.cluster_q(raw), dim=1).chunk(len(run))
        if not cluster:
            q_cluster_local = q_local
        return Embeddings(q, k, q_cluster, tuple(q_local), tuple(q_cluster_local), tuple(k_extra), k_raw)

    @torch.no_grad()
    def _encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Key-encoder embeddings ``(N, low_dim)`` (not normalised): shuffle BN where the backbone has batch norm."""
        return shuffled_forward(self.encoder_k, images) if self.shuffle_keys else self.encoder_k(images)

    def has_prototypes(self) -> bool:
        """True when ProtoNCE applies to the next step (PCL after an E-step); never for MoCo v2."""
        return False

    def objective(self, out: Embeddings, index: torch.Tensor) -> StepOutput:
        """InfoNCE of the queries against their keys and the queue (float32, also under autocast)."""
        return self._step(self._objective(out, index, []), out)

    def _objective(self, out: Embeddings, index: torch.Tensor, levels: list) -> Objective:
        """InfoNCE (+ ProtoNCE on ``levels``) of every query crop against every key crop, in float32 (losses, the
        prototype softmax and the queue stay float32 under autocast)."""
        f = [t.float() for t in out.q_local]
        fc = [t.float() for t in out.q_cluster_local]
        return pcl_objective(out.q.float(), out.k.float(), self.queue, out.q_cluster.float(), index, levels,
                             self.loss_cfg, self.r, f, fc, [t.float() for t in out.k_extra])  # fmt: skip

    def _step(self, obj: Objective, out: Embeddings) -> StepOutput:
        """The :class:`StepOutput` of the instance task (subclasses add their terms); the first key view's keys
        are the ones to enqueue."""
        step = StepOutput(
            loss=obj.total,
            terms={"loss_inst": obj.inst},
            hits={"acc_inst": (obj.logits.argmax(dim=1) == 0).sum()},
            batch=out.q.shape[0],
            checked={"loss_inst": "InfoNCE"},
            embedding=out.q,
            pending=out.k.float(),
        )
        step.terms.update(obj.local_terms)
        step.hits.update(obj.local_hits)
        return step

    @torch.no_grad()
    def after_step(self, step: StepOutput) -> None:
        """Momentum update of the key side, then the step's keys into the queue."""
        self.momentum_update()
        self.enqueue(step.pending)

    def chance_loss(self) -> tuple[str, float]:
        """InfoNCE of a model that cannot tell the positive from the ``r`` negatives: ``log(1 + r)``."""
        return "loss_inst", math.log(1 + self.r)

    def summary_terms(self) -> tuple[str, ...]:
        return ("acc_inst",)

    def extra_state(self) -> dict[str, object]:
        """No cluster result (the checkpoint keeps the key, as PCL's warmup epochs do)."""
        return {"cluster_result": None}

    # -------------------------------------------------------------- features
    @torch.no_grad()
    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Query backbone features for the kNN monitor, L2-normalised ``(B, D)``."""
        return F.normalize(self.encoder_q.backbone(images), dim=1)

    @torch.no_grad()
    def key_backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Momentum (key) backbone features for the kNN monitor (``--knn-encoder key``), L2-normalised ``(B, D)``."""
        return F.normalize(self.encoder_k.backbone(images), dim=1)
