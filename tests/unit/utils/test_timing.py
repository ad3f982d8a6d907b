"""Per-epoch time breakdown (``time/<part>_seconds``) and the ``--knn-freq`` schedule of the kNN monitor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from pcl import cli
from pcl.utils.timing import PhaseTimer
from tests.helpers import TINY_ARGS, scalars


def run(data: Path, exp_dir: Path, *extra: str) -> int:
    return cli.main([str(data), *TINY_ARGS, "--exp-dir", str(exp_dir), *extra])


def test_phase_timer_accumulates_and_pops() -> None:
    t = PhaseTimer(torch.device("cpu"))
    with t.phase("a"):
        time.sleep(0.02)
    with t.phase("a"):
        time.sleep(0.02)
    assert list(t.timed_iter(range(3), "wait")) == [0, 1, 2]
    out = t.pop()
    assert set(out) == {"time/a_seconds", "time/wait_seconds"}
    assert 0.04 <= out["time/a_seconds"] < 1.0
    assert t.pop() == {}
    off = PhaseTimer(enabled=False)
    with off.phase("a"):
        pass
    assert off.pop() == {}


def test_phase_timer_counts_cpu_seconds_apart_from_waiting() -> None:
    t = PhaseTimer(torch.device("cpu"), cpu=True)
    with t.phase("sleep"):
        time.sleep(0.05)
    with t.phase("spin"):
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass
    out = t.pop()
    assert set(out) == {f"time/{n}_seconds" for n in ("sleep", "sleep_cpu", "spin", "spin_cpu")}
    assert out["time/sleep_cpu_seconds"] < 0.5 * out["time/sleep_seconds"]
    assert out["time/spin_cpu_seconds"] > 0.0


def test_epoch_breakdown_is_logged_and_knn_runs_every_knn_freq_epochs(tiny_data: Path, tmp_path: Path) -> None:
    assert run(tiny_data, tmp_path, "--epochs", "3", "--knn-freq", "2") == 0
    tags = scalars(tmp_path)

    def epochs(tag: str) -> list[int]:
        return [s for s, _ in tags[tag]]

    for part in ("estep_features", "kmeans", "assign"):  # E-step parts: after the 1 warmup epoch
        assert epochs(f"time/{part}_seconds") == [1, 2], part
    for part in ("mstep", "mstep_data_wait", "checkpoint"):
        assert epochs(f"time/{part}_seconds") == [0, 1, 2], part
    assert epochs("time/knn_seconds") == epochs("eval/knn_top1") == [1, 2]  # every 2nd epoch and the last
    for tag, values in tags.items():
        if tag.startswith("time/"):
            assert all(v >= 0 for _, v in values), tag
    mstep, wait = dict(tags["time/mstep_seconds"]), dict(tags["time/mstep_data_wait_seconds"])
    assert all(wait[e] <= mstep[e] for e in mstep)
    records = {r["epoch"]: r for r in json.loads((tmp_path / "metrics.json").read_text())["epochs"]}
    for part in ("estep_features", "kmeans", "assign", "mstep", "mstep_data_wait", "knn", "checkpoint"):
        assert records[2][f"time/{part}_seconds"] == pytest.approx(dict(tags[f"time/{part}_seconds"])[2]), part
    estep, parts = dict(tags["time/estep_seconds"]), ("estep_features", "kmeans", "assign")

    for e in (1, 2):  # the parts add up to (almost all of) the E-step's wall time
        total = sum(dict(tags[f"time/{p}_seconds"])[e] for p in parts)
        assert 0.5 * estep[e] <= total <= estep[e] + 1e-3


def test_knn_freq_zero_never_runs_the_monitor(tiny_data: Path, tmp_path: Path) -> None:
    assert run(tiny_data, tmp_path, "--epochs", "1", "--knn-freq", "0") == 0
    tags = scalars(tmp_path)
    assert "eval/knn_top1" not in tags and "time/knn_seconds" not in tags
