"""Clustering stage: faiss k-means, streamed nearest-centroid assignment, vectorised concentrations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from pcl.utils.flags import check_fields, flag

KMEANS_ALPHA = 10.0
KMEANS_INITS = ("random", "previous")


@dataclass
class KMeansConfig:
    """faiss k-means settings; defaults are the official PCL ones."""

    GROUP: ClassVar[str] = "PCL E-step"

    niter: int = flag(20, "--kmeans-niter", gt=0)
    nredo: int = flag(5, "--kmeans-nredo", gt=0)
    max_points_per_centroid: int = 1000
    min_points_per_centroid: int = 10
    use_gpu: bool | None = None  # None: GPU faiss when importable and a GPU exists
    init: str = flag(
        "random",
        "--kmeans-init",
        choices=KMEANS_INITS,
        help="random: --kmeans-nredo runs from random rows (official); previous: one run from the previous "
        "E-step's centroids (warm start; the first E-step starts at random)",
    )
    hierarchical: bool = flag(
        False,
        "--kmeans-hierarchical",
        action="store_true",
        help="cluster only the largest k on the features, each smaller k on the next larger one's centroids "
        "weighted by their sizes (nested clusters; official: every k on the features)",
    )

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range."""
        check_fields(self)


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def train_kmeans(
    x: np.ndarray,
    k: int,
    seed: int,
    cfg: KMeansConfig,
    init: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Train k-means on ``(n, d)`` float32 rows; returns ``(k, d)`` float32 centroids (not normalised).

    ``init``: ``(k, d)`` starting centroids (warm start): one run of ``cfg.niter`` iterations from them instead
    of ``cfg.nredo`` runs from random rows. ``weights``: ``(n,)`` weight of each row (weighted k-means, e.g. the
    sizes of finer clusters whose centroids the rows are); then no minimum of rows per centroid applies.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if init is not None and init.shape != (k, x.shape[1]):
        raise ValueError(f"init centroids have shape {init.shape}, expected {(k, x.shape[1])}")
    use_gpu = faiss_gpu_available() if cfg.use_gpu is None else cfg.use_gpu
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=cfg.niter,
        nredo=cfg.nredo if init is None else 1,
        seed=seed,
        verbose=False,
        gpu=bool(use_gpu),
        max_points_per_centroid=cfg.max_points_per_centroid,
        min_points_per_centroid=cfg.min_points_per_centroid if weights is None else 1,
    )
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    km.train(x, weights=w, init_centroids=None if init is None else np.ascontiguousarray(init, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


@torch.no_grad()
def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row: ``x (n, d)``, ``centroids (k, d)`` -> ``(ids (n,) long, sq_dist (n,) float)``.

    Exact squared L2 in float32 on ``centroids.device``; at most ``chunk`` rows and ~4M distances at a time.
    """
    c = centroids.float()
    c_sq = (c * c).sum(1)
    rows = max(1, min(chunk, (1 << 22) // c.shape[0]))
    ids, dists = [], []
    for start in range(0, x.shape[0], rows):
        xb = x[start : start + rows].to(c.device, torch.float32)
        best, arg = torch.addmm(c_sq, xb, c.T, alpha=-2.0).min(dim=1)  # ||c||^2 - 2 x.c
        ids.append(arg)
        dists.append((best + (xb * xb).sum(1)).clamp_min_(0.0))
    if not ids:
        return torch.empty(0, dtype=torch.long, device=c.device), torch.empty(0, device=c.device)
    return torch.cat(ids), torch.cat(dists)


def _phi_unclamped(counts: torch.Tensor, dist_sums: torch.Tensor, alpha: float) -> torch.Tensor:
    """PCL eq. 12 for clusters with > 1 member: ``mean ||v - c||_2 / log(Z + alpha)``, ``(m,)`` float64 in and out."""
    return (dist_sums / counts) / torch.log(counts + alpha)


def concentration(
    counts: torch.Tensor, dist_sums: torch.Tensor, temperature: float, alpha: float = KMEANS_ALPHA
) -> torch.Tensor:
    """Per-cluster concentration phi from streamed statistics (PCL eq. 12, official post-processing).

    Args:
        counts: ``(k,)`` members per cluster Z.  dist_sums: ``(k,)`` sum of ``||v - c||_2`` over members.
    Returns:
        ``(k,)`` float32: ``mean dist / log(Z + alpha)``; clusters with Z <= 1 get the max; clamped to
        the 10th-90th percentile; rescaled so that the mean is ``temperature``. Always finite and positive: in a
        degenerate E-step (collapsed features, every member on its centroid) a phi of 0, which would divide the
        ProtoNCE logits by zero, is raised to the smallest positive phi, and with none positive every cluster
        gets ``temperature`` (see :func:`degenerate`). Otherwise the official values, unchanged.
    """
    counts = counts.double()
    phi = torch.zeros_like(counts)
    big = counts > 1
    phi[big] = _phi_unclamped(counts[big], dist_sums.double()[big], alpha)
    dmax = phi[big].max() if big.any() else torch.tensor(1.0, dtype=phi.dtype)
    phi[~big] = dmax
    lo, hi = np.percentile(phi.cpu().numpy(), [10, 90])
    phi = phi.clamp(float(lo), float(hi))
    usable = torch.isfinite(phi) & (phi > 0)
    if not bool(usable.any()):
        return torch.full_like(phi, temperature, dtype=torch.float32)
    if not bool(usable.all()):
        phi = torch.where(usable, phi, phi[usable].min())
    return (temperature * phi / phi.mean()).float()


def degenerate(counts: torch.Tensor, dist_sums: torch.Tensor) -> str | None:
    """Why :func:`concentration` cannot use the official values for these ``(k,)`` statistics (None: it can):
    no cluster with more than one member, or members at distance 0 from their centroid (collapsed features)."""
    big = counts > 1
    if not bool(big.any()):
        return "no cluster has more than one member"
    spread = dist_sums[big]
    if not bool(torch.isfinite(spread).all()):
        return "non-finite distances to the centroids"
    if not bool((spread > 0).all()):
        zero = int((spread <= 0).sum())
        return f"{zero} of {int(big.sum())} clusters have every member on their centroid (collapsed features?)"
    return None


@dataclass
class Granularity:
    """The E-step result for one ``k``: what ProtoNCE needs, plus statistics for logging."""

    k: int
    im2cluster: torch.Tensor  # (N,) long
    centroids: torch.Tensor  # (k, d) float32, L2-normalised
    concentration: torch.Tensor  # (k,) float32 concentration phi
    stats: dict[str, float] = field(default_factory=dict)
    centroid_norms: torch.Tensor | None = None  # (k,) float32 norms of the k-means centroids before normalising

    def to(self, device: torch.device) -> Granularity:
        """The same granularity with its tensors on ``device``."""
        norms = None if self.centroid_norms is None else self.centroid_norms.to(device)
        return Granularity(
            self.k,
            self.im2cluster.to(device),
            self.centroids.to(device),
            self.concentration.to(device),
            self.stats,
            norms,
        )

    def kmeans_centroids(self) -> np.ndarray:
        """``(k, d)`` float32 k-means centroids as trained (``centroids`` x ``centroid_norms``), for a warm start.

        Without stored norms (results of older versions): the L2-normalised centroids.
        """
        c = self.centroids.float()
        if self.centroid_norms is not None:
            c = c * self.centroid_norms.to(c.device, torch.float32)[:, None]
        return np.ascontiguousarray(c.cpu().numpy(), dtype=np.float32)


@dataclass
class ClusterResult:
    """All granularities of one E-step (epoch ``epoch``)."""

    epoch: int
    levels: list[Granularity]

    def warm_start(self, num_cluster: list[int], dim: int) -> list[np.ndarray | None]:
        """Starting centroids ``(k, dim)`` per entry of ``num_cluster``: this result's k-means centroids of the
        same ``k`` (and dimension), else None (that granularity starts cold)."""
        by_k = {g.k: g for g in self.levels if g.centroids.shape[1] == dim}
        return [by_k[k].kmeans_centroids() if k in by_k else None for k in num_cluster]

    def to(self, device: torch.device) -> ClusterResult:
        """The same result with every granularity's tensors on ``device``."""
        return ClusterResult(self.epoch, [g.to(device) for g in self.levels])

    def state_dict(self) -> dict:
        """Compact CPU form for checkpoints and ``--save-clusters`` (im2cluster as int32)."""
        return {
            "epoch": self.epoch,
            "levels": [
                {
                    "k": g.k,
                    "im2cluster": g.im2cluster.to("cpu", torch.int32),
                    "centroids": g.centroids.cpu(),
                    "density": g.concentration.cpu(),  # the file key of the official code's ``density``
                    "stats": dict(g.stats),
                    **({} if g.centroid_norms is None else {"centroid_norms": g.centroid_norms.cpu()}),
                }
                for g in self.levels
            ],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> ClusterResult:
        """Inverse of :meth:`state_dict` (tensors on the CPU, ``im2cluster`` back to int64)."""
        levels = [
            Granularity(
                int(lv["k"]),
                lv["im2cluster"].long(),
                lv["centroids"].float(),
                lv["density"].float(),
                dict(lv["stats"]),
                lv["centroid_norms"].float() if lv.get("centroid_norms") is not None else None,
            )
            for lv in state["levels"]
        ]
        return cls(int(state["epoch"]), levels)


def phi_raw_mean(counts: torch.Tensor, dist_sums: torch.Tensor, alpha: float = KMEANS_ALPHA) -> float:
    """Mean concentration over clusters with > 1 member, before clamping and rescaling (for logging)."""
    big = counts > 1
    if not big.any():
        return math.nan
    return float(_phi_unclamped(counts[big].double(), dist_sums[big].double(), alpha).mean())
