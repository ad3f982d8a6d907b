"""Run-directory layout: the one place that names the files and folders of an ``--exp-dir``.

    <exp-dir>/config.json                   resolved configuration of the last start
    <exp-dir>/checkpoints/last.pth          latest epoch (what ``--resume auto`` continues from)
    <exp-dir>/checkpoints/checkpoint_XXXX.pth   every ``--save-freq`` epochs and the final one
    <exp-dir>/tb/                           TensorBoard event files
    <exp-dir>/clusters/epoch_XXXX.pth       ``--save-clusters``: each E-step's cluster result
    <exp-dir>/features/                     E-step feature shards (default ``--feature-dir``)
    <exp-dir>/metrics.json, eval.json       per-epoch metrics and evaluation results
    <exp-dir>/train.log, eval.log           output of a run started by the suite runner (and of its evaluation)
    <exp-dir>/status.json                   the suite runner's outcome of the last start (done / stopped / failed)
    <exp-dir>/.runner.lock                  held by the suite runner (or its SLURM task) that runs this exp-dir

Everything else asks a :class:`RunDir` for these paths instead of spelling them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """Paths of one experiment directory ``root``; creating nothing until asked to."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        """Resolved configuration of the last start (JSON)."""
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        """Folder of ``last.pth`` and the kept checkpoints."""
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """The latest checkpoint, overwritten every epoch."""
        return self.checkpoints / "last.pth"

    def checkpoint(self, epoch: int) -> Path:
        """The kept checkpoint after ``epoch`` completed epochs."""
        return self.checkpoints / f"checkpoint_{epoch:04d}.pth"

    @property
    def tb(self) -> Path:
        """TensorBoard log folder."""
        return self.root / "tb"

    @property
    def clusters(self) -> Path:
        """Folder of the ``--save-clusters`` files."""
        return self.root / "clusters"

    def clusters_file(self, epoch: int) -> Path:
        """The cluster result of the E-step at the start of ``epoch``."""
        return self.clusters / f"epoch_{epoch:04d}.pth"

    @property
    def features(self) -> Path:
        """Default ``--feature-dir``: E-step feature shards."""
        return self.root / "features"

    @property
    def metrics(self) -> Path:
        """Per-epoch metrics (JSON)."""
        return self.root / "metrics.json"

    @property
    def eval(self) -> Path:
        """Evaluation results (JSON)."""
        return self.root / "eval.json"

    @property
    def train_log(self) -> Path:
        """Output (stdout and stderr) of every start by the suite runner, appended."""
        return self.root / "train.log"

    @property
    def eval_log(self) -> Path:
        """Output of the suite runner's ``tools/evaluate.py`` call."""
        return self.root / "eval.log"

    @property
    def status(self) -> Path:
        """The suite runner's record of the last start (JSON)."""
        return self.root / "status.json"

    @property
    def runner_lock(self) -> Path:
        """Lock file of the suite runner that owns this run (one runner per run; the trainer's is ``.lock``)."""
        return self.root / ".runner.lock"

    def is_finished(self) -> bool:
        """True when the run trained its last epoch: ``metrics.json`` says complete and :attr:`last` is a readable
        checkpoint of that epoch (a run killed while writing its last checkpoint is not finished)."""
        import json

        import torch

        try:
            metrics = json.loads(self.metrics.read_text())
            if not metrics.get("complete"):
                return False
            state = torch.load(self.last, map_location="cpu", weights_only=False, mmap=True)  # tensors not read
            return int(state["epoch"]) >= int(metrics["epochs_total"])
        except Exception:  # missing, truncated or foreign files: not finished
            return False

    def kept_checkpoints(self) -> list[Path]:
        """The ``checkpoint_XXXX.pth`` files, oldest epoch first (numerically: ``checkpoint_10000`` follows
        ``checkpoint_9999``)."""
        if not self.checkpoints.is_dir():
            return []

        def number(p: Path) -> int:
            tail = p.stem.removeprefix("checkpoint_")
            return int(tail) if tail.isdigit() else -1

        return sorted((p for p in self.checkpoints.glob("checkpoint_*.pth") if number(p) >= 0), key=number)

    def resume_path(self, resume: str | None) -> Path | None:
        """``--resume``: ``auto`` -> the newest complete checkpoint: :attr:`last`, or the newest kept one when
        it holds more (a kill between writing ``checkpoint_XXXX.pth`` and copying it to ``last.pth``); the
        newest kept one when ``last.pth`` is missing; ``None`` with none (fresh start). A path -> that path.
        (An unreadable ``last.pth`` falls back when it is read: :func:`pcl.run.checkpointer.load_resumable`.)"""
        if not resume:
            return None
        if resume != "auto":
            return Path(resume)
        kept = self.kept_checkpoints()
        if not self.last.is_file():
            return kept[-1] if kept else None
        if kept:
            last, newest = checkpoint_position(self.last), checkpoint_position(kept[-1])
            if last is not None and newest is not None and newest > last:
                return kept[-1]
        return self.last


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """``(completed epochs, steps into the next one)`` of a training checkpoint, read without its tensors
    (memory-mapped); None when it cannot be read."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(state["epoch"]), int(state.get("step_in_epoch") or 0)
    except Exception:  # missing, truncated or foreign: no position
        return None
