"""--log-cluster-images: the E-step's gallery as TensorBoard images, one per granularity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pcl.analysis import render
from pcl.analysis.cluster_images import gallery_images
from pcl.estep.clustering import ClusterResult, Granularity
from pcl.run.tb import TBLogger


class _Images(torch.utils.data.Dataset):
    """Image ``i`` is a flat normalised 8x8 picture of value ``i``; items are ``(image (3, 8, 8), i)``."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((3, 8, 8), i / 12.0), i


def test_one_gallery_image_per_granularity_logged_to_tensorboard(tmp_path: Path) -> None:
    feats = F.normalize(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    levels = [
        Granularity(2, torch.arange(12) % 2, F.normalize(feats[:2], dim=1), torch.tensor([0.1, 0.3])),
        Granularity(3, torch.arange(12) % 3, F.normalize(feats[:3], dim=1), torch.tensor([0.2, 0.2, 0.2])),
    ]
    result = ClusterResult(4, levels)
    shards = [(np.arange(6), feats[:6].numpy()), (np.arange(6, 12), feats[6:].numpy())]
    images = gallery_images(result, lambda: iter(shards), _Images(), n_clusters=2, members=3)
    assert sorted(images) == ["clusters/k2", "clusters/k3"]
    w, h = render.gallery_size(2, 3)
    assert all(img.shape == (h, w, 3) and img.dtype == np.uint8 for img in images.values())
    tb = TBLogger(tmp_path)
    for tag, img in images.items():
        tb.image(tag, img, result.epoch)
    tb.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == ["clusters/k2", "clusters/k3"]
    event = acc.Images("clusters/k3")[0]
    assert (event.step, event.width, event.height) == (4, w, h)
