"""PCL (``--method pcl``, the default): MoCo v2 plus one EM iteration per epoch (Li et al., ICLR 2021).

E-step (:meth:`PCL.on_epoch_start`, from epoch ``--warmup-epochs`` on): momentum features of the eval view of
every training image -> k-means at each granularity -> prototypes and concentrations phi
(:func:`pcl.estep.estep.run_estep`). M-step (:meth:`PCL.objective`): InfoNCE + ``--proto-weight`` x the mean
ProtoNCE over granularities (:func:`pcl.losses.objective.pcl_objective`), the ProtoNCE queries through the cluster
head when ``--cluster-head`` is not ``none``. ``--estep-features bank``: the M-step's key features of the training
views, kept in :class:`pcl.estep.view_bank.ViewBank`, are what the next E-step clusters (no eval-view pass).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pcl.analysis.cluster_images import gallery_images
from pcl.analysis.cluster_metrics import cluster_scalars
from pcl.data.views import ViewSpec
from pcl.estep.clustering import ClusterResult
from pcl.estep.estep import EStepConfig, FeaturePass, run_estep
from pcl.estep.feature_store import FeatureStore
from pcl.estep.view_bank import ViewBank
from pcl.losses.config import LossConfig
from pcl.methods.base import EpochContext, MethodSettings, StepOutput, register_method
from pcl.methods.moco import Embeddings, MoCo
from pcl.model.encoder import ModelConfig
from pcl.model.heads import cluster_head
from pcl.utils import distributed as pdist
from pcl.utils.errors import PCLError


@dataclass
class BankKeys:
    """``StepOutput.pending`` with ``--estep-features bank``: the keys to enqueue ``(B, d)``, the key head's output
    before normalising ``(B, d)`` (for the cluster head) and the images' dataset indices ``(B,)``."""

    keys: torch.Tensor
    raw: torch.Tensor | None
    index: torch.Tensor


@register_method
class PCL(MoCo):
    """MoCo v2 encoders and queue, an optional cluster head (query side trained, key side by momentum), and the
    last E-step's :class:`~pcl.estep.clustering.ClusterResult` (``cluster_result``; None before the first);
    with ``--estep-features bank`` the bank of the next E-step (``view_bank``; ``epochs``: the run's length)."""

    name = "pcl"
    uses_warmup = True

    def __init__(
        self,
        *,
        model: ModelConfig,
        loss: LossConfig,
        estep: EStepConfig,
        bn_splits: int,
        views: ViewSpec,
        epochs: int | None,
    ) -> None:
        super().__init__(model=model, loss=loss, bn_splits=bn_splits, views=views)
        self.estep_cfg = estep
        self.find_unused_parameters = model.cluster_head != "none"
        self.cluster_result: ClusterResult | None = None
        bank = estep.features == "bank"
        self.view_bank = ViewBank(estep, model.low_dim, loss.warmup_epochs, epochs) if bank else None
        self.estep_runs = epochs is None or loss.warmup_epochs < epochs  # False: the run trains MoCo v2

    def _cluster_head(self, model: ModelConfig) -> nn.Module | None:
        return cluster_head(model.cluster_head, model.low_dim)

    @classmethod
    def from_config(cls, cfg: MethodSettings, bn_splits: int | None = None) -> PCL:
        splits = cfg.model.bn_splits if bn_splits is None else bn_splits
        views = cfg.data.aug.view_spec()
        return cls(
            model=cfg.model, loss=cfg.loss, estep=cfg.estep, bn_splits=splits, views=views, epochs=cfg.train.epochs
        )

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        if cfg.estep.max_points < max(cfg.estep.num_cluster):
            raise PCLError(
                f"--kmeans-max-points {cfg.estep.max_points} is smaller than --num-cluster "
                f"{max(cfg.estep.num_cluster)}: k-means needs at least one point per cluster"
            )
        super().validate(cfg)

    @classmethod
    def validate_data(cls, cfg: MethodSettings, num_train: int) -> None:
        super().validate_data(cfg, num_train)
        too_big = [k for k in cfg.estep.num_cluster if k > num_train]
        if too_big:
            raise PCLError(f"--num-cluster {','.join(map(str, too_big))} exceeds the {num_train} training images")

    @classmethod
    def notes(cls, cfg: MethodSettings) -> list[str]:
        warmup, epochs = cfg.loss.warmup_epochs, cfg.train.epochs
        if warmup < epochs:
            return super().notes(cfg)
        return [
            f"--warmup-epochs {warmup} >= --epochs {epochs}: no E-step will run, this trains MoCo v2 (InfoNCE only)",
            *super().notes(cfg),
        ]

    def has_prototypes(self) -> bool:
        return self.cluster_result is not None

    # -------------------------------------------------------------- M-step
    def objective(self, out: Embeddings, index: torch.Tensor) -> StepOutput:
        """InfoNCE + mean ProtoNCE over the granularities of the last E-step (InfoNCE alone before it)."""
        levels = self.cluster_result.levels if self.cluster_result is not None else []
        obj = self._objective(out, index, levels)
        step = self._step(obj, out)
        if levels:
            for g, (loss, hits) in zip(levels, obj.protos, strict=True):
                step.terms[f"loss_proto/k{g.k}"] = loss
                step.hits[f"acc_proto/k{g.k}"] = hits
                step.checked[f"loss_proto/k{g.k}"] = f"ProtoNCE k={g.k}"
            step.terms["loss_proto"] = torch.stack([p[0] for p in obj.protos]).mean()
            step.hits["acc_proto"] = torch.stack([p[1] for p in obj.protos]).float().mean()
        if self.view_bank is not None:
            step.pending = BankKeys(step.pending, out.k_raw, index)
        return step

    @torch.no_grad()
    def after_step(self, step: StepOutput) -> None:
        """``--estep-features bank``: the step's key features into the bank (before the momentum update, so
        through the key side the forward used); then the momentum update and the enqueue."""
        pending = step.pending
        if isinstance(pending, BankKeys):
            rows = pending.keys
            if self.cluster_k is not None:  # the E-step clusters the cluster head's space
                rows = F.normalize(self.cluster_k(pending.raw.float()), dim=1)
            self.view_bank.add(rows, pending.index)
            step = replace(step, pending=pending.keys)
        super().after_step(step)

    def summary_terms(self) -> tuple[str, ...]:
        return ("acc_inst", "acc_proto") if self.estep_runs else ("acc_inst",)

    # -------------------------------------------------------------- E-step
    def epoch_pass(self, epoch: int) -> bool:
        """The E-step runs from epoch ``--warmup-epochs`` on; it passes over the eval view unless it clusters the
        bank (``--estep-features bank``)."""
        return epoch >= self.loss_cfg.warmup_epochs and self.view_bank is None

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> dict[str, float]:
        """The E-step of ``epoch`` (none during warmup): cluster the momentum features of every training image at
        every granularity; returns the cluster statistics (and, with labels, NMI / AMI / purity) as scalars.

        ``--kmeans-init previous`` starts from the previous E-step's result (also after a resume).
        ``--estep-features bank``: clusters the bank the previous epoch's M-step wrote, and opens the next one."""
        written = None
        if self.view_bank is not None:
            written = self.view_bank.take(epoch)
            self.view_bank.begin(epoch, ctx.info.rank)
        if epoch < self.loss_cfg.warmup_epochs:
            self.cluster_result = None
            return {}
        was_training = self.training
        self.eval()
        t0 = time.time()
        fn = self.cluster_features if ctx.bank is None else self.cluster_and_bank_features
        hook = None if ctx.log_image is None or not ctx.gallery else self._gallery_hook(ctx)
        fp = FeaturePass(fn, ctx.loader, ctx.num_train, self.low_dim, ctx.info, ctx.autocast)
        result = run_estep(
            fp,
            self.estep_cfg,
            epoch,
            self.loss_cfg.temperature,
            ctx.timer,
            self.cluster_result,
            ctx.bank,
            hook,
            written,
        )
        self.train(was_training)
        self.cluster_result = result
        scalars = {f"cluster/k{g.k}/{name}": v for g in result.levels for name, v in g.stats.items()}
        scalars["time/estep_seconds"] = time.time() - t0
        if ctx.labels is not None:
            t1 = time.time()
            scalars.update(cluster_scalars(result, ctx.labels))
            scalars["time/cluster_metrics_seconds"] = time.time() - t1
        if ctx.save is not None and self.estep_cfg.save_clusters:
            ctx.save(result.state_dict())
        return scalars

    def _gallery_hook(self, ctx: EpochContext) -> Any:
        """``--log-cluster-images N``: each granularity's gallery to TensorBoard, from the E-step's shards."""

        def hook(store: FeatureStore, result: ClusterResult) -> None:
            for tag, image in gallery_images(result, store.shards, ctx.loader.dataset, ctx.gallery).items():
                ctx.log_image(tag, image)

        return hook

    @torch.no_grad()
    def cluster_features(self, images: torch.Tensor) -> torch.Tensor:
        """E-step features: momentum encoder (+ momentum cluster head), L2-normalised ``(B, low_dim)``."""
        z = self.encoder_k(images)
        if self.cluster_k is not None:
            z = self.cluster_k(z)
        return F.normalize(z, dim=1)

    @torch.no_grad()
    def cluster_and_bank_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One momentum-encoder pass for the E-step and the kNN bank: ``(cluster_features (B, low_dim),
        key_backbone_features (B, D))``, each equal to its own method's result (the same operations)."""
        h = self.encoder_k.backbone(images)
        z = self.encoder_k.head(h)
        if self.cluster_k is not None:
            z = self.cluster_k(z)
        return F.normalize(z, dim=1), F.normalize(h, dim=1)

    # -------------------------------------------------------------- checkpoint
    def extra_state(self) -> dict[str, Any]:
        """The cluster result; with ``--estep-features bank`` also ``view_bank`` (collective: every rank's writer)."""
        state = {"cluster_result": None if self.cluster_result is None else self.cluster_result.state_dict()}
        if self.view_bank is not None:
            state["view_bank"] = self.view_bank.state()
        return state

    def load_extra_state(self, ckpt: dict[str, Any], device: torch.device) -> None:
        state = ckpt.get("cluster_result")
        self.cluster_result = None if state is None else ClusterResult.from_state_dict(state).to(device)
        if self.view_bank is not None:
            note = self.view_bank.load_state(ckpt.get("view_bank"), pdist.rank())
            if note and pdist.rank() == 0:
                print(f"note: {note}")

    def after_save(self) -> None:
        if self.view_bank is not None:
            self.view_bank.after_save(pdist.rank())
