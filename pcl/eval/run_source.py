"""What a run folder gives an evaluation: its last checkpoint, its last E-step clusters, its own data.

Shared by ``evaluate_run`` and ``tools/visualize.py`` (``pcl.eval.pictures``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pcl.data.sources import resolve_data
from pcl.estep.clustering import ClusterResult
from pcl.run.run_dir import RunDir
from pcl.utils.errors import PCLError


def run_paths(target: Path) -> tuple[RunDir | None, Path]:
    """``RUN_DIR`` -> (its RunDir, its last checkpoint); a checkpoint file -> (its run if any, the file)."""
    if target.is_dir():
        run = RunDir(target)
        if not run.last.is_file():
            raise PCLError(f"{target} has no {run.last.relative_to(target)}: not a started training run")
        return run, run.last
    if not target.exists():
        raise PCLError(f"{target} does not exist")
    run = RunDir(target.parent.parent)
    return (run if run.checkpoints == target.parent else None), target


def last_cluster_result(run: RunDir | None, ckpt: dict | None) -> ClusterResult | None:
    """The newest of the checkpoint's ``cluster_result`` and the ``RUN_DIR/clusters/epoch_*.pth`` written up to
    the checkpoint's epoch (or None)."""
    found: list[ClusterResult] = []
    if ckpt is not None and ckpt.get("cluster_result") is not None:
        found.append(ClusterResult.from_state_dict(ckpt["cluster_result"]))
    done = ckpt.get("epoch") if ckpt is not None else None  # completed epochs: later clusters are not its own
    files = sorted(run.clusters.glob("epoch_*.pth")) if run is not None else []
    files = [f for f in files if done is None or int(f.stem.removeprefix("epoch_")) < int(done)]
    if files:
        try:
            found.append(ClusterResult.from_state_dict(torch.load(files[-1], map_location="cpu", weights_only=True)))
        except Exception as e:
            raise PCLError(f"cluster result {files[-1]} cannot be read: {e}") from None
    return max(found, key=lambda r: r.epoch) if found else None


def same_train_folder(data: str | None, own: str | None) -> bool:
    """True when ``data`` and the run's recorded data root ``own`` (None = bundled subset) name the same train
    folder; a recorded root that no longer exists is never the same."""
    try:
        return resolve_data(data).train.where.resolve() == resolve_data(own).train.where.resolve()
    except PCLError:
        return False
