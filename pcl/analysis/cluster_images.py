"""``--log-cluster-images N``: each E-step's cluster gallery in TensorBoard's Images tab (rank 0).

The pictures reuse what the E-step computed: its feature shards (read before they are deleted), assignments,
prototypes and concentrations. One image per granularity, tag ``clusters/k<K>``, step = the E-step's epoch:
the ``N`` largest clusters, one row each, their ``MEMBERS`` images nearest the prototype (this rank's share of
the data under DDP) in the E-step's eval view, the row labelled with k, cluster, size and phi.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from torch.utils.data import Dataset

from pcl.analysis import render
from pcl.analysis.embedding import gallery_rows
from pcl.estep.clustering import ClusterResult

MEMBERS = 8  # images per gallery row

Chunks = Iterable[tuple[np.ndarray, np.ndarray]]


def gallery_images(
    result: ClusterResult, chunks: Callable[[], Chunks], dataset: Dataset, n_clusters: int, members: int = MEMBERS
) -> dict[str, np.ndarray]:
    """``{"clusters/k<K>": (H, W, 3) uint8}`` for every granularity of ``result``.

    ``chunks()`` yields the clustered features as ``(indices (n,), features (n, d))`` (e.g.
    ``FeatureStore.shards``); ``dataset[i][0]`` is image ``i`` under the eval view, normalised ``(3, H, W)``.
    """
    thumbs = render.dataset_thumbs(dataset)
    out = {}
    for g in result.levels:
        rows = gallery_rows(
            chunks(),
            g.im2cluster.cpu().numpy(),
            g.centroids.float().cpu().numpy(),
            g.concentration.float().cpu().numpy(),
            n_clusters,
            members,
        )
        what = f"{len(rows)} largest clusters, members nearest first"
        title = f"E-step at the start of epoch {result.epoch}, k={g.k}: {what}"
        out[f"clusters/k{g.k}"] = render.to_array(render.gallery(rows, thumbs, members, title))
    return out
