"""The kNN monitor of the EM loop: weighted kNN top-1 (%) of frozen backbone features on the eval split.

``--knn-encoder query`` (default) measures the query backbone on a bank it extracts itself; ``key`` measures the
momentum backbone, whose bank the E-step's pass can fill (``--knn-encoder key``, one process): then epoch e's
monitor runs right after epoch e+1's E-step, on the same weights, and extracts only the eval split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from pcl.analysis.knn import knn_top1
from pcl.config import TrainConfig
from pcl.model.builder import PCL
from pcl.model.features import extract
from pcl.utils.distributed import DistInfo


class KnnMonitor:
    """kNN top-1 of ``raw``'s backbone (``--knn-encoder``) on ``loaders.knn_eval`` against ``loaders.knn_train``."""

    def __init__(
        self,
        cfg: TrainConfig,
        raw: PCL,
        loaders: object,  # pcl.train.engine.Loaders
        info: DistInfo,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        self.cfg, self.raw, self.loaders, self.info, self.autocast = cfg, raw, loaders, info, autocast

    def evaluate(self, bank: torch.Tensor | None = None) -> float | None:
        """Top-1 (%) on rank 0 (None elsewhere, or without an eval split).

        ``bank``: the train features ``(N, D)`` already computed (by the E-step's pass); else extracted here."""
        ld, t = self.loaders, self.cfg
        if ld.knn_eval is None or not self.info.is_main:
            return None
        was_training = self.raw.training
        self.raw.eval()
        fn = self.raw.key_backbone_features if t.knn_encoder == "key" else self.raw.backbone_features
        if bank is None:
            bank = extract(fn, ld.knn_train, self.info.device, self.autocast, "kNN bank")
        test = extract(fn, ld.knn_eval, self.info.device, self.autocast, "kNN eval")
        self.raw.train(was_training)
        return knn_top1(bank, ld.train_labels, test, ld.eval_labels, ld.num_classes, t.knn_k, t.knn_t)

    def deferred(self, epoch: int) -> bool:
        """True when epoch ``epoch``'s monitor runs at the start of epoch ``epoch + 1`` instead, on the bank its
        E-step's pass computes (``--knn-encoder key``, one process): the key encoder is the same then.

        Depends on the configuration only (not on ``--stop-after-epochs``), so a resumed run agrees."""
        t = self.cfg
        return (
            t.knn_encoder == "key"
            and not self.info.enabled
            and self.loaders.knn_eval is not None
            and bool(t.knn_freq)
            and epoch >= 0
            and t.warmup_epochs <= epoch + 1 < t.epochs
            and (epoch + 1) % t.knn_freq == 0
        )
