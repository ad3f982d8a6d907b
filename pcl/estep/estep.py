"""E-step: momentum features of every training image -> disk shards -> k-means per granularity -> prototypes.

Memory: accelerator holds one batch and the centroids; host holds one shard, the k-means training sample
(at most ``max_points`` rows, on rank 0 only) and the ``(N,)`` assignments. Under torchrun each rank
extracts its own partition ``rank::world`` into its own shards; rank 0 trains the centroids on a sample
gathered through torch.distributed (no shared file system needed) and broadcasts them; each rank assigns
its shards; counts, distance sums and assignments are all-reduced, so every rank ends with the same result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from pcl.estep.clustering import (
    KMEANS_INITS,
    ClusterResult,
    Granularity,
    KMeansConfig,
    assign,
    concentration,
    degenerate,
    phi_raw_mean,
    train_kmeans,
)
from pcl.estep.feature_store import DTYPES, FeatureStore, ShardWriter
from pcl.model.bank import FeatureBank
from pcl.model.features import iter_features
from pcl.utils import distributed as pdist
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, flag, int_list
from pcl.utils.logs import progress
from pcl.utils.timing import NULL_TIMER, PhaseTimer


@dataclass
class EStepConfig:
    """The E-step's settings (``--num-cluster``, ``--kmeans-*``, ``--feature-*``); defaults are the command line's.

    The concentration's target mean (the temperature) and the feature dimension come from the method.
    """

    GROUP: ClassVar[str] = "PCL E-step"

    num_cluster: list[int] = flag(  # k per granularity
        default_factory=lambda: [50, 100, 200],
        type=int_list,
        ge=2,
        help_first=True,
        help="k per granularity, comma list (official ImageNet: 25000,50000,100000)",
    )
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    max_points: int = flag(
        2_000_000,
        "--kmeans-max-points",
        gt=0,
        help="k-means trains on all features up to this many, else on a uniform sample",
    )
    feature_dir: Path | None = flag(  # shards go to <feature_dir>/epochXXXX; None: <exp-dir>/features
        None, type=Path, help="E-step shards (default <exp-dir>/features)"
    )
    feature_dtype: str = flag("float32", choices=tuple(DTYPES))
    shard_rows: int = flag(65536, "--feature-shard-rows", gt=0, help="rows per feature shard")
    keep_features: bool = flag(False, action="store_true", help="keep each epoch's feature shards")
    save_clusters: bool = flag(False, action="store_true", help="write <exp-dir>/clusters/epoch_XXXX.pth each E-step")
    seed: int = 0

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range (k-means settings included)."""
        if not self.num_cluster:
            raise PCLError(f"--num-cluster needs at least one value >= 2, got {self.num_cluster}")
        check_fields(self)
        self.kmeans.validate()


@torch.no_grad()
def extract_features(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    writer: ShardWriter,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    show: bool = True,
    bank: FeatureBank | None = None,
) -> FeatureStore:
    """Run ``features_fn`` ``(B,3,H,W) -> (B,d)`` over ``loader`` (items ``(images, index)``) into shards.

    With ``bank``, ``features_fn`` returns ``((B, d) cluster features, (B, D) bank features)`` and the second
    go into ``bank`` by dataset index (one pass for the E-step and the kNN monitor's bank).
    """
    for feats, index in iter_features(features_fn, loader, device, autocast, "E-step features", show):
        if bank is not None:
            feats, bank_feats = feats
            bank.add(bank_feats, index)
        writer.add(feats, index)
    return writer.close()


def kmeans_sample(store: FeatureStore, num_total: int, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """This rank's share of a uniform k-means training sample: ``(~len(store) * max_points / N, d)``."""
    if num_total <= max_points:
        return store.take(np.arange(len(store)))
    n = round(len(store) * max_points / num_total)
    return store.take(np.sort(rng.choice(len(store), size=n, replace=False)))


def cluster_store(
    store: FeatureStore,
    num_total: int,
    cfg: EStepConfig,
    info: DistInfo,
    epoch: int,
    temperature: float,
    show: bool = True,
    timer: PhaseTimer = NULL_TIMER,
    previous: ClusterResult | None = None,
) -> ClusterResult:
    """k-means for every granularity on this rank's ``store`` (and the other ranks'), streamed assignment.

    The concentrations of each granularity are rescaled to mean ``temperature``. ``timer`` gets the phases
    ``kmeans`` (sample + training) and ``assign`` (streamed assignment, concentrations). With
    ``cfg.kmeans.init == "previous"``, each granularity whose ``k`` ``previous`` (the last E-step's result)
    also has starts from its centroids (one run, no restarts); the others, and every granularity of the first
    E-step, start as with ``random``.
    """
    with timer.phase("kmeans"):
        inits = warm_start_centroids(previous, cfg, store.dim)
        centroids = _train_centroids(store, num_total, cfg, info, epoch, inits)
    with timer.phase("assign"):
        return _assign_all(store, centroids, num_total, cfg, info, epoch, temperature, show)


def warm_start_centroids(previous: ClusterResult | None, cfg: EStepConfig, dim: int) -> list[np.ndarray | None]:
    """Starting centroids ``(k, dim)`` per granularity: the previous E-step's with ``--kmeans-init previous``,
    None (random restarts) with ``random``, for the first E-step, or for a ``k`` the previous result lacks."""
    if cfg.kmeans.init not in KMEANS_INITS:
        raise ValueError(f"unknown k-means init {cfg.kmeans.init!r}; choose from {', '.join(KMEANS_INITS)}")
    if cfg.kmeans.init == "random" or previous is None:
        return [None] * len(cfg.num_cluster)
    return previous.warm_start(cfg.num_cluster, dim)


def _train_centroids(
    store: FeatureStore,
    num_total: int,
    cfg: EStepConfig,
    info: DistInfo,
    epoch: int,
    inits: list[np.ndarray | None],
) -> list[torch.Tensor]:
    """Rank 0 trains ``(k, d)`` centroids per granularity (from ``inits[i]`` when given) on a gathered sample;
    broadcast to every rank."""
    dev = info.device
    rng = np.random.default_rng([cfg.seed, epoch, info.rank])
    sample = pdist.gather_rows_to_main(kmeans_sample(store, num_total, cfg.max_points, rng), dev)
    centroids = []
    for i, (k, init) in enumerate(zip(cfg.num_cluster, inits, strict=True)):
        c = torch.empty(k, store.dim, dtype=torch.float32, device=dev)
        if info.is_main:  # official: seed = granularity index
            c.copy_(torch.from_numpy(train_kmeans(sample, k, seed=i, cfg=cfg.kmeans, init=init)))
        centroids.append(pdist.broadcast(c))
    return centroids


def _assign_all(
    store: FeatureStore,
    centroids: list[torch.Tensor],
    num_total: int,
    cfg: EStepConfig,
    info: DistInfo,
    epoch: int,
    temperature: float,
    show: bool,
) -> ClusterResult:
    """Nearest centroid of every stored feature, all-reduced counts and distance sums, concentrations."""
    dev = info.device
    levels = len(cfg.num_cluster)
    im2cluster = [torch.zeros(num_total, dtype=torch.long, device=dev) for _ in range(levels)]
    counts = [torch.zeros(k, dtype=torch.float64, device=dev) for k in cfg.num_cluster]
    sums = [torch.zeros(k, dtype=torch.float64, device=dev) for k in cfg.num_cluster]
    sq_total = torch.zeros(levels, dtype=torch.float64, device=dev)
    for idx, feats in progress(store.shards(), "E-step assign", len(store.stems), show):
        x = torch.from_numpy(np.array(feats, dtype=np.float32)).to(dev)  # one shard, writable copy
        idx_t = torch.from_numpy(idx).to(dev)
        for j, c in enumerate(centroids):
            ids, sqd = assign(x, c)
            im2cluster[j][idx_t] = ids
            counts[j] += torch.bincount(ids, minlength=c.shape[0]).double()
            sums[j] += torch.bincount(ids, weights=sqd.double().sqrt(), minlength=c.shape[0])
            sq_total[j] += sqd.double().sum()
    for t in (*im2cluster, *counts, *sums, sq_total):
        pdist.all_reduce_sum(t)

    out = []
    for j, k in enumerate(cfg.num_cluster):
        stats = {
            "empty_clusters": float((counts[j] == 0).sum()),
            "largest_cluster": float(counts[j].max()),
            "phi_mean_raw": phi_raw_mean(counts[j], sums[j]),
            "objective": float(sq_total[j] / num_total),
        }
        density = concentration(counts[j], sums[j], temperature)
        why = degenerate(counts[j], sums[j])
        if why is not None and info.is_main:  # phi stays finite; say why it carries little information
            print(f"warning: E-step k={k}: {why}; concentrations kept finite and positive (mean {temperature})")
        norms = centroids[j].norm(dim=1)
        c = torch.nn.functional.normalize(centroids[j], dim=1)
        out.append(Granularity(k, im2cluster[j], c, density.to(dev), stats, norms))
    return ClusterResult(epoch, out)


@dataclass
class FeaturePass:
    """The E-step's pass over the training images: ``features_fn`` maps ``(B, 3, H, W)`` to ``(B, dim)``
    features (with a bank: pairs, see :func:`extract_features`), ``loader`` yields this rank's share of the
    ``num_total`` images (eval view, items ``(images, index)``)."""

    features_fn: Callable[[torch.Tensor], torch.Tensor]
    loader: DataLoader
    num_total: int
    dim: int
    info: DistInfo
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def run_estep(
    feature_pass: FeaturePass,
    cfg: EStepConfig,
    epoch: int,
    temperature: float,
    timer: PhaseTimer = NULL_TIMER,
    previous: ClusterResult | None = None,
    bank: FeatureBank | None = None,
    on_clustered: Callable[[FeatureStore, ClusterResult], None] | None = None,
) -> ClusterResult:
    """Whole E-step for ``epoch``: features of this rank's images to shards, clustering (concentrations of mean
    ``temperature``; warm start from ``previous``, see :func:`cluster_store`), clean-up. ``timer`` gets
    ``estep_features``, ``kmeans``, ``assign``. With ``bank``, the features function returns pairs and fills it as
    :func:`extract_features` says. ``on_clustered(store, result)`` runs before the shards are deleted (e.g.
    ``--log-cluster-images``)."""
    if cfg.feature_dir is None:
        raise ValueError("EStepConfig.feature_dir is unset (main_pcl sets it to <exp-dir>/features)")
    fp, info = feature_pass, feature_pass.info
    show = info.is_main
    writer = ShardWriter(
        cfg.feature_dir / f"epoch{epoch:04d}", fp.dim, cfg.feature_dtype, cfg.shard_rows, f"rank{info.rank}"
    )
    with timer.phase("estep_features"):
        store = extract_features(fp.features_fn, fp.loader, writer, info.device, fp.autocast, show, bank)
    result = cluster_store(store, fp.num_total, cfg, info, epoch, temperature, show, timer, previous)
    if on_clustered is not None:
        on_clustered(store, result)
    if not cfg.keep_features:
        store.delete()
    return result
