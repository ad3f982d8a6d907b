"""Inspect a saved E-step cluster result (``--save-clusters`` output, ``ClusterResult.state_dict()``).

Usage:
    python tools/inspect_clusters.py experiments/run/clusters/epoch_0009.pth \
        --labels-from data/.cache/cifar10_subset/train --out-dir /tmp/inspect

Per granularity: a summary line (k, non-empty clusters, cluster sizes, concentration phi) and a PNG with
the cluster-size histogram and the phi distribution. With ``--labels-from`` (the ImageFolder train folder
the clusters were computed on, same order as torchvision ImageFolder): NMI, AMI and purity against the
class labels, and a PNG grid of member images of the largest clusters. Prints the paths of the PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged


def load_levels(path: Path) -> list[dict]:
    """The ``levels`` of a saved ``ClusterResult`` state dict (or of a checkpoint's ``cluster_result``)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "levels" not in state and isinstance(state.get("cluster_result"), dict):
        state = state["cluster_result"]
    if not isinstance(state, dict) or "levels" not in state:
        raise PCLError(f"{path} is not a saved cluster result (no 'levels')")
    return [
        {
            "k": int(lv["k"]),
            "im2cluster": lv["im2cluster"].numpy().astype(np.int64),
            "density": lv["density"].float().numpy(),
        }
        for lv in state["levels"]
    ]


def summary(im2cluster: np.ndarray, density: np.ndarray, k: int) -> dict[str, float]:
    """Cluster-size and phi statistics of one granularity: ``im2cluster (N,)``, ``density (k,)``."""
    sizes = np.bincount(im2cluster, minlength=k)
    used = sizes[sizes > 0]
    return {
        "k": k,
        "nonempty": len(used),
        "size_min": int(used.min()),
        "size_median": float(np.median(used)),
        "size_max": int(used.max()),
        "phi_min": float(density.min()),
        "phi_mean": float(density.mean()),
        "phi_max": float(density.max()),
    }


def plot_stats(im2cluster: np.ndarray, density: np.ndarray, k: int, out: Path) -> None:
    """PNG: histogram of non-empty cluster sizes and of the concentrations phi ``(k,)``."""
    import matplotlib.pyplot as plt

    sizes = np.bincount(im2cluster, minlength=k)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.hist(sizes[sizes > 0], bins=50)
    a.set(title=f"k={k}: cluster sizes ({int((sizes == 0).sum())} empty)", xlabel="members", ylabel="clusters")
    b.hist(density, bins=50)
    b.set(title=f"concentration phi (mean {density.mean():.3g})", xlabel="phi", ylabel="clusters")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_grid(
    im2cluster: np.ndarray,
    paths: list[str],
    labels: np.ndarray,
    classes: list[str],
    out: Path,
    n_clusters: int,
    n_members: int,
    image_size: int,
) -> None:
    """PNG: one row per largest cluster, ``n_members`` member images each (a fixed random choice).

    ``im2cluster (N,)``, image ``paths`` (N), class ``labels (N,)`` indexing ``classes``.
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    sizes = np.bincount(im2cluster)
    top = np.argsort(-sizes, kind="stable")[:n_clusters]
    top = top[sizes[top] > 0]
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(len(top), n_members, figsize=(1.3 * n_members, 1.5 * len(top)), squeeze=False)
    for row, c in zip(axes, top, strict=True):
        members = np.flatnonzero(im2cluster == c)
        chosen = np.sort(rng.choice(members, size=min(n_members, len(members)), replace=False))
        majority = classes[np.bincount(labels[members]).argmax()]
        for ax in row:
            ax.axis("off")
        for ax, i in zip(row, chosen, strict=False):
            with Image.open(paths[i]) as img:
                ax.imshow(img.convert("RGB").resize((image_size, image_size)))
        row[0].set_title(f"cluster {c}: n={sizes[c]}, mostly {majority}", loc="left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The tool's command line."""
    p = ErrorParser(description=__doc__.splitlines()[0])
    p.add_argument("clusters", type=Path, help="a saved ClusterResult state dict (.pth)")
    p.add_argument("--labels-from", type=Path, help="the data the clusters were computed on (a DATA form)")
    p.add_argument("--out-dir", type=Path, help="where to write the PNGs (default: next to the input file)")
    p.add_argument(
        "--grid-clusters", type=ranged(int, gt=0), default=4, help="rows of the member grid (largest clusters)"
    )
    p.add_argument("--grid-members", type=ranged(int, gt=0), default=8, help="images per row of the member grid")
    p.add_argument("--image-size", type=ranged(int, gt=0, le=4096), default=32, help="side of each grid image (pixels)")
    return p.parse_args(argv)


@entry_point()
def main(argv: list[str] | None = None) -> int:
    """Print each granularity's summary (and label agreement) and write its PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    args = parse_args(argv)
    if not args.clusters.is_file():
        raise PCLError(f"no such file: {args.clusters}")
    levels = load_levels(args.clusters)
    out_dir = args.out_dir or args.clusters.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = None
    if args.labels_from is not None:
        from pcl.data.datasets import IndexedImages
        from pcl.data.sources import resolve_data

        dataset = IndexedImages(resolve_data(args.labels_from).train)
    stem = args.clusters.stem
    for lv in levels:
        k, im2cluster, density = lv["k"], lv["im2cluster"], lv["density"]
        s = summary(im2cluster, density, k)
        print(
            f"k={k}: {s['nonempty']} non-empty clusters, size min/median/max {s['size_min']}/{s['size_median']:g}/"
            f"{s['size_max']}, phi min/mean/max {s['phi_min']:.4g}/{s['phi_mean']:.4g}/{s['phi_max']:.4g}"
        )
        stats_png = out_dir / f"{stem}_k{k}_stats.png"
        plot_stats(im2cluster, density, k, stats_png)
        print(f"wrote {stats_png}")
        if dataset is None:
            continue
        if len(dataset.targets) != len(im2cluster):
            raise PCLError(
                f"{args.labels_from} has {len(dataset.targets)} images, the clusters cover {len(im2cluster)}"
            )
        from pcl.analysis.cluster_metrics import label_scores

        labels = np.asarray(dataset.targets)
        sc = label_scores(im2cluster, labels)
        print(f"k={k}: NMI {sc['nmi']:.4f}  AMI {sc['ami']:.4f}  purity {sc['purity']:.4f}")
        grid_png = out_dir / f"{stem}_k{k}_grid.png"
        paths = [path for path, _ in dataset.samples]
        plot_grid(
            im2cluster, paths, labels, dataset.classes, grid_png, args.grid_clusters, args.grid_members, args.image_size
        )
        print(f"wrote {grid_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
