"""Experiments, read side: paired comparisons of a suite's runs, with intervals and the verdicts a table shows.

Every run is set against the **reference run** (the suite's first run, or ``reference = "NAME"`` in the suite file)
on every column: the paired difference over seeds (run - reference, same seed), with a 95 % interval (Student t on
the differences below 10 pairs, a seeded bootstrap from there on: ``pcl.analysis.intervals``) and a word, *better*
/ *worse* / *within noise*; one pair draws no verdict. Every trained run is also set against the **untrained
reference** (the untrained encoder's row, one seed: a constant): over seeds the same t interval on (run - untrained),
and for a run with one seed the normal interval of the two evaluations' standard errors (``SummaryColumn.se``). A
column in which some trained run is not *better* than the untrained encoder is **not a ranking** (the reason names
the runs), and every cell *worse* than the untrained encoder is marked.

The figures come as ``{run: {seed: {column key: value, "KEY_se": its standard error}}}`` (:data:`Figures`), from
the summary's rows or from a committed ``results_seeds.csv`` (:func:`read_seeds_csv`), so that the verdicts of a
committed table can be recomputed from it alone (``experiments/verdicts.py``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pcl.analysis.intervals import BETTER, NO_VERDICT, WORSE, Interval, paired_interval, single_interval, verdict

Figures = dict[str, dict[int, dict[str, float]]]  # run -> seed -> column key (and KEY_se) -> value
UNTRAINED_ROW = "untrained encoder"
OLD_NAMES = {"knn_top1": "knn", "linear_top1": "linear"}  # results_seeds.csv's names of the first columns


@dataclass(frozen=True)
class Comparison:
    """One cell: ``run`` against ``reference`` on column ``key``; ``iv`` None when they share no figure."""

    run: str
    reference: str
    key: str
    iv: Interval | None
    verdict: str

    def text(self, digits: int = 2) -> str:
        """``-1.77 [-4.10, +0.56] within noise`` (``+0.40 (n = 1: no verdict)``; ``–`` without figures)."""
        if self.iv is None:
            return "–"
        if not self.iv.defined:
            return f"{self.iv.text(digits)} (n = 1: no verdict)"
        return f"{self.iv.text(digits)} {self.verdict}"


def _values(figs: Figures, run: str, key: str) -> dict[int, float]:
    return {s: v[key] for s, v in figs.get(run, {}).items() if v.get(key) is not None}


def paired(figs: Figures, run: str, reference: str, key: str, higher: bool | None = True) -> Comparison:
    """``run`` - ``reference`` on ``key``, paired by seed (the seeds both have)."""
    a, b = _values(figs, run, key), _values(figs, reference, key)
    common = sorted(a.keys() & b.keys())
    if not common:
        return Comparison(run, reference, key, None, NO_VERDICT)
    iv = paired_interval([a[s] - b[s] for s in common])
    return Comparison(run, reference, key, iv, verdict(iv, higher))


def against_untrained(figs: Figures, run: str, untrained: str, key: str, higher: bool | None = True) -> Comparison:
    """``run`` - the untrained reference on ``key``: paired by seed when the reference has several seeds, else
    against its one value (t over the run's seeds; one seed: the normal interval of both standard errors)."""
    ref = _values(figs, untrained, key)
    if len(ref) != 1:
        return paired(figs, run, untrained, key, higher)
    ((ref_seed, b),) = ref.items()
    a = _values(figs, run, key)
    if not a:
        return Comparison(run, untrained, key, None, NO_VERDICT)
    if len(a) >= 2:
        iv = paired_interval([v - b for v in a.values()])
    else:
        ((seed, value),) = a.items()
        se_a, se_b = figs[run][seed].get(f"{key}_se"), figs[untrained][ref_seed].get(f"{key}_se")
        known = se_a is not None and se_b is not None
        iv = single_interval(value, se_a, b, se_b) if known else paired_interval([value - b])
    return Comparison(run, untrained, key, iv, verdict(iv, higher))


def compare_all(figs: Figures, runs: list[str], reference: str, untrained: str | None,
                columns: Iterable[tuple[str, bool | None]]) -> list[Comparison]:  # fmt: skip
    """Every run but the reference against it, and every trained run against the untrained reference, on every
    ``(column key, higher is better)``."""
    columns = list(columns)
    out = [paired(figs, r, reference, k, h) for r in runs if r != reference for k, h in columns]
    if untrained is not None:
        out += [against_untrained(figs, r, untrained, k, h) for r in runs for k, h in columns]
    return out


def not_a_ranking(comparisons: list[Comparison], key: str, untrained: str) -> str | None:
    """Why column ``key`` does not rank the trained runs above the untrained one (None: it does, or there is no
    untrained figure to tell)."""
    cells = [c for c in comparisons if c.reference == untrained and c.key == key and c.iv is not None]
    if not cells:
        return None
    not_above = [c for c in cells if c.verdict != BETTER]
    if not not_above:
        return None
    words = {WORSE: "worse than", NO_VERDICT: "no verdict against"}
    parts = [f"{c.run} {words.get(c.verdict, c.verdict + ' of')} the untrained encoder ({c.iv.text()})"
             for c in not_above if c.iv is not None]  # fmt: skip
    return "not a ranking: " + "; ".join(parts)


def worse_than_untrained(comparisons: list[Comparison], untrained: str) -> set[tuple[str, str]]:
    """``(run, column key)`` of every cell worse than the untrained reference."""
    return {(c.run, c.key) for c in comparisons if c.reference == untrained and c.verdict == WORSE}


def read_seeds_csv(path: Path) -> Figures:
    """The figures of a committed ``results_seeds.csv`` (finished seeds only; older files' ``knn_top1`` /
    ``linear_top1`` read as ``knn`` / ``linear``)."""
    figs: Figures = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("status") != "done":
                continue
            values = {}
            for name, text in row.items():
                if name in ("run", "seed", "status", "error") or text in ("", None):
                    continue
                try:
                    values[OLD_NAMES.get(name, name)] = float(text)
                except ValueError:
                    continue
            figs.setdefault(row["run"], {})[int(row["seed"])] = values
    return figs


def paired_csv_rows(comparisons: list[Comparison]) -> list[list[object]]:
    """Rows of ``results_paired.csv``: run, reference, column, n, mean, lo, hi, method, verdict."""
    return [[c.run, c.reference, c.key, c.iv.n if c.iv else 0, c.iv.mean if c.iv else None,
             c.iv.lo if c.iv else None, c.iv.hi if c.iv else None, c.iv.method if c.iv else "", c.verdict]
            for c in comparisons]  # fmt: skip


PAIRED_HEADER = ["run", "reference", "column", "n", "mean", "lo", "hi", "method", "verdict"]


def section(title: str, comparisons: list[Comparison], runs: list[str], reference: str,
            columns: list[tuple[str, str, int]], reasons: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """A Markdown section: a table of ``runs`` x ``columns`` (``(key, header, digits)``) of the comparisons
    against ``reference`` (cells worse than it in bold), then the columns' ``reasons`` (not a ranking)."""
    cells = {(c.run, c.key): c for c in comparisons if c.reference == reference}
    shown = [col for col in columns if any((r, col[0]) in cells and cells[r, col[0]].iv for r in runs)]
    rows = [r for r in runs if any((r, col[0]) in cells and cells[r, col[0]].iv for col in shown)]
    if not rows:
        return []
    head = ["run", "seeds paired", *(h for _, h, _ in shown)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        n = max((cells[r, k].iv.n for k, _, _ in shown if (r, k) in cells and cells[r, k].iv), default=0)
        row = [r, str(n)]
        for k, _, digits in shown:
            c = cells.get((r, k))
            text = c.text(digits) if c is not None else "–"
            row.append(f"**{text}**" if c is not None and c.verdict == WORSE else text)
        lines.append("| " + " | ".join(row) + " |")
    out = [f"## {title}", "", *lines, ""]
    for k, h, _ in shown:
        if reasons and reasons.get(k):
            out.append(f"- {h}: **{reasons[k]}**")
    return out + ([""] if reasons and any(reasons.get(k) for k, _, _ in shown) else [])
