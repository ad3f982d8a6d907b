"""Suite summaries: paired differences over seeds against the reference run with 95 % intervals and a verdict per
cell, the untrained reference marking worse cells and columns that are not a ranking, and ``reference = NAME``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from pcl.utils.errors import PCLError
from tests.helpers import load_experiments, write_suite

load_experiments()
from paired import paired, read_seeds_csv  # noqa: E402 - experiments/ is on the path now
from suite import load_suite  # noqa: E402
from summary import UNTRAINED_ROW, RunRow, SeedResult, _markdown, figures_of, table, verdicts  # noqa: E402

T_975_2 = 4.302652729911275  # Student t, 2 degrees of freedom (tables)


def _row(name: str, knn: list[float], linear: list[float] | None = None, note: str = "") -> RunRow:
    seeds = []
    for i, k in enumerate(knn):
        figs = {"knn": k, "linear": (linear or knn)[i]}
        seeds.append(SeedResult(seed=i, status="done", figures=figs, se={"knn": 1.0, "linear": 1.0}))
    return RunRow(name, {}, len(knn), seeds, note=note)


def _summary(rows: list[RunRow], info: dict | None = None) -> tuple[str, object]:
    from summary import summary_columns

    info = {"suite": "s", "seeds": 3, **(info or {})}
    columns = summary_columns(info)
    v = verdicts(info, rows, [c for c in columns if any(r.figures(c.key) for r in rows)])  # as summarize() does
    return _markdown(info, table(rows, columns), [], v), v


def test_paired_differences_against_the_reference_run_match_a_hand_computed_t_interval() -> None:
    rows = [_row("moco", [50.0, 52.0, 51.0]), _row("pcl", [51.0, 54.0, 55.0])]  # diffs 1, 2, 4
    c = paired(figures_of(rows), "pcl", "moco", "knn")
    half = T_975_2 * math.sqrt(7 / 3) / math.sqrt(3)
    assert (c.iv.n, c.iv.method, c.verdict) == (3, "paired t", "within noise")
    assert (c.iv.lo, c.iv.hi) == (pytest.approx(7 / 3 - half), pytest.approx(7 / 3 + half))
    md, _ = _summary(rows)
    assert "## Paired differences against `moco`" in md
    assert f"| pcl | 3 | +2.33 [{7 / 3 - half:+.2f}, {7 / 3 + half:+.2f}] within noise |" in md
    assert "Student t on the paired differences" in md and "n = 1 pair: no verdict" in md
    one = [_row("moco", [50.0]), _row("pcl", [53.0])]
    md, _ = _summary(one)
    assert "| pcl | 1 | +3.00 (n = 1: no verdict) |" in md


def test_a_training_scalar_column_reads_higher_or_lower_never_better() -> None:
    """A suite file's ``columns`` (a loss, the collapse verdict) have no known good direction: a clear rise of the
    collapse verdict is *higher*, not *better* (the recipes suite once read "+1.000 better")."""
    from summary import summary_columns

    info = {"suite": "s", "seeds": 3, "columns": ["health/epoch_collapse"]}
    (column,) = [c for c in summary_columns(info) if c.key == "health_epoch_collapse"]
    assert column.higher_is_better is None
    rows = []
    for name, verdicts_seen in (("adamw", [0.0, 0.0, 0.0]), ("sgd", [1.0, 1.0, 1.0])):
        seeds = [SeedResult(seed=i, status="done", figures={"knn": 50.0 + i, "health_epoch_collapse": v}, se={})
                 for i, v in enumerate(verdicts_seen)]  # fmt: skip
        rows.append(RunRow(name, {}, 3, seeds))
    shown = [c for c in summary_columns(info) if any(r.figures(c.key) for r in rows)]
    md = _markdown(info, table(rows, summary_columns(info)), [], verdicts(info, rows, shown))
    assert "+1.000 [+1.000, +1.000] higher" in md and "better" not in md.split("## Paired")[1].split("\n\n")[1]


def test_worse_than_untrained_is_marked_exactly_where_the_interval_lies_below_it() -> None:
    untrained = _row(UNTRAINED_ROW, [40.0], note="reference")
    rows = [
        _row("moco", [50.0, 51.0, 52.0], [30.0, 31.0, 30.5]),  # kNN better, linear worse than the untrained 40
        _row("pcl", [39.0, 41.0, 40.5], [45.0, 46.0, 47.0]),  # kNN within noise, linear better
        untrained,
    ]
    md, v = _summary(rows)
    assert v.worse == {("moco", "linear")}
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| moco |") or ln.startswith("| pcl |")]
    assert "30.50 ± 0.50 ▼" in table_rows[0] and "51.00 ± 1.00 ▼" not in table_rows[0]
    assert "▼" not in table_rows[1]
    assert md.count("▼") == 2  # the cell and the legend line
    # neither column ranks every trained run above the untrained encoder: both say so, with the reason
    assert set(v.reasons) == {"knn", "linear"}
    assert "pcl within noise of the untrained encoder" in v.reasons["knn"]
    assert "moco worse than the untrained encoder" in v.reasons["linear"]
    assert "kNN top-1 (%) — not a ranking" in md
    fine = [_row("moco", [50.0, 51.0, 52.0]), _row("pcl", [60.0, 61.0, 62.0]), untrained]
    md, v = _summary(fine)
    assert v.worse == set() and not v.reasons and "▼" not in md and "not a ranking" not in md
    # one seed against the untrained row: the normal interval of both evaluations' standard errors
    md, v = _summary([_row("pcl", [30.0]), untrained])
    assert v.worse == {("pcl", "knn"), ("pcl", "linear")}


def test_reference_key_of_a_suite_file_is_validated_and_chooses_the_reference_run(tmp_path: Path) -> None:
    runs = '\n[[runs]]\nname = "moco"\n[[runs]]\nname = "pcl"\n'
    path = write_suite(tmp_path / "a.toml", runs)
    path.write_text('reference = "pcl"\n' + path.read_text())  # a top-level key: before [base]
    assert load_suite(str(path)).reference == "pcl"
    assert write_suite(tmp_path / "c.toml", runs) and load_suite(str(tmp_path / "c.toml")).reference is None
    path.write_text(path.read_text().replace('"pcl"', '"pcll"', 1))
    with pytest.raises(PCLError, match=r'reference = "pcll" must name one of the runs.*pcl'):
        load_suite(str(path))
    rows = [_row("moco", [50.0, 52.0, 51.0]), _row("pcl", [51.0, 54.0, 55.0])]
    md, v = _summary(rows, {"reference": "pcl"})
    assert v.reference == "pcl" and "## Paired differences against `pcl`" in md and "| moco | 3 | -2.33" in md


def test_seed_figures_written_to_csv_give_the_same_verdicts(tmp_path: Path) -> None:
    from summary import _seeds_csv, summary_columns

    rows = [_row("moco", [50.0, 51.0, 52.0], [30.0, 31.0, 30.5]), _row(UNTRAINED_ROW, [40.0], note="r")]
    columns = [c for c in summary_columns({}) if c.key in ("knn", "linear")]
    (tmp_path / "s.csv").write_bytes(_seeds_csv(rows, columns))
    figs = read_seeds_csv(tmp_path / "s.csv")
    keys = ("knn", "linear", "knn_se", "linear_se")
    assert {r: {s: {k: v[k] for k in keys} for s, v in d.items()} for r, d in figs.items()} == figures_of(rows)
    with open(tmp_path / "s.csv") as f:
        assert next(csv.DictReader(f))["knn_top1"] == "50.0"


def test_the_readme_verdict_is_the_one_the_committed_tables_give_and_a_stale_figure_fails(tmp_path: Path) -> None:
    import verdicts

    assert verdicts.check() == []  # README.md's generated block agrees with experiments/results/*/results*.csv
    readme = (verdicts.ROOT / "README.md").read_text()
    q = verdicts.QUESTIONS[0]
    fresh = verdicts.block(q)
    first = next(ln for ln in fresh.splitlines() if ln.startswith(f"| {q.reference} |"))
    figure = first.split(" | ")[2].split(" ")[0]  # the reference run's kNN mean, e.g. 38.97
    stale = tmp_path / "README.md"
    stale.write_text(readme.replace(first, first.replace(figure, f"{float(figure) + 1:.2f}", 1)))
    problems = verdicts.check((stale,))
    assert len(problems) == 1 and "disagrees with experiments/results/baseline" in problems[0]
    headline = readme.replace("**Does PCL beat MoCo v2", "**Does PCL clearly beat MoCo v2")  # a hand-edited answer
    stale.write_text(headline)
    assert len(verdicts.check((stale,))) == 1
    assert verdicts.check((stale,), write=True) == [] and verdicts.check((stale,)) == []  # --write repairs it
    stale.write_text("no block here")
    assert "no <!-- verdicts:baseline --> block" in verdicts.check((stale,))[0]
