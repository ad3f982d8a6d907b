"""Evaluate a training run with any subset of the protocols, in one table.

    python tools/evaluate.py runs/default                          # knn,linear,clusters; writes runs/default/eval.json
    python tools/evaluate.py runs/default --protocols knn,linear,lowshot,finetune,kmeans
    python tools/evaluate.py runs/default/checkpoints/checkpoint_0010.pth --out /tmp/eval10.json
    python tools/evaluate.py RUN_DIR --lowshot 1,16 --protocols lowshot   # a protocol's own flag also turns it on

Protocols: ``knn`` (weighted kNN top-1), ``linear`` (logistic regression on frozen features), ``lowshot`` (linear
SVMs on k = 1,2,4,8,16 images per class, 5 draws), ``finetune`` (backbone + head on 1 % / 10 % of the labels),
``kmeans`` (ACC / NMI / ARI / AMI of k-means with k = number of classes, 5 restarts), ``clusters`` (the run's own
last E-step clusters: NMI, AMI, purity; the newer of the checkpoint's and ``RUN_DIR/clusters/epoch_*.pth``).

``--encoder key`` measures the momentum encoder's backbone and ``--encoder untrained`` the run's architecture at
random initialisation (seeded by ``--seed``), the reference a trained encoder must beat; both write
``RUN_DIR/eval_{key,untrained}.json`` unless ``--out`` is given, and never score the run's clusters.

The run's own data (its stored configuration) is used unless ``--data`` names other data; then the run's clusters
are not scored (they index the run's own images) and ``RUN_DIR/eval.json`` is kept: pass ``--out FILE``.
``eval.json`` holds one block per protocol (shapes in ``pcl/eval/evaluation.py``) and the settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcl.eval.evaluation import ENCODERS, evaluate_run
from pcl.eval.finetune import FinetuneConfig
from pcl.eval.linear_probe import DEFAULT_WDS
from pcl.eval.lowshot import DEFAULT_COSTS, DEFAULT_KS, LowShotConfig
from pcl.utils.cli import ErrorParser, report_error
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

PROTOCOLS = ("knn", "linear", "lowshot", "finetune", "kmeans", "clusters")
DEFAULT_PROTOCOLS = ("knn", "linear", "clusters")


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run directory (its checkpoints/last.pth) or a checkpoint file")
    p.add_argument("--data", default=None, help="ImageFolder root (default: the run's own data)")
    p.add_argument("--out", type=Path, help="where to write the JSON (default RUN_DIR/eval.json)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--encoder", default="query", choices=ENCODERS, help="which backbone to measure (default query)")
    p.add_argument(
        "--protocols",
        type=_protocols,
        default=None,
        help=f"comma list of {','.join(PROTOCOLS)} (default {','.join(DEFAULT_PROTOCOLS)})",
    )
    p.add_argument("--no-knn", dest="knn", action="store_false")
    p.add_argument("--no-linear", dest="linear", action="store_false")
    p.add_argument("--no-clusters", dest="clusters", action="store_false")
    p.add_argument(
        "--kmeans",
        type=_ks,
        default=None,
        help="extra k for the kmeans protocol (always k = number of classes); turns the protocol on",
    )
    p.add_argument(
        "--kmeans-restarts", type=ranged(int, gt=0), default=5, help="k-means runs (seeds SEED..), mean +- std"
    )
    p.add_argument("--lowshot", type=_ks, default=None, help="k images per class (default 1,2,4,8,16); turns it on")
    p.add_argument("--lowshot-draws", type=ranged(int, gt=0), default=5, help="seeded draws per k (mean +- std)")
    p.add_argument(
        "--lowshot-costs", type=_floats, default=DEFAULT_COSTS, help="SVM costs, cross-validated in the k-shot sample"
    )
    p.add_argument("--finetune", type=_floats, default=None, help="percent of the labels (default 1,10); turns it on")
    ft = FinetuneConfig()
    p.add_argument("--finetune-epochs", type=ranged(int, gt=0), default=ft.epochs, help="passes over the label subset")
    p.add_argument("--finetune-batch-size", type=ranged(int, gt=0), default=ft.batch_size)
    p.add_argument("--finetune-lr", type=ranged(float, gt=0), default=ft.lr, help="backbone lr (cosine schedule)")
    p.add_argument("--finetune-head-lr", type=ranged(float, gt=0), default=ft.head_lr, help="linear head lr")
    p.add_argument("--finetune-wd", type=ranged(float, ge=0), default=ft.weight_decay, help="weight decay")
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


def _floats(text: str) -> tuple[float, ...]:
    """``"1,10"`` -> ``(1.0, 10.0)``."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from None


def _protocols(text: str) -> tuple[str, ...]:
    """``"knn,kmeans"`` -> ``("knn", "kmeans")``, every name one of ``PROTOCOLS``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        what = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown protocol {what}; choose from {','.join(PROTOCOLS)}")
    return names


def chosen_protocols(a: argparse.Namespace) -> set[str]:
    """``--protocols`` (or the default set), plus the protocols whose own flag is given, minus ``--no-*``."""
    chosen = set(a.protocols or DEFAULT_PROTOCOLS)
    chosen |= {name for name in ("kmeans", "lowshot", "finetune") if getattr(a, name) is not None}
    return chosen - {name for name in ("knn", "linear", "clusters") if not getattr(a, name)}


def _check_counts(a: argparse.Namespace) -> None:
    for flag, value in (
        ("--kmeans-restarts", a.kmeans_restarts),
        ("--lowshot-draws", a.lowshot_draws),
        ("--finetune-epochs", a.finetune_epochs),
        ("--finetune-batch-size", a.finetune_batch_size),
    ):
        if value < 1:
            raise PCLError(f"{flag} must be >= 1, got {value}")


def _pm(block: dict, key: str, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    """``block[key] +- block[key_std]``, scaled and rounded."""
    return f"{scale * block[key]:.{digits}f}{unit} +- {scale * block[key + '_std']:.{digits}f}"


def table(result: dict) -> str:
    """The evaluation as a small text table."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}%"

    rows = [("kNN top-1", pct(result["knn_top1"]))] if result["knn_top1"] is not None else []
    if result["linear_top1"] is not None:
        rows += [("linear top-1", pct(result["linear_top1"])), ("linear top-5", pct(result["linear_top5"]))]
    for k, s in result["cluster"].items():
        rows.append((f"k={k} NMI / AMI / purity", f"{s['nmi']:.4f} / {s['ami']:.4f} / {s['purity']:.4f}"))
    for k, s in result.get("kmeans", {}).items():
        name = f"k-means k={k} ({s['restarts']} restarts)"
        rows.append((f"{name} ACC / NMI", f"{_pm(s, 'acc', 100, '%')} / {_pm(s, 'nmi', digits=4)}"))
        rows.append((f"{name} ARI / AMI", f"{_pm(s, 'ari', digits=4)} / {_pm(s, 'ami', digits=4)}"))
    for k, s in result.get("lowshot", {}).items():
        name = f"low-shot k={k} ({len(s['draws'])} draws, cost {s['cost_selection']})"
        rows.append((f"{name} top-1 / mAP", f"{_pm(s, 'top1', unit='%')} / {_pm(s, 'map', unit='%')}"))
    for p, s in result.get("finetune", {}).items():
        rows.append((f"fine-tune {p}% ({s['n_train']} images) top-1 / top-5", f"{s['top1']:.2f}% / {s['top5']:.2f}%"))
    if not rows:
        return "(no protocol gave a figure)"
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        _check_counts(a)
        chosen = chosen_protocols(a)
        lowshot = LowShotConfig(a.lowshot or DEFAULT_KS, a.lowshot_draws, a.lowshot_costs, a.seed)
        finetune = FinetuneConfig(
            a.finetune or FinetuneConfig().percents,
            a.finetune_epochs,
            a.finetune_batch_size,
            a.finetune_lr,
            a.finetune_head_lr,
            weight_decay=a.finetune_wd,
            seed=a.seed,
        )
        result = evaluate_run(
            a.run,
            data=a.data,
            device=a.device,
            knn="knn" in chosen,
            linear="linear" in chosen,
            clusters="clusters" in chosen,
            kmeans=(a.kmeans or ()) if "kmeans" in chosen else None,
            kmeans_restarts=a.kmeans_restarts,
            lowshot=lowshot if "lowshot" in chosen else None,
            finetune=finetune if "finetune" in chosen else None,
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
            encoder=a.encoder,
        )
    except (PCLError, ValueError) as e:
        return report_error(e)
    s = result["settings"]
    print(f"{s['source']}, {s['arch']}, stem {s['stem']}, data {s['data'] or 'bundled subset'}")
    print(table(result))
    if s.get("cluster_skipped"):
        print(f"clusters not scored: {s['cluster_skipped']}")
    if s.get("no_labels"):
        print(f"kNN, linear and cluster figures: – ({s['no_labels']})")
    if s.get("written"):
        print(f"wrote {s['written']}")
    elif s.get("not_written"):
        print(f"not written: {s['not_written']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
