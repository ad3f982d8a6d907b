"""``MetricsLog.update``: a value measured after its epoch (the deferred kNN monitor) joins that epoch's record."""

from __future__ import annotations

import json
from pathlib import Path

from pcl.run.metrics import MetricsLog


def test_update_merges_a_late_value_into_the_epoch_record(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.json", epochs_total=3, warmup_epochs=1)
    log.add(0, {"epoch/loss": 2.0})
    log.add(1, {"epoch/loss": 1.5})
    log.update(0, {"eval/knn_top1": 40.0})
    log.update(2, {"eval/knn_top1": 50.0})  # no record yet: a new one
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["epochs"] == [
        {"epoch": 0, "epoch/loss": 2.0, "eval/knn_top1": 40.0},
        {"epoch": 1, "epoch/loss": 1.5},
        {"epoch": 2, "eval/knn_top1": 50.0},
    ]
