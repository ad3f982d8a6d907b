"""The kNN monitor of the EM loop: weighted kNN top-1 (%) of frozen backbone features on the eval split, and the
monitors' settings (:class:`MonitorConfig`).

``--knn-encoder query`` (default) measures the query backbone on a bank it extracts itself; ``key`` measures the
momentum backbone, whose bank the E-step's pass can fill (``--knn-encoder key``, one process): then epoch e's
monitor runs right after epoch e+1's E-step, on the same weights, and extracts only the eval split.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from pcl.analysis.knn import knn_top1
from pcl.methods.base import Method
from pcl.model.features import extract
from pcl.utils.distributed import DistInfo
from pcl.utils.flags import check_fields, flag


@dataclass
class MonitorConfig:
    """What the loop measures besides the losses: the kNN monitor, the feature map, cluster metrics and galleries
    of the E-step."""

    GROUP: ClassVar[str] = "PCL E-step"

    cluster_metrics: bool = flag(
        True,
        action=argparse.BooleanOptionalAction,
        help="log NMI/AMI/purity of each E-step's clusters against the train labels (when > 1 class)",
    )
    log_cluster_images: int = flag(
        0,
        ge=0,
        help="after each E-step, show the N largest clusters of each granularity (8 members nearest the "
        "prototype) in TensorBoard's Images tab (0 = off)",
    )
    feature_map_freq: int = flag(
        10,
        ge=0,
        group="run",
        help="every N epochs, a 2-D map (t-SNE; UMAP when umap-learn is installed) of the eval-view backbone "
        "features of --feature-map-points train images in TensorBoard's Images tab (0 = off; docs/training.md)",
    )
    feature_map_points: int = flag(500, gt=1, group="run", help="seeded subsample of the feature map")
    knn_freq: int = flag(  # 0 = never
        1,
        ge=0,
        group="run",
        help="kNN monitor every N epochs and after the last one (0 = never); costs a full train+val feature pass",
    )
    knn_encoder: str = flag(
        "query",
        choices=("query", "key"),
        group="run",
        help="encoder the kNN monitor measures; key: on E-step epochs the bank comes from the E-step's own pass "
        "(docs/performance.md)",
    )
    knn_k: int = flag(200, gt=0, group="run")
    knn_t: float = flag(0.1, gt=0, group="run")

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range."""
        check_fields(self)


class KnnMonitor:
    """kNN top-1 of ``method``'s backbone (``--knn-encoder``) on ``loaders.knn_eval`` against ``loaders.knn_train``,
    every ``--knn-freq`` epochs of a schedule of ``epochs``."""

    def __init__(
        self,
        cfg: MonitorConfig,
        method: Method,
        loaders: object,  # pcl.train.engine.Loaders
        info: DistInfo,
        autocast: Callable[[], contextlib.AbstractContextManager],
        epochs: int,
    ) -> None:
        self.cfg, self.method, self.loaders, self.info, self.autocast = cfg, method, loaders, info, autocast
        self.epochs = epochs

    def evaluate(self, bank: torch.Tensor | None = None, label: str = "kNN") -> float | None:
        """Top-1 (%) on rank 0 (None elsewhere, or without an eval split).

        ``bank``: the train features ``(N, D)`` already computed (by the E-step's pass); else extracted here.
        ``label`` names the two extractions (progress bars: ``kNN bank``, ``kNN eval``)."""
        ld, t = self.loaders, self.cfg
        if ld.knn_eval is None or not self.info.is_main:
            return None
        was_training = self.method.training
        self.method.eval()
        fn = self.method.key_backbone_features if t.knn_encoder == "key" else self.method.backbone_features
        if bank is None:
            bank = extract(fn, ld.knn_train, self.info.device, self.autocast, f"{label} bank")
        test = extract(fn, ld.knn_eval, self.info.device, self.autocast, f"{label} eval")
        self.method.train(was_training)
        return knn_top1(bank, ld.train_labels, test, ld.eval_labels, ld.num_classes, t.knn_k, t.knn_t)

    def due(self, epoch: int, end: int) -> bool:
        """The monitor runs after ``epoch`` (every ``--knn-freq`` epochs and after the last of this invocation,
        ``end``), unless it is deferred to the next epoch's pass."""
        f = self.cfg.knn_freq
        return bool(f) and ((epoch + 1) % f == 0 or epoch + 1 == end) and not self.deferred(epoch)

    def deferred(self, epoch: int) -> bool:
        """True when epoch ``epoch``'s monitor runs at the start of epoch ``epoch + 1`` instead, on the bank the
        method's epoch pass computes (``--knn-encoder key``, one process): the key encoder is the same then.

        Depends on the configuration only (not on ``--stop-after-epochs``), so a resumed run agrees."""
        t = self.cfg
        return (
            t.knn_encoder == "key"
            and not self.info.enabled
            and self.loaders.knn_eval is not None
            and bool(t.knn_freq)
            and epoch >= 0
            and epoch + 1 < self.epochs
            and self.method.epoch_pass(epoch + 1)
            and (epoch + 1) % t.knn_freq == 0
        )
