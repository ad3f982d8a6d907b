"""``experiments/bn_effect.py``: the before/after table of recomputed BatchNorm statistics over a suite's runs,
against a hand-computed paired t interval, the evaluations it asks for, and its error lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers import load_experiments

load_experiments()
import bn_effect  # noqa: E402 - experiments/ is on the path now

from pcl.utils.errors import PCLError  # noqa: E402

T_975_2 = 4.302652729911275  # Student t, 2 degrees of freedom (tables)


def _suite(root: Path, knn: dict[str, list[float]], untrained: float | None = 30.0) -> Path:
    suite = root / "baseline"
    for run, values in knn.items():
        for seed, v in enumerate(values):
            d = suite / run / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "eval.json").write_text(json.dumps({"knn_top1": v, "linear_top1": v + 5}))
    if untrained is not None:
        (suite / "untrained").mkdir(parents=True)
        (suite / "untrained" / "eval.json").write_text(json.dumps({"knn_top1": untrained}))
    (suite / "moco-v2" / "seed9-notes").mkdir(parents=True)  # not a seed folder: ignored
    return suite


def _fake_evaluate(shift: dict[str, list[float]], calls: list[list[str]]):
    """A stand-in for ``tools/evaluate.py``: writes ``--out`` with the run's kNN moved by ``shift[run][seed]``."""

    def call(cmd: list[str]) -> int:
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        if "--untrained-bn" in cmd:
            out.write_text(json.dumps({"knn_top1": 29.0}))
            return 0
        before = json.loads((out.parent / "eval.json").read_text())
        d = shift[out.parent.parent.name][int(out.parent.name[4:])]
        out.write_text(json.dumps({"knn_top1": before["knn_top1"] + d}))
        return 0

    return call


def test_the_table_gives_before_after_and_the_paired_interval_of_each_run(tmp_path: Path) -> None:
    suite = _suite(tmp_path, {"moco-v2": [40.0, 41.0, 42.0], "pcl": [38.0, 37.0, 39.0]})
    shift = {"moco-v2": [2.0, 3.0, 4.0], "pcl": [-0.5, 0.5, 0.0]}
    calls: list[list[str]] = []
    pairs = bn_effect.runs_of(suite)
    assert [(p.run, p.seed) for p in pairs] == [("moco-v2", 0), ("moco-v2", 1), ("moco-v2", 2), ("pcl", 0),
                                                ("pcl", 1), ("pcl", 2), (bn_effect.UNTRAINED_ROW, 0)]  # fmt: skip
    bn_effect.evaluate_missing(pairs, "knn", _fake_evaluate(shift, calls))
    assert len(calls) == 7 and all("--recalibrate-bn" in c for c in calls[:6])
    assert "--untrained-bn" in calls[6] and calls[6][calls[6].index("--untrained-bn") + 1] == "init"
    md, rows = bn_effect.table(*bn_effect._load(pairs))
    # moco-v2: diffs 2, 3, 4: mean 3, sd 1 -> 3 +- t * 1 / sqrt 3 (t = 4.30: [+0.52, +5.48])
    half = T_975_2 / math.sqrt(3)
    cell = next(r for r in rows if r[0] == "moco-v2" and r[1] == "knn")
    assert cell[2] == 3 and cell[3] == pytest.approx(41.0) and cell[4] == pytest.approx(44.0)
    assert cell[6] == pytest.approx(3 - half) and cell[7] == pytest.approx(3 + half) and cell[9] == "better"
    assert f"41.00 → 44.00 (+3.00 [{3 - half:+.2f}, {3 + half:+.2f}] better)" in md
    pcl_cell = next(r for r in rows if r[0] == "pcl" and r[1] == "knn")
    assert pcl_cell[5] == pytest.approx(0.0) and pcl_cell[9] == "within noise"
    untrained = next(r for r in rows if r[0] == bn_effect.UNTRAINED_ROW)
    assert untrained[3:6] == [29.0, 30.0, 1.0] and untrained[9] == "n = 1: no verdict"
    # the linear column has figures before only (the fake evaluation measured kNN): no column, no CSV row
    assert "linear" not in md and all(r[1] == "knn" for r in rows)


def test_files_already_there_are_reused_and_a_failed_evaluation_is_one_error(tmp_path: Path) -> None:
    suite = _suite(tmp_path, {"pcl": [38.0, 37.0]}, untrained=None)
    pairs = bn_effect.runs_of(suite)
    (suite / "pcl" / "seed0" / bn_effect.AFTER).write_text(json.dumps({"knn_top1": 39.0}))
    calls: list[list[str]] = []
    bn_effect.evaluate_missing(pairs, "knn", _fake_evaluate({"pcl": [0.0, 2.0]}, calls))
    assert len(calls) == 1 and str(suite / "pcl" / "seed1") in calls[0]
    (suite / "pcl" / "seed1" / bn_effect.AFTER).unlink()
    with pytest.raises(PCLError, match=r"pcl seed1 \(exit 1\)"):
        bn_effect.evaluate_missing(pairs, "knn", lambda cmd: 1)


def test_bad_input_is_one_error_line(tmp_path: Path, capsys) -> None:
    assert bn_effect.main([str(tmp_path / "missing")]) != 0
    assert bn_effect.main([str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "not a folder" in err[0] and "no evaluated run" in err[1]


def test_the_cli_writes_the_markdown_and_the_csv(tmp_path: Path, monkeypatch, capsys) -> None:
    suite = _suite(tmp_path, {"pcl": [38.0, 37.0]})
    for seed, v in enumerate([39.0, 38.0]):
        (suite / "pcl" / f"seed{seed}" / bn_effect.AFTER).write_text(json.dumps({"knn_top1": v}))
    (suite / "untrained" / bn_effect.INIT).write_text(json.dumps({"knn_top1": 28.0}))
    monkeypatch.setattr(bn_effect.subprocess, "call", lambda *a, **k: pytest.fail("nothing to evaluate"))
    out = tmp_path / "res" / "new" / "bn.md"  # a folder that does not exist yet
    assert bn_effect.main([str(suite), "--out", str(out)]) == 0
    assert "37.50 → 38.50" in out.read_text() and "28.00 → 30.00" in out.read_text()
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,column,n,before,after") and len(csv_lines) == 3
