"""Evaluate a training run: kNN, linear probe (features protocol) and cluster quality, in one table.

    python tools/evaluate.py runs/default                          # writes runs/default/eval.json
    python tools/evaluate.py runs/default/checkpoints/checkpoint_0010.pth --out /tmp/eval10.json
    python tools/evaluate.py RUN_DIR --no-linear                   # kNN and clusters only

The run's own data (``config.json``) is used unless DATA is given with ``--data``. Cluster metrics (NMI, AMI,
purity against the train labels) are those of the run's last cluster result: the newer of the checkpoint's
stored one and ``RUN_DIR/clusters/epoch_*.pth`` (``--save-clusters``). ``eval.json``::

    {"knn_top1": %, "linear_top1": %, "linear_top5": %, "cluster": {"<K>": {"nmi", "ami", "purity"}}, "settings"}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcl.eval.evaluation import evaluate_run
from pcl.eval.linear_probe import DEFAULT_WDS
from pcl.utils.cli import ErrorParser, report_error
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run directory (its checkpoints/last.pth) or a checkpoint file")
    p.add_argument("--data", default=None, help="ImageFolder root (default: the run's own data)")
    p.add_argument("--out", type=Path, help="where to write the JSON (default RUN_DIR/eval.json)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-knn", dest="knn", action="store_false")
    p.add_argument("--no-linear", dest="linear", action="store_false")
    p.add_argument("--no-clusters", dest="clusters", action="store_false")
    p.add_argument(
        "--kmeans",
        type=_ks,
        default=(),
        help="comma list of k: faiss k-means on the frozen train features, NMI/AMI/purity vs the labels (any run)",
    )
    p.add_argument("--knn-k", type=ranged(int, gt=0), default=200)
    p.add_argument("--knn-t", type=ranged(float, gt=0), default=0.1)
    p.add_argument("--wd-grid", type=lambda s: tuple(float(x) for x in s.split(",")), default=DEFAULT_WDS)
    p.add_argument("--val-fraction", type=ranged(float, gt=0, lt=1), default=0.2)
    p.add_argument("--max-iter", type=ranged(int, gt=0), default=200)
    p.add_argument("--seed", type=ranged(int, ge=0, le=2**31 - 1), default=0)
    p.add_argument("--eval-batch-size", type=ranged(int, gt=0), default=256)
    p.add_argument("-j", "--workers", type=ranged(int, ge=0, le=1024), default=2)
    p.add_argument("--feature-cache", type=Path, help="keep extracted features in this folder and reuse them")
    return p


def _ks(text: str) -> tuple[int, ...]:
    """``"50,100"`` -> ``(50, 100)``."""
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


def table(result: dict) -> str:
    """The evaluation as a small text table."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}%"

    rows = [("kNN top-1", pct(result["knn_top1"])), ("linear top-1", pct(result["linear_top1"]))]
    rows.append(("linear top-5", pct(result["linear_top5"])))
    for k, s in result["cluster"].items():
        rows.append((f"k={k} NMI / AMI / purity", f"{s['nmi']:.4f} / {s['ami']:.4f} / {s['purity']:.4f}"))
    for k, s in result.get("kmeans", {}).items():
        rows.append((f"k-means k={k} NMI / AMI / purity", f"{s['nmi']:.4f} / {s['ami']:.4f} / {s['purity']:.4f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        result = evaluate_run(
            a.run,
            data=a.data,
            device=a.device,
            knn=a.knn,
            linear=a.linear,
            clusters=a.clusters,
            kmeans=a.kmeans,
            knn_k=a.knn_k,
            knn_t=a.knn_t,
            wds=a.wd_grid,
            val_fraction=a.val_fraction,
            max_iter=a.max_iter,
            seed=a.seed,
            batch_size=a.eval_batch_size,
            workers=a.workers,
            cache_dir=a.feature_cache,
            out=a.out,
        )
    except (PCLError, ValueError) as e:
        return report_error(e)
    s = result["settings"]
    print(f"{s['source']}, {s['arch']}, stem {s['stem']}, data {s['data'] or 'bundled subset'}")
    print(table(result))
    if s.get("written"):
        print(f"wrote {s['written']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
