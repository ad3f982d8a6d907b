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
from torch.utils.data import DataLoader, Subset

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

ESTEP_FEATURES = ("eval", "bank")


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
    features: str = flag(
        "eval",
        "--estep-features",
        choices=ESTEP_FEATURES,
        help="eval: a momentum-encoder pass over the eval view of every training image (official); bank: the "
        "momentum encoder's features of the training views, written by the previous epoch's M-step (no extra pass)",
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
    E-step, start as with ``random``. ``cfg.kmeans.hierarchical``: see :func:`cluster_hierarchical`.
    """
    inits = warm_start_centroids(previous, cfg, store.dim)
    if cfg.kmeans.hierarchical and len(cfg.num_cluster) > 1:
        return cluster_hierarchical(store, num_total, cfg, info, epoch, temperature, show, timer, inits)
    ks = cfg.num_cluster
    with timer.phase("kmeans"):
        centroids = _train_centroids(store, num_total, cfg, info, epoch, inits, list(range(len(ks))))
    with timer.phase("assign"):
        levels = _accumulate(store, [nearest_rule(c) for c in centroids], ks, num_total, info, show)
        return ClusterResult(epoch, _granularities(ks, centroids, levels, num_total, temperature, info))


def cluster_hierarchical(
    store: FeatureStore,
    num_total: int,
    cfg: EStepConfig,
    info: DistInfo,
    epoch: int,
    temperature: float,
    show: bool,
    timer: PhaseTimer,
    inits: list[np.ndarray | None],
) -> ClusterResult:
    """``--kmeans-hierarchical``: k-means of the largest ``k`` on the features (as the flat E-step: sample,
    restarts or warm start, streamed assignment); then each smaller ``k``, in decreasing order, by weighted
    k-means of the next larger level's ``(k_fine, d)`` centroids, each weighted by its number of images (seed and
    warm start of that granularity as in the flat E-step). An image's cluster at a coarser level is the coarse
    cluster of its finer cluster (nested partitions); each level's concentrations come from the distances of
    the images to that level's own centroids (a second streamed pass). k-means multiply-adds: ``N k_max`` per
    iteration plus ``k_fine k`` per coarser level, instead of ``N sum(k)``."""
    ks = cfg.num_cluster
    order = sorted(range(len(ks)), key=lambda i: -ks[i])  # finest first (stable for equal k)
    with timer.phase("kmeans"):
        fine = _train_centroids(store, num_total, cfg, info, epoch, inits, order[:1])[0]
    with timer.phase("assign"):
        (finest,) = _accumulate(store, [nearest_rule(fine)], [ks[order[0]]], num_total, info, show)
    centroids, maps, counts, finer = {order[0]: fine}, {}, finest.counts, order[0]
    with timer.phase("kmeans"):
        for i in order[1:]:
            centroids[i] = _train_weighted(centroids[finer], counts, ks[i], i, cfg, info, inits[i])
            step = assign(centroids[finer], centroids[i])[0]  # (k_finer,) coarse cluster of each finer cluster
            maps[i] = step[maps[finer]] if finer in maps else step  # (k_max,) from the finest level
            counts = torch.zeros(ks[i], dtype=torch.float64, device=counts.device).index_add_(0, step, counts)
            finer = i
    with timer.phase("assign"):
        rules = [_through_rule(centroids[i], maps[i], finest.im2cluster) for i in order[1:]]
        coarse = _accumulate(store, rules, [ks[i] for i in order[1:]], num_total, info, show)
        by_level = dict(zip(order, [finest, *coarse], strict=True))
        stats = [by_level[i] for i in range(len(ks))]
        cs = [centroids[i] for i in range(len(ks))]
        return ClusterResult(epoch, _granularities(ks, cs, stats, num_total, temperature, info))


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
    levels: list[int],
) -> list[torch.Tensor]:
    """Rank 0 trains ``(k, d)`` centroids for the granularities ``levels`` (positions in ``cfg.num_cluster``;
    from ``inits[i]`` when given) on a gathered sample; broadcast to every rank."""
    dev = info.device
    rng = np.random.default_rng([cfg.seed, epoch, info.rank])
    sample = pdist.gather_rows_to_main(kmeans_sample(store, num_total, cfg.max_points, rng), dev)
    centroids = []
    for i in levels:
        k = cfg.num_cluster[i]
        c = torch.empty(k, store.dim, dtype=torch.float32, device=dev)
        if info.is_main:  # official: seed = granularity index
            c.copy_(torch.from_numpy(train_kmeans(sample, k, seed=i, cfg=cfg.kmeans, init=inits[i])))
        centroids.append(pdist.broadcast(c))
    return centroids


def _train_weighted(
    points: torch.Tensor,
    weights: torch.Tensor,
    k: int,
    seed: int,
    cfg: EStepConfig,
    info: DistInfo,
    init: np.ndarray | None,
) -> torch.Tensor:
    """Rank 0: weighted k-means of ``points (m, d)`` (finer centroids) with ``weights (m,)`` (their sizes) into
    ``(k, d)`` centroids, broadcast. Empty finer clusters take no part (unless fewer than ``k`` are not empty)."""
    c = torch.empty(k, points.shape[1], dtype=torch.float32, device=points.device)
    if info.is_main:
        keep = weights > 0
        if int(keep.sum()) < k:
            keep = torch.ones_like(keep)
        x, w = points[keep].cpu().numpy(), weights[keep].cpu().numpy()
        c.copy_(torch.from_numpy(train_kmeans(x, k, seed=seed, cfg=cfg.kmeans, init=init, weights=w)))
    return pdist.broadcast(c)


# one level's rule for a shard: (features (n, d) float32, dataset indices (n,)) -> (cluster ids (n,), sq. dist (n,))
LevelRule = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def nearest_rule(c: torch.Tensor) -> LevelRule:
    """Each row's nearest centroid of ``c (k, d)`` (exact squared L2, :func:`pcl.estep.clustering.assign`)."""
    return lambda x, idx: assign(x, c)


def _through_rule(c: torch.Tensor, finest_to_level: torch.Tensor, finest_ids: torch.Tensor) -> LevelRule:
    """A coarser level: each image's cluster is that of its finest cluster (``finest_to_level (k_max,)`` of
    ``finest_ids (N,)``); the squared distance is to that cluster's centroid in ``c (k, d)``."""

    def rule(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = finest_to_level[finest_ids[idx]]
        return ids, (x - c[ids]).pow(2).sum(1)

    return rule


@dataclass
class _LevelStats:
    """One level's streamed statistics, summed over ranks: ``im2cluster (N,)`` long, ``counts (k,)`` and ``sums
    (k,)`` of the L2 distances to the own centroid (float64), ``sq_total`` (scalar) summed squared distances."""

    im2cluster: torch.Tensor
    counts: torch.Tensor
    sums: torch.Tensor
    sq_total: torch.Tensor


def _accumulate(
    store: FeatureStore, rules: list[LevelRule], ks: list[int], num_total: int, info: DistInfo, show: bool
) -> list[_LevelStats]:
    """One pass over this rank's shards: level ``j``'s ids and distances by ``rules[j]``; all-reduced."""
    dev = info.device
    im2cluster = [torch.zeros(num_total, dtype=torch.long, device=dev) for _ in ks]
    counts = [torch.zeros(k, dtype=torch.float64, device=dev) for k in ks]
    sums = [torch.zeros(k, dtype=torch.float64, device=dev) for k in ks]
    sq_total = torch.zeros(len(ks), dtype=torch.float64, device=dev)
    for idx, feats in progress(store.shards(), "E-step assign", len(store.stems), show):
        x = torch.from_numpy(np.array(feats, dtype=np.float32)).to(dev)  # one shard, writable copy
        idx_t = torch.from_numpy(idx).to(dev)
        for j, (rule, k) in enumerate(zip(rules, ks, strict=True)):
            ids, sqd = rule(x, idx_t)
            im2cluster[j][idx_t] = ids
            counts[j] += torch.bincount(ids, minlength=k).double()
            sums[j] += torch.bincount(ids, weights=sqd.double().sqrt(), minlength=k)
            sq_total[j] += sqd.double().sum()
    for t in (*im2cluster, *counts, *sums, sq_total):
        pdist.all_reduce_sum(t)
    return [_LevelStats(im2cluster[j], counts[j], sums[j], sq_total[j]) for j in range(len(ks))]


def _granularities(
    ks: list[int],
    centroids: list[torch.Tensor],
    levels: list[_LevelStats],
    num_total: int,
    temperature: float,
    info: DistInfo,
) -> list[Granularity]:
    """Each level's :class:`Granularity`: statistics, concentrations (mean ``temperature``), normalised centroids."""
    out = []
    for j, k in enumerate(ks):
        counts, sums = levels[j].counts, levels[j].sums
        stats = {
            "empty_clusters": float((counts == 0).sum()),
            "largest_cluster": float(counts.max()),
            "phi_mean_raw": phi_raw_mean(counts, sums),
            "objective": float(levels[j].sq_total / num_total),
        }
        phi = concentration(counts, sums, temperature)
        why = degenerate(counts, sums)
        if why is not None and info.is_main:  # phi stays finite; say why it carries little information
            print(f"warning: E-step k={k}: {why}; concentrations kept finite and positive (mean {temperature})")
        norms = centroids[j].norm(dim=1)
        c = torch.nn.functional.normalize(centroids[j], dim=1)
        out.append(Granularity(k, levels[j].im2cluster, c, phi.to(info.device), stats, norms))
    return out


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


def bank_store(written: ShardWriter | None, fp: FeaturePass, directory: Path, cfg: EStepConfig) -> FeatureStore:
    """``--estep-features bank``: this rank's store of the E-step, ``written`` (the momentum encoder's features
    of the training views by dataset index, from the previous epoch's M-step; None: no bank, as in the first
    E-step of a run without warmup) completed with the eval-view features of the images no rank's bank holds
    (those its epoch did not reach: the dropped last partial batch, skipped steps), each by the rank that owns
    it in ``fp.loader`` (``rank::world``), then closed."""
    info = fp.info
    writer = written or ShardWriter(directory, fp.dim, cfg.feature_dtype, cfg.shard_rows, f"rank{info.rank}")
    seen = torch.zeros(fp.num_total, dtype=torch.int32, device=info.device)
    if written is not None:
        seen[torch.from_numpy(written.indices()).to(info.device)] = 1
    missing = torch.nonzero(pdist.all_reduce_sum(seen) == 0).flatten().cpu().numpy()
    mine = missing[missing % info.world == info.rank] // info.world  # positions in this rank's share
    if not len(mine):
        return writer.close()
    ld = fp.loader
    part = DataLoader(
        Subset(ld.dataset, mine.tolist()), ld.batch_size, num_workers=ld.num_workers, pin_memory=ld.pin_memory
    )
    return extract_features(fp.features_fn, part, writer, info.device, fp.autocast, info.is_main)


def run_estep(
    feature_pass: FeaturePass,
    cfg: EStepConfig,
    epoch: int,
    temperature: float,
    timer: PhaseTimer = NULL_TIMER,
    previous: ClusterResult | None = None,
    bank: FeatureBank | None = None,
    on_clustered: Callable[[FeatureStore, ClusterResult], None] | None = None,
    written: ShardWriter | None = None,
) -> ClusterResult:
    """Whole E-step for ``epoch``: features of this rank's images to shards, clustering (concentrations of mean
    ``temperature``; warm start from ``previous``, see :func:`cluster_store`), clean-up. ``timer`` gets
    ``estep_features``, ``kmeans``, ``assign``. With ``bank``, the features function returns pairs and fills it as
    :func:`extract_features` says. ``on_clustered(store, result)`` runs before the shards are deleted (e.g.
    ``--log-cluster-images``). ``--estep-features bank``: the features are ``written`` (:func:`bank_store`),
    and their store is left for its owner (:class:`pcl.estep.view_bank.ViewBank`) to delete."""
    if cfg.feature_dir is None:
        raise ValueError("EStepConfig.feature_dir is unset (main_pcl sets it to <exp-dir>/features)")
    fp, info = feature_pass, feature_pass.info
    show = info.is_main
    directory = cfg.feature_dir / f"epoch{epoch:04d}"
    with timer.phase("estep_features"):
        if cfg.features == "bank":
            store = bank_store(written, fp, directory, cfg)
        else:
            writer = ShardWriter(directory, fp.dim, cfg.feature_dtype, cfg.shard_rows, f"rank{info.rank}")
            store = extract_features(fp.features_fn, fp.loader, writer, info.device, fp.autocast, show, bank)
    result = cluster_store(store, fp.num_total, cfg, info, epoch, temperature, show, timer, previous)
    if on_clustered is not None:
        on_clustered(store, result)
    if not cfg.keep_features and cfg.features != "bank":
        store.delete()
    return result
