"""Flat vs ``--kmeans-hierarchical`` E-step clustering on the same synthetic features, interleaved.

    python tools/bench_kmeans.py                           # N=50,000 x 128-d, k=500,1000,2000 (CIFAR protocol)
    python tools/bench_kmeans.py --rounds 3 --threads 1 --json

The features are ``bench_estep.py``'s (``--components`` Gaussian blobs on the unit sphere). Each round clusters
them once flat (every k on the features, the official E-step) and once hierarchically, by the E-step's own
``cluster_store`` (``--kmeans-niter``/``--kmeans-nredo`` as the E-step's defaults, 20 / 5), alternating which goes
first. Reported per mode, median over rounds: k-means and assignment seconds (wall, this process's CPU), the
objective of every k, and the AMI of each k against the true blobs and between the two modes. ``flops``: what
faiss multiplies in k-means (``2 n_train k d`` per iteration and restart, per level; the hierarchical coarse
levels train on the finer centroids), the flop rate = flops / k-means CPU seconds, and an **extrapolation** (not
a run) of both modes' k-means seconds to ``--extrapolate-n`` x ``--extrapolate-k`` (ImageNet: 1.28M images,
k = 25,000, 50,000, 100,000) at the flat mode's measured rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pcl.estep.clustering import ClusterResult, KMeansConfig
from pcl.estep.estep import EStepConfig, cluster_store
from pcl.estep.feature_store import ShardWriter
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.distributed import DistInfo
from pcl.utils.flags import int_list, ranged
from pcl.utils.timing import PhaseTimer

MODES = ("flat", "hierarchical")


def kmeans_flops(n: int, ks: list[int], dim: int, niter: int, nredo: int, hierarchical: bool, cap: int = 1000) -> float:
    """Multiply-add flops of faiss k-means for one E-step: ``2 n_train k d`` per iteration and restart per level;
    ``n_train = min(n, cap k)`` (faiss's sample of ``max_points_per_centroid`` per centroid)."""
    order = sorted(ks, reverse=True)
    if not hierarchical:
        return float(sum(2 * min(n, cap * k) * k * dim for k in ks) * niter * nredo)
    points = [min(n, cap * order[0]), *order[:-1]]  # the finest level on the features, each coarser on the finer
    return float(sum(2 * p * k * dim for p, k in zip(points, order, strict=True)) * niter * nredo)


def cluster(x: np.ndarray, a: argparse.Namespace, work: Path, hierarchical: bool) -> tuple[ClusterResult, dict]:
    """One E-step clustering of ``x (N, d)``: ``(result, {phase: seconds})`` (wall and CPU)."""
    writer = ShardWriter(work / f"h{int(hierarchical)}", x.shape[1], "float32", 65536)
    writer.add(torch.from_numpy(x), torch.arange(len(x)))
    store = writer.close()
    km = KMeansConfig(niter=a.niter, nredo=a.nredo, hierarchical=hierarchical)
    cfg = EStepConfig(num_cluster=a.num_cluster, feature_dir=work, kmeans=km, seed=a.seed)
    timer = PhaseTimer(torch.device("cpu"), cpu=True)
    try:
        result = cluster_store(store, len(x), cfg, DistInfo(), 0, 0.2, False, timer)
    finally:
        store.delete()
    return result, {k.removeprefix("time/").removesuffix("_seconds"): v for k, v in timer.pop().items()}


def bench(a: argparse.Namespace) -> dict:
    from bench_epoch import ami  # tools/, beside this script
    from bench_estep import feature_chunks, true_labels

    x = np.concatenate([c for _, c in feature_chunks(a.n, a.components, a.dim, a.seed, a.noise)]).astype(np.float32)
    truth = true_labels(a.n, a.components, a.seed)
    secs: dict[str, list[dict]] = {m: [] for m in MODES}
    last: dict[str, ClusterResult] = {}
    with tempfile.TemporaryDirectory(prefix="bench_kmeans_") as tmp:
        for r in range(a.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                last[mode], s = cluster(x, a, Path(tmp), mode == "hierarchical")
                secs[mode].append(s)
                print(f"round {r} {mode}: k-means {s['kmeans_cpu']:.1f} s CPU", file=sys.stderr, flush=True)
    med = {m: {k: round(statistics.median(s[k] for s in rs), 3) for k in rs[0]} for m, rs in secs.items()}
    flops = {m: kmeans_flops(a.n, a.num_cluster, a.dim, a.niter, a.nredo, m == "hierarchical") for m in MODES}
    rate = {m: flops[m] / med[m]["kmeans_cpu"] for m in MODES}
    big = {
        m: kmeans_flops(a.extrapolate_n, a.extrapolate_k, a.dim, a.niter, a.nredo, m == "hierarchical") for m in MODES
    }
    levels = {m: {g.k: g for g in last[m].levels} for m in MODES}
    return {
        "settings": {k: getattr(a, k) for k in ("n", "dim", "num_cluster", "components", "niter", "nredo", "rounds")},
        "torch_threads": torch.get_num_threads(),
        "seconds": med,
        "rounds": secs,
        "kmeans_cpu_ratio_hier_to_flat": round(
            statistics.median(
                h["kmeans_cpu"] / f["kmeans_cpu"] for h, f in zip(secs[MODES[1]], secs[MODES[0]], strict=True)
            ),
            4,
        ),
        "objective": {m: {k: round(g.stats["objective"], 5) for k, g in levels[m].items()} for m in MODES},
        "ami_truth": {m: {k: round(ami(g.im2cluster.numpy(), truth), 4) for k, g in levels[m].items()} for m in MODES},
        "ami_hier_vs_flat": {
            k: round(ami(levels["flat"][k].im2cluster.numpy(), levels["hierarchical"][k].im2cluster.numpy()), 4)
            for k in a.num_cluster
        },
        "flops": flops,
        "gflops_per_cpu_s": {m: round(rate[m] / 1e9, 2) for m in MODES},
        "extrapolation": {
            "note": "an extrapolation, not a run: flops / the flat mode's measured flop rate (one E-step's k-means)",
            "n": a.extrapolate_n,
            "k": a.extrapolate_k,
            "flops": big,
            "cpu_hours": {m: round(big[m] / rate["flat"] / 3600, 2) for m in MODES},
        },
    }


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=ranged(int, gt=0), default=50_000, help="synthetic features")
    p.add_argument("--dim", type=ranged(int, gt=0), default=128)
    p.add_argument("--num-cluster", type=ranged(int_list, gt=0), default=[500, 1000, 2000], help="granularities")
    p.add_argument("--components", type=ranged(int, gt=0), default=1000, help="true blobs")
    p.add_argument("--noise", type=ranged(float, ge=0), default=0.5, help="norm of the noise around a blob centre")
    p.add_argument("--niter", type=ranged(int, gt=0), default=20)
    p.add_argument("--nredo", type=ranged(int, gt=0), default=5)
    p.add_argument("--rounds", type=ranged(int, gt=0), default=2, help="interleaved rounds (flat, hier, ...)")
    p.add_argument("--seed", type=ranged(int, ge=0, le=2**31 - 1), default=0)
    p.add_argument("--threads", type=ranged(int, gt=0), default=None, help="torch and faiss threads")
    p.add_argument("--extrapolate-n", type=ranged(int, gt=0), default=1_281_167)
    p.add_argument("--extrapolate-k", type=ranged(int_list, gt=0), default=[25_000, 50_000, 100_000])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


@entry_point()
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    tools = str(Path(__file__).resolve().parent)
    if tools not in sys.path:
        sys.path.append(tools)
    if a.threads is not None:
        import faiss

        torch.set_num_threads(a.threads)
        faiss.omp_set_num_threads(a.threads)
    out = bench(a)
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    for m in MODES:
        s = out["seconds"][m]
        print(f"{m:13s} k-means {s['kmeans']:8.2f} s wall {s['kmeans_cpu']:8.2f} s CPU", end="")
        print(f"  assign {s['assign_cpu']:6.2f} s CPU")
    print(f"hierarchical / flat k-means CPU: {out['kmeans_cpu_ratio_hier_to_flat']}")
    print(json.dumps({k: out[k] for k in ("objective", "ami_truth", "ami_hier_vs_flat", "gflops_per_cpu_s")}))
    print(json.dumps(out["extrapolation"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
