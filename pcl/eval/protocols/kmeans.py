"""K-means protocol: clustering accuracy of the frozen train features (ACC / NMI / ARI / AMI / purity).

faiss k-means with the E-step's official settings on the L2-normalised frozen train features, k = the number of
classes plus any ``--kmeans K``, ``--kmeans-restarts`` seeded runs (mean +- std); unlike ``clusters`` it scores
any encoder. ``eval.json``: ``kmeans`` (``{"<K>": {"acc", "acc_std", ..., "runs"}}``, ``{}`` when not run) and
``settings.kmeans``. Summary column: ACC at k = the number of classes, in percent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pcl.analysis.cluster_metrics import has_classes, kmeans_scores
from pcl.eval.context import EvalContext
from pcl.eval.registry import Block, Protocol, Rows, SummaryColumn, draws_se, pm, register_protocol
from pcl.utils.errors import PCLError
from pcl.utils.flags import flag, int_list


@dataclass(frozen=True)
class KmeansSettings:
    """Extra k besides the number of classes, and the number of seeded restarts."""

    ks: tuple[int, ...] = flag(
        (), "--kmeans", type=int_list, gt=0, help="extra k (always k = number of classes); turns the protocol on"
    )
    restarts: int = flag(5, "--kmeans-restarts", gt=0, help="k-means runs (seeds SEED..), mean +- std")


def compute(ctx: EvalContext, s: KmeansSettings) -> Block:
    """Cluster the frozen train features at every k, score against the labels."""
    feats = ctx.features
    if not has_classes(feats.train_labels):
        raise PCLError("--kmeans needs class labels: the train split has a single class")
    ks = tuple(sorted({feats.num_classes, *s.ks}))
    settings = {
        "features": f"{ctx.feature_note}, train split",
        "seed": ctx.seed,
        "restarts": s.restarts,
        "k_classes": feats.num_classes,
        "faiss": "official E-step settings (niter 20, nredo 5), seeds seed .. seed + restarts - 1",
    }
    scores = kmeans_scores(feats.train, feats.train_labels, ks, ctx.seed, s.restarts)
    return Block({"kmeans": scores}, {"kmeans": settings})


def rows(result: Mapping[str, Any]) -> Rows:
    out = []
    for k, s in (result.get("kmeans") or {}).items():
        name = f"k-means k={k} ({s['restarts']} restarts)"
        out.append((f"{name} ACC / NMI", f"{pm(s, 'acc', 100, '%')} / {pm(s, 'nmi', digits=4)}"))
        out.append((f"{name} ARI / AMI", f"{pm(s, 'ari', digits=4)} / {pm(s, 'ami', digits=4)}"))
    return out


def _at_classes(evaluation: Mapping[str, Any]) -> Any:
    """The ``kmeans`` block of k = the number of classes (``settings.kmeans.k_classes``), or None."""
    k = str(((evaluation.get("settings") or {}).get("kmeans") or {}).get("k_classes"))
    return (evaluation.get("kmeans") or {}).get(k)


def acc_at_classes(evaluation: Mapping[str, Any]) -> float | None:
    """k-means ACC (%) at k = the number of classes (``settings.kmeans.k_classes``)."""
    acc = (_at_classes(evaluation) or {}).get("acc")
    return None if acc is None else 100.0 * acc


def acc_se(evaluation: Mapping[str, Any]) -> float | None:
    """Standard error (points) of the ACC: the restarts' spread and the train images' binomial error."""
    block = _at_classes(evaluation)
    restarts = (block or {}).get("restarts")
    return draws_se(evaluation, block, "acc", "n_train", restarts if isinstance(restarts, int) else 1, scale=100.0)


PROTOCOL = register_protocol(
    Protocol(
        name="kmeans",
        help="k-means of the frozen train features, k = classes (+ --kmeans K): ACC / NMI / ARI / AMI",
        settings=KmeansSettings,
        compute=compute,
        rows=rows,
        empty={"kmeans": {}},
        columns=(SummaryColumn("cluster_acc", "clustering ACC (%)", acc_at_classes, se=acc_se),),
        switch="ks",
    )
)
