"""Whole-epoch cost of PCL against MoCo v2 on the same data, and cold vs warm-started k-means.

    python tools/bench_epoch.py --data /data/cifar10                          # k=500,1000,2000, CIFAR protocol
    python tools/bench_epoch.py --data /data/cifar10 --variant warm="--kmeans-init previous" \\
        --variant onepass="--kmeans-init previous --knn-encoder key"
    python tools/bench_epoch.py --kmeans-only                                 # N=200,000, k=25,000, d=128
    python tools/bench_epoch.py --kmeans-only --from-run RUN_DIR              # a run's kept features, per epoch

Epoch mode: one ``Trainer`` per variant, built by ``pcl.cli.build_trainer`` from ``main_pcl.py`` flags
(``CIFAR_FLAGS``, then ``--num-cluster``, then the flags after ``--``, then the variant's own): ``moco`` never runs
an E-step (warmup = epochs), ``pcl`` and every ``--variant NAME="FLAGS"`` run one every epoch. The variants run
one epoch each in turn (moco, pcl, ..., moco, pcl, ... for ``--rounds`` rounds, after ``--warmup`` untimed rounds,
so that a warm start has a previous E-step and background load hits all alike). Reported per variant, median over
rounds, wall and this process's CPU seconds (``-j 0`` puts the data loading in the process): the whole epoch
(E-step + M-step + kNN monitor, as ``time/epoch_total_seconds``; the checkpoint apart) and its parts
``estep_features``, ``kmeans``, ``assign``, ``cluster_metrics``, ``mstep``, ``knn``; the ratios to moco are the
medians of the per-round ratios.

``--kmeans-only``: synthetic features of ``--components`` drifting blobs (``bench_estep.py``'s generator; the
centres move by ``--drift`` per step), clustered by the E-step's own ``cluster_store`` for ``--steps`` + 1
consecutive E-steps: step 0 cold for both, then each step once cold (``--nredo`` random restarts) and once warm
(one run from the previous warm step's centroids). Per step: k-means + assignment seconds (wall, CPU), the
objective (mean squared distance to the assigned centroid), AMI of each against the true components and AMI of
warm against cold.

``--kmeans-only --from-run RUN_DIR``: the same comparison on a real run's E-step features (trained with
``--keep-features``), epoch by epoch, with the run's own E-step settings (granularities, niter, nredo, sample,
seed); AMI against the run's class labels. Per epoch and granularity: objective, AMI, k-means seconds of each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pcl.cli import build_trainer
from pcl.config import config_from_dict, parse_config, validate
from pcl.data.sources import resolve_data
from pcl.estep.clustering import ClusterResult, KMeansConfig
from pcl.estep.estep import EStepConfig, cluster_store
from pcl.estep.feature_store import FeatureStore, ShardWriter
from pcl.train.engine import Trainer
from pcl.utils.cli import ErrorParser, folder_arg, report_error
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged
from pcl.utils.timing import PhaseTimer

# the CIFAR protocol of the README's measurements; flags after `--` and a variant's own flags override them
CIFAR_FLAGS = ["--arch", "resnet18", "--stem", "small", "--image-size", "32", "--batch-size", "256"]
CIFAR_FLAGS += ["--pcl-r", "4096", "--knn-freq", "1"]
PARTS = ("estep_features", "kmeans", "assign", "cluster_metrics", "mstep", "knn")


# ---------------------------------------------------------------------------------------------- epoch mode
def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """``moco``, ``pcl`` and each ``NAME=FLAGS`` of ``--variant`` -> ``{name: extra main_pcl.py flags}``."""
    variants: dict[str, list[str]] = {"moco": [], "pcl": []}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name or name in variants:
            raise PCLError(f'--variant {spec!r}: expected a new NAME="FLAGS" (moco and pcl exist already)')
        variants[name] = shlex.split(flags)
    return variants


def build_variant(name: str, flags: list[str], a: argparse.Namespace, exp_dir: Path, epochs: int) -> Trainer:
    """The variant's ``Trainer`` with a CPU-counting phase timer."""
    warmup = epochs if name == "moco" else 0
    argv = [a.data, *CIFAR_FLAGS, "--num-cluster", a.num_cluster, *a.extra, *flags]
    argv += ["--epochs", str(epochs), "--warmup-epochs", str(warmup), "--exp-dir", str(exp_dir / name)]
    cfg = parse_config(argv)
    validate(cfg)
    dev = cfg.train.device
    info = DistInfo(device=torch.device("cuda" if dev == "cuda" or (dev == "auto" and torch.cuda.is_available())
                                        else "cpu"))  # fmt: skip
    torch.manual_seed(cfg.train.seed)
    with contextlib.redirect_stdout(sys.stderr):  # the data line: stdout is the benchmark's
        trainer = build_trainer(cfg, info)
    trainer.timer = PhaseTimer(info.device, cpu=True)
    return trainer


def run_epoch(trainer: Trainer) -> dict[str, float]:
    """One epoch (``fit(stop_after=1)``): ``{part: s, part_cpu: s, epoch: s, epoch_cpu: s, checkpoint: s}``."""
    sync = trainer.device.type == "cuda"
    if sync:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's epoch lines: stdout is the benchmark's
        trainer.fit(stop_after=1)
    if sync:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = trainer.epoch_scalars
    ckpt, ckpt_cpu = s.get("time/checkpoint_seconds", 0.0), s.get("time/checkpoint_cpu_seconds", 0.0)
    out = {"epoch": wall - ckpt, "epoch_cpu": cpu - ckpt_cpu, "checkpoint": ckpt}
    for part in PARTS:
        out[part] = s.get(f"time/{part}_seconds", 0.0)
        out[f"{part}_cpu"] = s.get(f"time/{part}_cpu_seconds", 0.0)
    if "eval/knn_top1" in s:
        out["knn_top1"] = s["eval/knn_top1"]
    return out


def epoch_bench(a: argparse.Namespace) -> dict:
    """Build every variant, run the warmup and the interleaved timed rounds; returns the JSON-ready summary."""
    variants = parse_variants(a.variant)
    epochs = a.warmup + a.rounds
    rounds: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
    with tempfile.TemporaryDirectory(prefix="bench_epoch_", dir=a.work_dir) as tmp:
        # one epoch more than run: no timed epoch is the schedule's last (whose kNN monitor is never deferred)
        trainers = {n: build_variant(n, f, a, Path(tmp), epochs + 1) for n, f in variants.items()}
        device = str(trainers["moco"].device)
        for r in range(epochs):
            for name, trainer in trainers.items():
                res = run_epoch(trainer)
                if r >= a.warmup:
                    rounds[name].append(res)
                if not a.json:
                    print(f"round {r}{' (warmup)' if r < a.warmup else ''} {name}: {res['epoch']:.2f} s", flush=True)
        del trainers
    med = {n: {key: round(statistics.median(x[key] for x in rs), 4) for key in rs[0]} for n, rs in rounds.items()}

    def ratio(key: str) -> dict[str, float]:
        base = rounds["moco"]
        return {
            n: round(statistics.median(x[key] / b[key] for x, b in zip(rs, base, strict=True)), 4)
            for n, rs in rounds.items()
        }

    return {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "settings": {"data": a.data, "num_cluster": a.num_cluster, "rounds": a.rounds, "warmup": a.warmup},
        "flags": [*CIFAR_FLAGS, *a.extra],
        "variants": variants,
        "seconds": med,
        "rounds": {n: [{k: round(v, 4) for k, v in x.items()} for x in rs] for n, rs in rounds.items()},
        "ratio_to_moco": ratio("epoch"),
        "cpu_ratio_to_moco": ratio("epoch_cpu"),
        "parts_share_of_moco_epoch": {
            n: {p: round(m[p] / med["moco"]["epoch"], 4) for p in PARTS} for n, m in med.items()
        },
    }


def print_epoch(out: dict) -> None:
    print(f"{out['device']}, {out['torch_threads']} threads, {out['settings']}")
    head = f"{'variant':12s} {'epoch s':>9s} {'x moco':>7s} {'CPU s':>9s} {'x moco':>7s} "
    print(head + " ".join(f"{p:>15s}" for p in PARTS))
    for n, m in out["seconds"].items():
        row = f"{n:12s} {m['epoch']:9.2f} {out['ratio_to_moco'][n]:7.3f} {m['epoch_cpu']:9.2f} "
        row += f"{out['cpu_ratio_to_moco'][n]:7.3f} "
        print(row + " ".join(f"{m[p]:7.2f}/{m[p + '_cpu']:7.2f}" for p in PARTS))
    print("parts: wall / CPU seconds per epoch (median over rounds)")


# ---------------------------------------------------------------------------------------------- k-means mode
def drifting_features(a: argparse.Namespace, step: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, dim)`` float32 unit rows of E-step ``step`` and their true components ``(N,)``.

    Component centres: ``bench_estep.true_centres`` moved by ``step * drift`` (a fixed random direction per
    centre, norm ``drift``), renormalised; each row its centre plus noise of norm about ``--noise``.
    """
    from bench_estep import true_centres, true_labels  # tools/bench_estep.py, beside this script

    centres, labels = true_centres(a.components, a.dim, a.seed), true_labels(a.n, a.components, a.seed)
    direction = np.random.default_rng([a.seed, 3]).standard_normal(centres.shape).astype(np.float32)
    centres = centres + step * a.drift * direction / np.sqrt(a.dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = np.random.default_rng([a.seed, 4, step]).standard_normal((a.n, a.dim), dtype=np.float32)
    x = centres[labels] + (a.noise / np.sqrt(a.dim)) * noise
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def ami(u: np.ndarray, v: np.ndarray) -> float:
    """Adjusted mutual information of two labelings ``(N,)`` (arithmetic normalisation, as scikit-learn's).

    The expected mutual information depends on the cluster sizes only, so it is summed over the pairs of
    distinct sizes (weighted by how many clusters have them) instead of all cluster pairs: exact, and fast at
    k = 25,000 where scikit-learn's loop over 25,000^2 pairs is not.
    """
    from scipy.special import gammaln
    from sklearn.metrics import mutual_info_score

    n = len(u)
    a, b = np.unique(u, return_counts=True)[1], np.unique(v, return_counts=True)[1]
    if len(a) == len(b) == 1 or len(a) == len(b) == n:
        return 1.0

    def entropy(c: np.ndarray) -> float:
        p = c / n
        return float(-(p * np.log(p)).sum())

    mi = mutual_info_score(u, v)
    sa, ca = np.unique(a, return_counts=True)
    sb, cb = np.unique(b, return_counts=True)
    emi, lg_n = 0.0, gammaln(n + 1)
    for ai, na in zip(sa, ca, strict=True):
        for bj, nb in zip(sb, cb, strict=True):
            nij = np.arange(max(1, ai + bj - n), min(ai, bj) + 1, dtype=np.float64)
            if nij.size == 0:
                continue
            log_p = (gammaln(ai + 1) + gammaln(bj + 1) + gammaln(n - ai + 1) + gammaln(n - bj + 1) - lg_n
                     - gammaln(nij + 1) - gammaln(ai - nij + 1) - gammaln(bj - nij + 1)
                     - gammaln(n - ai - bj + nij + 1))  # fmt: skip
            term = (nij / n) * (np.log(n * nij) - np.log(float(ai) * float(bj))) * np.exp(log_p)
            emi += float(na) * float(nb) * float(term.sum())
    denom = 0.5 * (entropy(a) + entropy(b)) - emi
    eps = np.finfo(np.float64).eps
    denom = min(denom, -eps) if denom < 0 else max(denom, eps)
    return float((mi - emi) / denom)


def cluster_once(
    a: argparse.Namespace, x: np.ndarray, work: Path, step: int, previous: ClusterResult | None, init: str
) -> tuple[ClusterResult, dict[str, float]]:
    """One E-step clustering of ``x`` (``--k``) by ``cluster_store``: ``(result, seconds per phase)``."""
    writer = ShardWriter(work / f"step{step}-{init}", a.dim, "float32", 65536)
    writer.add(torch.from_numpy(x), torch.arange(len(x)))
    store = writer.close()
    km = KMeansConfig(niter=a.niter, nredo=a.nredo, init=init)
    cfg = EStepConfig(num_cluster=[a.k], feature_dir=work, kmeans=km, max_points=a.max_points, seed=a.seed)
    timer = PhaseTimer(torch.device("cpu"), cpu=True)
    try:
        result = cluster_store(store, a.n, cfg, DistInfo(), step, 0.2, False, timer, previous)
    finally:
        store.delete()
    secs = {k.removeprefix("time/").removesuffix("_seconds"): round(v, 3) for k, v in timer.pop().items()}
    return result, secs


def summary(result: ClusterResult, secs: dict[str, float], labels: np.ndarray) -> dict[str, float]:
    """Seconds per phase, objective and AMI against the true components of one clustering."""
    g = result.levels[0]
    return {**secs, "objective": g.stats["objective"], "ami_truth": round(ami(g.im2cluster.numpy(), labels), 4)}


def kmeans_bench(a: argparse.Namespace) -> list[dict]:
    """Cold vs warm k-means over ``--steps`` drifting E-steps; one summary dict per step."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_kmeans_", dir=a.work_dir) as tmp:
        x, labels = drifting_features(a, 0)
        warm, secs = cluster_once(a, x, Path(tmp), 0, None, "random")  # the first E-step: cold for both
        rows.append({"step": 0, "cold": summary(warm, secs, labels)})
        for step in range(1, a.steps + 1):
            x, labels = drifting_features(a, step)
            cold, cold_s = cluster_once(a, x, Path(tmp), step, None, "random")
            warm, warm_s = cluster_once(a, x, Path(tmp), step, warm, "previous")
            c, w = summary(cold, cold_s, labels), summary(warm, warm_s, labels)
            rows.append(
                {
                    "step": step,
                    "cold": c,
                    "warm": w,
                    "ami_warm_vs_cold": round(ami(*(r.levels[0].im2cluster.numpy() for r in (warm, cold))), 4),
                    "objective_warm_over_cold": round(w["objective"] / c["objective"], 5),
                    "kmeans_seconds_warm_over_cold": round(w["kmeans"] / max(c["kmeans"], 1e-9), 4),
                }
            )
    return rows


def _cluster_kept(
    store: FeatureStore, n: int, cfg: EStepConfig, epoch: int, temperature: float, previous: ClusterResult | None
) -> tuple[ClusterResult, dict[str, float]]:
    """One E-step clustering of a kept feature store (left in place): ``(result, seconds per phase)``."""
    timer = PhaseTimer(torch.device("cpu"), cpu=True)
    result = cluster_store(store, n, cfg, DistInfo(), epoch, temperature, False, timer, previous)
    return result, {k.removeprefix("time/").removesuffix("_seconds"): round(v, 3) for k, v in timer.pop().items()}


def run_kmeans_bench(run_dir: Path) -> list[dict]:
    """Cold vs warm k-means on the kept features of every E-step of ``run_dir``; one dict per epoch.

    Cold: the run's k-means settings with ``init="random"`` (``nredo`` restarts); warm: one run from the previous
    warm result's centroids (the first E-step: cold for both), as ``--kmeans-init previous`` trains.
    """
    cfg_file = run_dir / "config.json"
    if not cfg_file.is_file():
        raise PCLError(f"--from-run {run_dir}: no config.json (not a run directory)")
    cfg = config_from_dict(json.loads(cfg_file.read_text()))
    epochs = sorted(f for f in (run_dir / "features").glob("epoch*") if (f / "rank0.done").is_file())
    if not epochs:
        raise PCLError(f"--from-run {run_dir}: no kept features in {run_dir / 'features'} (train with --keep-features)")
    labels = resolve_data(cfg.data.root, cfg.data.labels, cfg.data.val).train.labels
    if labels is None:
        raise PCLError(f"--from-run {run_dir}: its data has no class labels to score the clusters against")
    labels = np.asarray(labels)
    est = cfg.estep
    cold_cfg = replace(est, kmeans=replace(est.kmeans, init="random"))
    warm_cfg = replace(est, kmeans=replace(est.kmeans, init="previous"))
    rows, warm = [], None
    for folder in epochs:
        epoch = int(folder.name.removeprefix("epoch"))
        store = FeatureStore(folder)
        cold, cold_s = _cluster_kept(store, len(labels), cold_cfg, epoch, cfg.loss.temperature, None)
        if warm is None:
            warm, warm_s = cold, cold_s
        else:
            warm, warm_s = _cluster_kept(store, len(labels), warm_cfg, epoch, cfg.loss.temperature, warm)
        row: dict = {"epoch": epoch, "kmeans_seconds_cold": cold_s["kmeans"], "kmeans_seconds_warm": warm_s["kmeans"]}
        for c, w in zip(cold.levels, warm.levels, strict=True):
            cu, wu = c.im2cluster.numpy(), w.im2cluster.numpy()
            row[f"k{c.k}"] = {
                "objective_cold": c.stats["objective"],
                "objective_warm": w.stats["objective"],
                "objective_warm_over_cold": round(w.stats["objective"] / c.stats["objective"], 5),
                "ami_cold": round(ami(cu, labels), 4),
                "ami_warm": round(ami(wu, labels), 4),
                "ami_warm_vs_cold": round(ami(wu, cu), 4),
            }
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ImageFolder root with train/ and val/ or test/ (epoch mode)")
    p.add_argument("--num-cluster", default="500,1000,2000", help="granularities of the PCL variants")
    p.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                   help="a further PCL variant with these main_pcl.py flags (repeatable)")  # fmt: skip
    p.add_argument("--rounds", type=ranged(int, gt=0), default=3, help="timed epochs per variant")
    p.add_argument("--warmup", type=ranged(int, ge=0), default=1, help="untimed epochs per variant first")
    p.add_argument("--work-dir", default=None, help="parent of the temporary run / shard folders (default: $TMPDIR)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    g = p.add_argument_group("--kmeans-only")
    g.add_argument("--kmeans-only", action="store_true", help="cold vs warm k-means on synthetic drifting features")
    g.add_argument("--from-run", type=Path, help="... on this run's kept E-step features instead (--keep-features)")
    g.add_argument("--n", type=ranged(int, gt=0), default=200_000)
    g.add_argument("--k", type=ranged(int, gt=0), default=25_000)
    g.add_argument("--dim", type=ranged(int, gt=0), default=128)
    g.add_argument("--components", type=ranged(int, gt=0), default=1000, help="true blobs of the synthetic features")
    g.add_argument("--noise", type=ranged(float, ge=0), default=0.5, help="norm of the noise added to a blob centre")
    g.add_argument("--drift", type=ranged(float, ge=0), default=0.05, help="how far every blob centre moves per step")
    g.add_argument("--steps", type=ranged(int, gt=0), default=2, help="E-steps after the first (cold for both)")
    g.add_argument("--niter", type=ranged(int, gt=0), default=20)
    g.add_argument(
        "--nredo", type=ranged(int, gt=0), default=5, help="random restarts of the cold k-means (official: 5)"
    )
    g.add_argument(
        "--max-points", type=ranged(int, gt=0), default=2_000_000, help="k-means training sample (E-step's flag)"
    )
    g.add_argument("--seed", type=ranged(int, ge=0, le=2**31 - 1), default=0)
    p.add_argument("extra", nargs="*", help="main_pcl.py flags for every variant, after --, e.g. -- -j 0")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    tools = str(Path(__file__).resolve().parent)
    if tools not in sys.path:
        sys.path.append(tools)
    try:
        folder_arg(a.work_dir, "--work-dir")
        if a.work_dir is not None:
            Path(a.work_dir).mkdir(parents=True, exist_ok=True)
        if a.kmeans_only and a.from_run is not None:
            for row in run_kmeans_bench(a.from_run):
                print(json.dumps(row), flush=True)
            return 0
        if a.kmeans_only:
            if min(a.n, a.k, a.dim, a.components, a.niter, a.nredo) < 1 or a.steps < 1 or a.k > a.n:
                raise PCLError("--n, --k, --dim, --components, --niter, --nredo, --steps must be >= 1 and --k <= --n")
            rows = kmeans_bench(a)
            for row in rows:
                print(json.dumps(row), flush=True)
            return 0
        if not a.data:
            raise PCLError("epoch mode needs --data DIR (or use --kmeans-only)")
        if a.rounds < 1 or a.warmup < 0:
            raise PCLError("--rounds must be >= 1 and --warmup >= 0")
        out = epoch_bench(a)
    except PCLError as e:
        return report_error(e)
    if a.json:
        print(json.dumps(out))
    else:
        print_epoch(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
