"""``--feature-map-freq N``: every N epochs, a 2-D map of the eval-view backbone features in TensorBoard (rank 0).

A seeded subsample of ``--feature-map-points`` train images (the same images at every epoch, under the eval view:
resize + center crop), their trained backbone's features (:meth:`pcl.methods.base.Method.backbone_features`),
t-SNE (UMAP when ``umap-learn`` is installed: :func:`pcl.analysis.embedding.embed_2d`), drawn by
:func:`pcl.analysis.render.feature_map` as the image ``features/map`` at step = epoch. Coloured by class when the
data has labels; unlabeled, by a k-means of the same features into ``UNLABELED_GROUPS`` clusters, each with a
legend entry (its size) and its most central image on the map. The images are read in order, without a
DataLoader: the pass draws nothing from any random generator, so training is the same with the map on or off.
Its cost is logged as ``time/feature_map_seconds``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Subset

from pcl.analysis import render
from pcl.analysis.cluster_metrics import has_classes
from pcl.analysis.embedding import embed_2d, kmeans_ids, subsample
from pcl.data.datasets import eval_loader
from pcl.methods.base import Method
from pcl.model.features import extract
from pcl.run.tb import TBLogger
from pcl.train.monitor import MonitorConfig
from pcl.utils.distributed import DistInfo

UNLABELED_GROUPS = 8  # k-means clusters that colour the map of unlabeled images
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}
TAG = "features/map"


class FeatureMapMonitor:
    """The map of ``method``'s backbone features of ``loaders.estep``'s images (the train set, eval view)."""

    def __init__(
        self,
        cfg: MonitorConfig,
        method: Method,
        loaders: object,  # pcl.train.engine.Loaders
        info: DistInfo,
        autocast: Callable[[], contextlib.AbstractContextManager],
        seed: int = 0,
    ) -> None:
        self.cfg, self.method, self.loaders, self.info = cfg, method, loaders, info
        self.autocast, self.seed = autocast, seed

    def due(self, epoch: int) -> bool:
        """True after epochs ``N - 1, 2N - 1, ...`` (``--feature-map-freq N``; 0 = never), on rank 0."""
        f = self.cfg.feature_map_freq
        return bool(f) and (epoch + 1) % f == 0 and self.info.is_main

    @torch.no_grad()
    def features(self) -> tuple[np.ndarray, np.ndarray, torch.utils.data.Dataset]:
        """``(index (n,), features (n, D))`` of the seeded subsample, and the dataset they index."""
        dataset = self.loaders.estep.dataset  # type: ignore[attr-defined]
        while isinstance(dataset, torch.utils.data.Subset):  # a rank's share: the full set behind it
            dataset = dataset.dataset
        index = subsample(len(dataset), self.cfg.feature_map_points, self.seed)
        was_training = self.method.training
        self.method.eval()
        loader = eval_loader(Subset(dataset, index.tolist()), 256, 0)
        feats = extract(self.method.backbone_features, loader, self.info.device, self.autocast, show=False)
        self.method.train(was_training)
        return index, feats.cpu().numpy(), dataset

    def draw(self, epoch: int) -> np.ndarray:
        """The map after epoch ``epoch`` as ``(H, W, 3) uint8``."""
        index, x, dataset = self.features()
        xy, method = embed_2d(x, "auto", self.seed)
        labels = self.loaders.train_labels  # type: ignore[attr-defined]
        if labels is not None and has_classes(labels):
            ids, names, what = labels.numpy()[index], list(getattr(dataset, "classes", [])) or None, "class"
            thumb = None
        else:
            ids, names, what = kmeans_ids(x, UNLABELED_GROUPS, self.seed), None, "k-means cluster of these features"
            thumb = render.dataset_thumbs(dataset)
        title = (
            f"{METHOD_NAMES[method]} of the backbone features after epoch {epoch}: {len(index)} of {len(dataset)} "
            f"train images (eval view), coloured by {what}"
        )
        return render.to_array(render.feature_map(xy, ids, names, title, what.split(" of ")[0], thumb, index))

    def log(self, epoch: int, tb: TBLogger) -> dict[str, float]:
        """Draw and log the map when due; returns ``{"time/feature_map_seconds": s}`` then, else ``{}``."""
        if not self.due(epoch):
            return {}
        t0 = time.time()
        tb.image(TAG, self.draw(epoch), epoch)
        return {"time/feature_map_seconds": time.time() - t0}
