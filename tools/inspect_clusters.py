"""Inspect a saved E-step cluster result: a ``--save-clusters`` file (``ClusterResult.state_dict()``), a
training checkpoint (its ``cluster_result``) or a run folder (its newest ``clusters/epoch_XXXX.pth``, else
``checkpoints/last.pth``).

Usage:
    python tools/inspect_clusters.py experiments/run/clusters/epoch_0009.pth \
        --labels-from data/.cache/cifar10_subset/train --out-dir /tmp/inspect
    python tools/inspect_clusters.py runs/default/checkpoints/last.pth      # the last E-step of a run

Per granularity: a summary line (k, non-empty clusters, cluster sizes, concentration phi) and a PNG with
the cluster-size histogram and the phi distribution. With ``--labels-from`` (the ImageFolder train folder
the clusters were computed on, same order as torchvision ImageFolder): NMI, AMI and purity against the
class labels, and a PNG grid of member images of the largest clusters. Prints the paths of the PNGs.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np

from pcl.run.curves import save_figure
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged


def cluster_file(path: Path) -> Path:
    """The file to read for ``path``: itself, or for a run folder its newest ``--save-clusters`` file, else its
    ``checkpoints/last.pth``; one ``PCLError`` line for anything else."""
    from pcl.run.run_dir import RunDir

    if path.is_file():
        return path
    if not path.exists():
        raise PCLError(f"{path} does not exist: give a clusters/epoch_XXXX.pth file, a checkpoint or a run folder")
    rd = RunDir(path)
    saved = sorted(rd.clusters.glob("epoch_*.pth")) if rd.clusters.is_dir() else []
    if saved:
        return saved[-1]
    if rd.last.is_file():
        return rd.last
    raise PCLError(
        f"{path} is a folder but not a run folder (no clusters/epoch_XXXX.pth, no checkpoints/last.pth): give a "
        "cluster result, a checkpoint or a run folder"
    )


def _load(path: Path) -> object:
    """``torch.load`` of a cluster file (tensors only) or of a training checkpoint (which also holds RNG states
    and the configuration); one ``PCLError`` line when it is not a torch file."""
    import torch

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise PCLError(f"{path} is not a (complete) torch.save file: give a cluster result, a checkpoint or a run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a training checkpoint: read below, as training reads it
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PCLError(f"{path} cannot be read as a cluster result or checkpoint: {first}") from None
    from pcl.run.checkpoint import load_checkpoint

    return load_checkpoint(path)  # a training checkpoint: it also holds numpy RNG states and the configuration


def load_levels(path: Path) -> list[dict]:
    """The ``levels`` of a saved ``ClusterResult`` state dict (or of a checkpoint's ``cluster_result``)."""
    state = _load(path)
    if isinstance(state, dict) and "levels" not in state and "cluster_result" in state:
        if state["cluster_result"] is None:
            raise PCLError(
                f"{path} holds no cluster result: it was written before the first E-step (epoch {state.get('epoch')}"
                " < --warmup-epochs); give a later checkpoint or a --save-clusters file (RUN/clusters/epoch_XXXX.pth)"
            )
        state = state["cluster_result"]
    if not isinstance(state, dict) or not isinstance(state.get("levels"), list):
        raise PCLError(
            f"{path} is not a cluster result (no 'levels'): give a --save-clusters file (RUN/clusters/epoch_XXXX.pth),"
            " a training checkpoint (RUN/checkpoints/last.pth) or a run folder"
        )
    return [
        {
            "k": int(lv["k"]),
            "im2cluster": lv["im2cluster"].numpy().astype(np.int64),
            "density": lv["density"].float().numpy(),
        }
        for lv in state["levels"]
    ]


def summary(im2cluster: np.ndarray, concentration: np.ndarray, k: int) -> dict[str, float]:
    """Cluster-size and phi statistics of one granularity: ``im2cluster (N,)``, ``concentration (k,)``."""
    sizes = np.bincount(im2cluster, minlength=k)
    used = sizes[sizes > 0]
    return {
        "k": k,
        "nonempty": len(used),
        "size_min": int(used.min()),
        "size_median": float(np.median(used)),
        "size_max": int(used.max()),
        "phi_min": float(concentration.min()),
        "phi_mean": float(concentration.mean()),
        "phi_max": float(concentration.max()),
    }


def plot_stats(im2cluster: np.ndarray, concentration: np.ndarray, k: int, out: Path) -> None:
    """PNG: histogram of non-empty cluster sizes and of the concentrations phi ``(k,)``."""
    import matplotlib.pyplot as plt

    sizes = np.bincount(im2cluster, minlength=k)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.hist(sizes[sizes > 0], bins=50)
    a.set(title=f"k={k}: cluster sizes ({int((sizes == 0).sum())} empty)", xlabel="members", ylabel="clusters")
    b.hist(concentration, bins=50)
    b.set(title=f"concentration phi (mean {concentration.mean():.3g})", xlabel="phi", ylabel="clusters")
    fig.tight_layout()
    fig.set_dpi(100)
    save_figure(fig, out)
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
    fig.set_dpi(100)
    save_figure(fig, out)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The tool's command line."""
    p = ErrorParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "clusters", type=Path, help="a --save-clusters file (clusters/epoch_XXXX.pth), a checkpoint or a run folder"
    )
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
    source = cluster_file(args.clusters)
    levels = load_levels(source)
    if source != args.clusters:
        print(f"reading {source}")
    out_dir = args.out_dir or source.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise PCLError(f"--out-dir {out_dir} is a file: give a folder for the PNGs")
    dataset = None
    if args.labels_from is not None:
        from pcl.data.datasets import IndexedImages
        from pcl.data.sources import resolve_data

        dataset = IndexedImages(resolve_data(args.labels_from).train)
    stem = source.stem
    for lv in levels:
        k, im2cluster, concentration = lv["k"], lv["im2cluster"], lv["density"]
        s = summary(im2cluster, concentration, k)
        print(
            f"k={k}: {s['nonempty']} non-empty clusters, size min/median/max {s['size_min']}/{s['size_median']:g}/"
            f"{s['size_max']}, phi min/mean/max {s['phi_min']:.4g}/{s['phi_mean']:.4g}/{s['phi_max']:.4g}"
        )
        stats_png = out_dir / f"{stem}_k{k}_stats.png"
        plot_stats(im2cluster, concentration, k, stats_png)
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
