"""The end-of-run summary (labelled or unlabeled data alike): the last epoch's loss and accuracies, and health."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pcl.train.engine import Trainer


def run_summary(trainer: Trainer) -> list[str]:
    """Two lines: ``summary: epoch E of N: loss ..., <accuracy> ... [, knn_top1 ...]`` from the last epoch this
    start trained (its ``metrics.json`` record), and the collapse detector's ``health: ...`` line."""
    last = trainer.last_epoch
    if not last:
        return ["summary: no epoch trained in this start", trainer.health.summary()]
    parts = [f"loss {last.get('epoch/loss', float('nan')):.4f}"]
    for name in trainer.method.summary_terms():
        value = last.get(f"epoch/{name}")
        parts.append(f"{name} {value:.2f} %" if value is not None else f"{name} n/a (not measured in that epoch)")
    if "eval/knn_top1" in last:
        parts.append(f"knn_top1 {last['eval/knn_top1']:.2f} %")
    head = f"summary: epoch {trainer.state.epoch - 1} (of {trainer.cfg.train.epochs}): {', '.join(parts)}"
    return [head, trainer.health.summary()]
