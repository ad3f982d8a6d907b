"""Logging stage: ``<exp-dir>/metrics.json``, the per-epoch record that experiment summaries read.

Written atomically at the end of every epoch (rank 0 only). Layout::

    {"version": 1, "epochs_total": 200, "warmup_epochs": 20, "complete": false,
     "epochs": [{"epoch": 0, "epoch/acc_inst": 12.5, "eval/knn_top1": 30.1, "time/epoch_seconds": 41.0, ...}, ...],
     "final": {"epoch": 0, "knn_top1": 30.1, "acc_inst": 12.5, "acc_proto": null, "best_acc_proto": null,
               "skipped_steps": 0, "seconds_per_epoch": 41.0, "peak_rss_mib": 900.0, ...}}

``epochs[i]`` holds every per-epoch scalar the engine logs to TensorBoard at step ``epoch`` (the same tags),
so a new per-epoch scalar appears here without touching this module. ``complete`` is true once the last
epoch of the schedule is in **and its checkpoint is written** (the engine records each epoch once before its
checkpoint, ``checkpointed=False``, and once after); a resumed run drops the records of epochs it redoes.
:meth:`pcl.run.run_dir.RunDir.is_finished` checks the record against the files.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path

import torch

from pcl.utils.atomic import write_atomic
from pcl.utils.errors import PCLError

VERSION = 1


def read_run_record(path: Path) -> dict:
    """A ``metrics.json`` written by the engine; raises a one-line ``PCLError`` naming ``path`` when it cannot
    be read or is not a run record (a JSON object whose ``epochs`` is a list of ``{"epoch": N, ...}``)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise PCLError(f"{path} cannot be read: {e.strerror or e}") from None
    except ValueError as e:
        raise PCLError(f"{path} is not valid JSON: {e}") from None
    records = doc.get("epochs") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in records
    ):
        raise PCLError(
            f"{path} is not a run record: expected main_pcl.py's metrics.json, a JSON object whose "
            '"epochs" is a list of {"epoch": N, ...}'
        )
    return doc


def peak_memory_mib(device: torch.device | None = None) -> dict[str, float]:
    """Peak resident memory of this process (MiB) and, on CUDA, the peak allocated GPU memory (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mib": rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024}
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


class MetricsLog:
    """Per-epoch scalars of one run, persisted to ``path`` after every epoch."""

    def __init__(self, path: Path, epochs_total: int, warmup_epochs: int, enabled: bool = True) -> None:
        self.path, self.epochs_total, self.warmup_epochs, self.enabled = path, epochs_total, warmup_epochs, enabled
        self.epochs: list[dict[str, float]] = []
        self.checkpointed = True

    def resume(self, completed_epochs: int) -> None:
        """Keep the stored records of epochs ``< completed_epochs`` (a resumed run redoes the rest)."""
        if not self.enabled or not self.path.is_file():
            return
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # unreadable: start the record afresh, the checkpoint is what matters
        self.epochs = [e for e in stored.get("epochs", []) if e.get("epoch", math.inf) < completed_epochs]
        if self.epochs and self.epochs[-1]["epoch"] == completed_epochs - 1:
            # the checkpoint of completed_epochs exists (it is being resumed): its epoch's record is final, also
            # when the run was killed between that checkpoint and the record's rewrite (``complete`` then true
            # for a run resumed from its final checkpoint, which trains nothing more)
            self.checkpointed = True
            if not stored.get("complete") and self.epochs[-1]["epoch"] + 1 >= self.epochs_total:
                self.write()

    def add(
        self, epoch: int, scalars: dict[str, float], extra: dict[str, float] | None = None, checkpointed: bool = True
    ) -> None:
        """Record epoch ``epoch``'s scalars (TensorBoard tags) and ``extra`` values, then write the file.

        ``checkpointed``: the epoch's checkpoint exists; until then the record of the last epoch is not ``complete``.
        """
        if not self.enabled:
            return
        self.checkpointed = checkpointed
        rec: dict[str, float | None] = {"epoch": epoch}
        rec.update({k: _finite_or_none(v) for k, v in sorted(scalars.items())})
        rec.update({k: _finite_or_none(v) for k, v in (extra or {}).items()})
        self.epochs = [e for e in self.epochs if e["epoch"] < epoch] + [rec]
        self.write()

    def update(self, epoch: int, scalars: dict[str, float]) -> None:
        """Merge ``scalars`` measured later (a deferred kNN monitor) into epoch ``epoch``'s record, then write."""
        if not self.enabled:
            return
        rec = next((e for e in self.epochs if e["epoch"] == epoch), None)
        if rec is None:
            self.add(epoch, scalars)
            return
        rec.update({k: _finite_or_none(v) for k, v in scalars.items()})
        self.write()

    def final(self) -> dict[str, float | int | None]:
        """Summary of the run so far: last-epoch values, best acc_proto, totals and means."""
        if not self.epochs:
            return {}
        last = self.epochs[-1]
        protos = [e["epoch/acc_proto"] for e in self.epochs if e.get("epoch/acc_proto") is not None]
        secs = [e["time/epoch_total_seconds"] for e in self.epochs if e.get("time/epoch_total_seconds") is not None]
        out: dict[str, float | int | None] = {
            "epoch": last["epoch"],
            "knn_top1": last.get("eval/knn_top1"),
            "acc_inst": last.get("epoch/acc_inst"),
            "loss": last.get("epoch/loss"),
            "acc_proto": last.get("epoch/acc_proto"),
            "best_acc_proto": max(protos) if protos else None,
            "skipped_steps": sum(int(e.get("epoch/skipped_steps") or 0) for e in self.epochs),
            "seconds_per_epoch": sum(secs) / len(secs) if secs else None,
        }
        mem = [k for k in last if k.startswith("memory/")]
        out.update({k.removeprefix("memory/"): max(e.get(k) or 0.0 for e in self.epochs) for k in mem})
        return out

    def write(self) -> None:
        done = self.checkpointed and bool(self.epochs) and self.epochs[-1]["epoch"] + 1 >= self.epochs_total
        doc = {
            "version": VERSION,
            "epochs_total": self.epochs_total,
            "warmup_epochs": self.warmup_epochs,
            "complete": done,
            "epochs": self.epochs,
            "final": self.final(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(doc, indent=1).encode()
        write_atomic(self.path, lambda f: f.write(data), "metrics")
