"""Drawing the pictures of :mod:`pcl.analysis.embedding` with matplotlib (Agg, no pyplot state).

Every figure has a fixed size in inches computed from its content, drawn at ``DPI``, so a PNG's pixel size
is known in advance (:func:`gallery_size`, :func:`retrieval_size`, ``MAP_SIZE``). Images come from a
``thumb(index) -> (H, W, 3) uint8`` callable, e.g. :func:`dataset_thumbs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from pcl.analysis.embedding import GalleryRow, groups_by_size, medoid
from pcl.data.datasets import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from pcl.data.decode import load_rgb

DPI = 100
CELL = 0.9  # inches per thumbnail
LABEL_W = 1.3  # inches of the gallery's row-label column
TITLE_H = 0.45  # inches of a figure's title band
CAPTION_H = 0.28  # inches under each retrieval thumbnail
GAP = 0.25  # inches between the query column and its neighbours
MAP_SIZE = (9.0, 7.0)  # inches of the feature map
MAX_LEGEND = 20  # groups (classes, clusters) that each get a colour; with more, the MAX_COLOURS - 1 largest do
MAX_COLOURS = 10
THUMB_PX = 40  # pixel size of a group's thumbnail on the feature map

Thumb = Callable[[int], np.ndarray]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised ``(3, H, W)`` -> ``(H, W, 3) uint8``."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def dataset_thumbs(dataset: torch.utils.data.Dataset) -> Thumb:
    """``index -> (H, W, 3) uint8`` of a dataset whose items are ``(normalised image (3, H, W), ...)``
    (the eval view: resize + center crop, ImageNet normalisation)."""
    return lambda i: _to_uint8(dataset[int(i)][0])


def file_thumb(path: Path, image_size: int) -> np.ndarray:
    """``(H, W, 3) uint8`` eval view (resize + center crop to ``image_size``) of an image file."""
    return _to_uint8(eval_transform(image_size)(load_rgb(str(path))))


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG of exactly its size at ``DPI``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def to_array(fig: Figure) -> np.ndarray:
    """The drawn figure as ``(H, W, 3) uint8`` (for TensorBoard's ``add_image``)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _image_axes(fig: Figure, left: float, bottom: float, size: float, image: np.ndarray):
    """An axis-less image at ``(left, bottom)`` inches, ``size`` inches square."""
    w, h = fig.get_size_inches()
    ax = fig.add_axes((left / w, bottom / h, size / w, size / h))
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    return ax


# ---------------------------------------------------------------------- feature map


def feature_map(
    xy: np.ndarray,
    colour_ids: np.ndarray | None,
    names: Sequence[str] | None,
    title: str,
    colour_what: str,
    thumb: Thumb | None = None,
    index: np.ndarray | None = None,
) -> Figure:
    """Scatter of ``xy (n, 2)`` coloured by ``colour_ids (n,)`` (class or cluster ids; None: one colour).

    Up to ``MAX_LEGEND`` groups each get a colour and a legend entry (``names[id]``, else ``#id``, with its
    size); with more, the ``MAX_COLOURS - 1`` largest do and the rest are grey ("other"), so that a reader can
    tell the colours apart. ``thumb`` (``index -> (H, W, 3) uint8``, ``index (n,)``: each point's image): each
    coloured group's image nearest its median point is drawn there, framed in the group's colour.
    """
    fig = _figure(*MAP_SIZE)
    ax = fig.add_axes((0.04, 0.04, 0.66 if colour_ids is not None else 0.92, 0.86))
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xticks([])
    ax.set_yticks([])
    if colour_ids is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, c="tab:blue", linewidths=0)
        return fig
    colour_ids = np.asarray(colour_ids)
    n_groups = len(np.unique(colour_ids))
    shown, counts = groups_by_size(colour_ids, n_groups if n_groups <= MAX_LEGEND else MAX_COLOURS - 1)
    rest = ~np.isin(colour_ids, shown)
    if rest.any():
        label = f"other: {n_groups - len(shown)} more, {int(rest.sum())} points"
        ax.scatter(xy[rest, 0], xy[rest, 1], s=5, color="0.78", linewidths=0, label=label)
    palette = matplotlib.colormaps["tab10" if len(shown) <= 10 else "tab20"]
    for n, (j, count) in enumerate(zip(shown, counts, strict=True)):
        sel = colour_ids == j
        name = names[j] if names is not None else f"#{j}"
        ax.scatter(xy[sel, 0], xy[sel, 1], s=7, color=palette(n), linewidths=0, label=f"{name} ({count})")
        if thumb is not None and index is not None:
            at = np.flatnonzero(sel)[medoid(xy[sel])]
            image = thumb(int(index[at]))
            box = OffsetImage(image, zoom=THUMB_PX / max(image.shape[:2]))
            ab = AnnotationBbox(box, xy[at], frameon=True, pad=0.15, bboxprops={"edgecolor": palette(n), "lw": 2})
            ax.add_artist(ab)
    handles, labels = ax.get_legend_handles_labels()
    if rest.any():  # "other" last
        handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]
    leg = ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, markerscale=2.5,
                    frameon=False, title=f"{colour_what} (points)")  # fmt: skip
    leg.get_title().set_fontsize(9)
    return fig


# ---------------------------------------------------------------------- cluster gallery


def gallery_size(n_rows: int, n_members: int) -> tuple[int, int]:
    """Pixel ``(width, height)`` of a gallery of ``n_rows`` clusters by ``n_members`` images."""
    w, h = _gallery_inches(n_rows, n_members)
    return round(w * DPI), round(h * DPI)


def _gallery_inches(n_rows: int, n_members: int) -> tuple[float, float]:
    return LABEL_W + n_members * CELL + 0.1, TITLE_H + max(n_rows, 1) * CELL + 0.1


def gallery(rows: Sequence[GalleryRow], thumb: Thumb, n_members: int, title: str) -> Figure:
    """One row per cluster: its label (k, cluster, size, phi) and its ``n_members`` nearest members."""
    w, h = _gallery_inches(len(rows), n_members)
    fig = _figure(w, h)
    fig.text(0.1 / w, 1 - 0.3 / h, title, fontsize=10, ha="left", va="baseline")
    pad = 0.04
    for r, row in enumerate(rows):
        bottom = h - TITLE_H - (r + 1) * CELL
        fig.text(0.1 / w, (bottom + CELL / 2) / h, row.label(), fontsize=8, ha="left", va="center", linespacing=1.3)
        for c, i in enumerate(row.members):
            _image_axes(fig, LABEL_W + c * CELL + pad, bottom + pad, CELL - 2 * pad, thumb(int(i)))
    return fig


# ---------------------------------------------------------------------- retrieval


def retrieval_size(n_queries: int, m: int) -> tuple[int, int]:
    """Pixel ``(width, height)`` of a retrieval grid of ``n_queries`` rows with ``m`` neighbours each."""
    w, h = _retrieval_inches(n_queries, m)
    return round(w * DPI), round(h * DPI)


def _retrieval_inches(n_queries: int, m: int) -> tuple[float, float]:
    return 0.1 + (m + 1) * CELL + GAP + 0.1, TITLE_H + max(n_queries, 1) * (CELL + CAPTION_H) + 0.1


def retrieval(
    queries: np.ndarray,
    neighbours: np.ndarray,
    sims: np.ndarray,
    thumb: Thumb,
    title: str,
    names: Callable[[int], str] | None = None,
) -> Figure:
    """Each query (left, captioned "query") and its neighbours ``(Q, m)`` captioned with cosine similarity
    ``(Q, m)`` (and the class name from ``names(index)`` when given; a neighbour of the query's class in green)."""
    m = neighbours.shape[1] if neighbours.ndim == 2 else 0
    w, h = _retrieval_inches(len(queries), m)
    fig = _figure(w, h)
    fig.text(0.1 / w, 1 - 0.3 / h, title, fontsize=10, ha="left", va="baseline")
    pad, row_h = 0.04, CELL + CAPTION_H
    for r, q in enumerate(queries):
        bottom = h - TITLE_H - (r + 1) * row_h + CAPTION_H
        qname = names(int(q)) if names else None
        ax = _image_axes(fig, 0.1 + pad, bottom + pad, CELL - 2 * pad, thumb(int(q)))
        ax.set_xlabel("query" + (f": {qname}" if qname else ""), fontsize=7, labelpad=2, fontweight="bold")
        for c in range(m):
            i = int(neighbours[r, c])
            left = 0.1 + (c + 1) * CELL + GAP
            ax = _image_axes(fig, left + pad, bottom + pad, CELL - 2 * pad, thumb(i))
            name = names(i) if names else None
            caption = f"{sims[r, c]:.2f}" + (f" {name}" if name else "")
            colour = "black" if not names else ("tab:green" if name == qname else "tab:red")
            ax.set_xlabel(caption, fontsize=7, labelpad=2, color=colour)
    return fig
