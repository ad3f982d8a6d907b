"""Logging stage, read side: per-epoch curves of finished or running runs, and their plots.

Curves come from ``<exp-dir>/metrics.json`` (written by the engine every epoch) or, for runs that
predate it, from the TensorBoard event files. Several exp-dirs of one setting (seeds) are drawn as
one line (their mean) with the min–max range shaded.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pcl.run.metrics import read_run_record
from pcl.run.run_dir import RunDir
from pcl.utils.atomic import write_bytes_atomic
from pcl.utils.errors import PCLError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Curve = dict[int, float]  # epoch -> value


def load_curves(exp_dir: Path) -> dict[str, Curve]:
    """Every per-epoch scalar of one run: ``{tag: {epoch: value}}``."""
    metrics = RunDir(exp_dir).metrics
    if metrics.is_file():
        doc = read_run_record(metrics)
        out: dict[str, Curve] = {}
        for rec in doc["epochs"]:
            for tag, v in rec.items():
                if tag != "epoch" and isinstance(v, int | float) and math.isfinite(v):
                    out.setdefault(tag, {})[int(rec["epoch"])] = float(v)
        return out
    tb = exp_dir / "tb"
    if tb.is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        acc.Reload()
        tags = [t for t in acc.Tags()["scalars"] if t.split("/")[0] in ("epoch", "eval", "cluster", "time", "memory")]
        return {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags}
    raise PCLError(f"{exp_dir} has neither metrics.json nor tb/ event files")


def save_figure(fig: Figure, path: Path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically (the whole image or the old file; a full disk or a folder
    at ``path`` is one ``PCLError`` line)."""
    if path.is_dir():
        raise PCLError(f"{path} is a folder: give the file name of the PNG to write")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PCLError(f"cannot create the folder of {path}: {e.strerror or e}") from None
    write_bytes_atomic(path, buf.getvalue(), "figure")
    return path


def seed_dirs(path: Path) -> list[Path]:
    """``path`` itself, or its ``seed*/`` sub-folders when it is a run folder of the experiments runner."""
    seeds = sorted(p for p in path.glob("seed*") if p.is_dir())
    return seeds or [path]


def aggregate(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs present in every curve, and the mean, min and max over curves at those epochs (each ``(E,)``)."""
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    vals = np.array([[c[e] for e in common] for c in curves], dtype=float).reshape(len(curves), len(common))
    if not common:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    return np.array(common), vals.mean(0), vals.min(0), vals.max(0)


def plot_curves(
    groups: dict[str, list[Path]], tags: list[str], out: Path, title: str = "", missing_ok: bool = False
) -> list[Path]:
    """One figure per tag, one line per group (seed mean, min–max shaded); writes ``out`` or, for several
    tags, ``out`` with the tag appended to its stem. Returns the PNG paths written.

    A tag that no run logged is an error naming the tags that exist, or, with ``missing_ok``, skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = {label: [load_curves(d) for d in dirs] for label, dirs in groups.items()}
    present = {tag for runs in loaded.values() for r in runs for tag in r}
    missing = [t for t in tags if t not in present]
    if missing_ok:
        tags = [t for t in tags if t in present]
    elif missing:
        raise PCLError(
            f"no run has the tag(s) {', '.join(missing)}; tags that exist: {', '.join(sorted(present)) or 'none'}"
        )
    written = []
    for tag in tags:
        fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
        drawn = 0
        for label, runs in loaded.items():
            curves = [r[tag] for r in runs if tag in r]
            x, mean, lo, hi = aggregate(curves)
            if not len(x):
                continue
            n = f" (n={len(curves)})" if len(curves) > 1 else ""
            (line,) = ax.plot(x, mean, marker="o", markersize=2.5, label=f"{label}{n}")
            if len(curves) > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            drawn += 1
        ax.set_xlabel("epoch")
        ax.set_ylabel(tag)
        ax.set_title(title or tag)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {tag} in these runs", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        path = out if len(tags) == 1 else out.with_name(f"{out.stem}_{tag.replace('/', '_')}{out.suffix or '.png'}")
        try:
            save_figure(fig, path)
        finally:
            plt.close(fig)
        written.append(path)
    return written
