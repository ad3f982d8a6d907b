"""Benchmark the streamed E-step clustering (``pcl.estep.estep.cluster_store``) on synthetic features.

Usage:
    python tools/bench_estep.py --n 1000000 --k 1000 --dim 128 --work-dir /tmp/bench_estep
    python tools/bench_estep.py --n 100000 --k 1000 --dim 128 --work-dir /tmp/bench_estep --compare

The data: ``k`` true centres on the unit sphere, each row one centre plus Gaussian noise (norm about
``--noise``), L2-normalised; generated chunk by chunk so that the streamed mode never holds ``(N, d)``.
Streamed mode writes the rows through ``ShardWriter`` and clusters the store; ``--reference`` builds
the same rows as one in-memory array and runs the official PCL E-step (``tools/reference.py``).

Each measured run is a child process (hidden ``--child``); the parent reads its peak RSS from
``os.wait4`` (so the measurement is taken outside the measured process), computes the NMI of the
assignment against the true components, and prints one JSON line per run (``--compare``: both modes
and a ratio line).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pcl.utils.cli import ErrorParser, entry_point, folder_arg
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

CHUNK = 65536  # generation chunk (rows); fixed so both modes see identical data


def true_centres(k: int, dim: int, seed: int) -> np.ndarray:
    """``(k, dim)`` float32 unit vectors."""
    c = np.random.default_rng([seed, 0]).standard_normal((k, dim)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def true_labels(n: int, k: int, seed: int) -> np.ndarray:
    """``(n,)`` int32 mixture component of every row (uniform weights)."""
    return np.random.default_rng([seed, 1]).integers(0, k, size=n, dtype=np.int32)


def feature_chunks(n: int, k: int, dim: int, seed: int, noise: float) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, rows (<=CHUNK, dim) float32)``: centre + noise, L2-normalised."""
    centres, labels = true_centres(k, dim, seed), true_labels(n, k, seed)
    sigma = noise / np.sqrt(dim)
    for i, start in enumerate(range(0, n, CHUNK)):
        lab = labels[start : start + CHUNK]
        x = centres[lab] + sigma * np.random.default_rng([seed, 2, i]).standard_normal(
            (len(lab), dim), dtype=np.float32
        )
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x


def run_streamed(args: argparse.Namespace, work: Path) -> tuple[dict[str, float], np.ndarray]:
    """Write shards, run ``cluster_store``; returns ``(seconds per stage, im2cluster (N,))``."""
    import torch

    from pcl.estep.clustering import KMeansConfig
    from pcl.estep.estep import EStepConfig, cluster_store
    from pcl.estep.feature_store import ShardWriter
    from pcl.utils.distributed import DistInfo

    t0 = time.perf_counter()
    writer = ShardWriter(work / "shards", args.dim, args.feature_dtype, args.shard_rows)
    for start, x in feature_chunks(args.n, args.k, args.dim, args.seed, args.noise):
        writer.add(torch.from_numpy(x), torch.arange(start, start + len(x)))
    store = writer.close()
    t1 = time.perf_counter()
    cfg = EStepConfig(
        num_cluster=[args.k],
        feature_dir=work,
        max_points=args.max_points,
        feature_dtype=args.feature_dtype,
        shard_rows=args.shard_rows,
        kmeans=KMeansConfig(args.niter, args.nredo),
        seed=args.seed,
    )
    try:
        result = cluster_store(store, args.n, cfg, DistInfo(), epoch=0, temperature=0.2, show=False)
    finally:
        store.delete()
    t2 = time.perf_counter()
    return {"write": t1 - t0, "cluster": t2 - t1}, result.levels[0].im2cluster.numpy()


def run_reference(args: argparse.Namespace) -> tuple[dict[str, float], np.ndarray]:
    """Same rows as one ``(N, d)`` array, official E-step; returns ``(seconds per stage, im2cluster (N,))``."""
    from reference import official_run_kmeans  # tools/reference.py, beside this script

    t0 = time.perf_counter()
    x = np.empty((args.n, args.dim), dtype=np.float32)
    for start, chunk in feature_chunks(args.n, args.k, args.dim, args.seed, args.noise):
        x[start : start + len(chunk)] = chunk
    t1 = time.perf_counter()
    res = official_run_kmeans(x, [args.k], 0.2, niter=args.niter, nredo=args.nredo)
    t2 = time.perf_counter()
    return {"write": t1 - t0, "cluster": t2 - t1}, res[0]["im2cluster"]


def child(args: argparse.Namespace) -> None:
    """The measured process: one run, assignments to ``<work>/<mode>.im2cluster.npy``, timing JSON on stdout."""
    import faiss  # noqa: F401 - both modes pay for torch and faiss: the official E-step runs inside training
    import torch  # noqa: F401

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    base = peak_rss_self_mib()
    secs, im2cluster = run_reference(args) if args.mode == "reference" else run_streamed(args, work)
    np.save(work / f"{args.mode}.im2cluster.npy", im2cluster.astype(np.int32))
    secs["total"] = secs["write"] + secs["cluster"]
    print(json.dumps({"seconds": {s: round(v, 3) for s, v in secs.items()}, "import_rss_mib": base}), flush=True)


def peak_rss_self_mib() -> float:
    """This process's peak RSS so far (``VmHWM``), MiB; only to show the import baseline."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child_argv(args: argparse.Namespace, mode: str) -> list[str]:
    """Command line of the measured child process for ``mode`` (streamed | reference)."""
    keys = ("n", "k", "dim", "work_dir", "shard_rows", "max_points", "niter", "nredo", "feature_dtype", "seed", "noise")
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", mode]
    for key in keys:
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return argv


def measure(args: argparse.Namespace, mode: str) -> dict:
    """Run one child for ``mode``; returns its JSON plus ``peak_rss_mib`` (from ``wait4``) and ``nmi``."""
    from sklearn.metrics import normalized_mutual_info_score

    proc = subprocess.Popen(child_argv(args, mode), stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise PCLError(f"bench child ({mode}) failed with exit code {proc.returncode}")
    timing = json.loads(out.strip().splitlines()[-1])
    path = Path(args.work_dir) / f"{mode}.im2cluster.npy"
    im2cluster = np.load(path)
    path.unlink()
    nmi = normalized_mutual_info_score(true_labels(args.n, args.k, args.seed), im2cluster)
    return {
        "n": args.n,
        "k": args.k,
        "dim": args.dim,
        "mode": mode,
        **timing,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "nmi": round(float(nmi), 4),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command line."""
    p = ErrorParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=ranged(int, gt=0), required=True, help="number of feature rows")
    p.add_argument("--k", type=ranged(int, gt=0), required=True, help="number of clusters (and of true components)")
    p.add_argument("--dim", type=ranged(int, gt=0), required=True, help="feature dimension")
    p.add_argument("--work-dir", required=True, help="folder for the shards (removed afterwards)")
    p.add_argument("--shard-rows", type=ranged(int, gt=0), default=65536)
    p.add_argument(
        "--max-points", type=ranged(int, gt=0), default=100_000, help="k-means training sample (streamed mode)"
    )
    p.add_argument("--niter", type=ranged(int, gt=0), default=20)
    p.add_argument("--nredo", type=ranged(int, gt=0), default=1)
    p.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--noise", type=ranged(float, ge=0), default=0.3, help="norm of the noise added to a true centre")
    p.add_argument("--seed", type=ranged(int, ge=0, le=2**31 - 1), default=0)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--reference", action="store_true", help="official in-memory E-step instead")
    mode.add_argument("--compare", action="store_true", help="run streamed and reference, print a ratio line")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("streamed", "reference"), default="streamed", help=argparse.SUPPRESS)
    return p.parse_args(argv)


@entry_point()
def main(argv: list[str] | None = None) -> int:
    """Run the child(ren) and print one JSON line per mode (and a ratio line with ``--compare``)."""
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    folder_arg(args.work_dir, "--work-dir")
    modes = ["streamed", "reference"] if args.compare else ["reference" if args.reference else "streamed"]
    try:
        rows = {m: measure(args, m) for m in modes}
    finally:
        work = Path(args.work_dir)
        if work.is_dir() and not any(work.iterdir()):
            work.rmdir()
    for row in rows.values():
        print(json.dumps(row), flush=True)
    if args.compare:
        s, r = rows["streamed"], rows["reference"]
        ratio = {
            "ratio_time": round(r["seconds"]["total"] / s["seconds"]["total"], 3),
            "ratio_rss": round(r["peak_rss_mib"] / s["peak_rss_mib"], 3),
        }
        print(json.dumps(ratio), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
