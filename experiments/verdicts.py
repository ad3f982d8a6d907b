"""The README's answers to research questions, generated from the committed tables (never typed by hand).

Each :data:`QUESTIONS` entry names a results folder (``experiments/results/NAME/``), the run that asks and the
run it is compared with, and the question. The block between ``<!-- verdicts:NAME -->`` and
``<!-- /verdicts:NAME -->`` in README.md is generated from that folder's ``results.csv`` (the table: mean ± std
over seeds) and ``results_seeds.csv`` (the verdicts: paired differences by seed with a 95 % Student t interval,
``experiments/paired.py``), so every figure in it is a figure of the committed CSV::

    python experiments/verdicts.py           # check: exit 1 and one error line per block that disagrees
    python experiments/verdicts.py --write   # rewrite the blocks from the committed tables

``tests/integration/test_suite_verdicts.py`` runs the check on the repository and on a planted stale figure.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from paired import UNTRAINED_ROW, Comparison, against_untrained, paired, read_seeds_csv

from pcl.analysis.intervals import BETTER, NO_VERDICT, WORSE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DOCS = (ROOT / "README.md", ROOT / "docs" / "experiments.md")
# (CSV key, header) of the table's columns, in order; a column without figures in results.csv is left out
COLUMNS = (
    ("knn", "kNN top-1"),
    ("linear", "linear top-1"),
    ("lowshot_k1", "low-shot SVM k=1"),
    ("lowshot_k16", "low-shot SVM k=16"),
    ("finetune_1", "fine-tune 1 %"),
    ("finetune_10", "fine-tune 10 %"),
    ("cluster_acc", "k-means ACC (k = classes)"),
)
SEED_NAMES = {"knn": "knn", "linear": "linear"}  # results_seeds.csv's first layout named them knn_top1, linear_top1


@dataclass(frozen=True)
class Question:
    """A research question answered by one results folder: ``run`` against ``reference``."""

    name: str
    run: str
    reference: str
    question: str


QUESTIONS = (Question("baseline", "pcl", "moco-v2", "Does PCL beat MoCo v2 on the bundled data?"),)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of a committed ``results.csv``."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cell(row: dict[str, str], key: str) -> str:
    mean, std = _float(row.get(f"{key}_mean")), _float(row.get(f"{key}_std"))
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _answer(cells: list[Comparison]) -> str:
    """The headline of a question from its column verdicts."""
    words = [c.verdict for c in cells if c.iv is not None]
    if not words or all(w == NO_VERDICT for w in words):
        return "No verdict (one seed)."
    if all(w == BETTER for w in words):
        return "Yes, on every figure."
    if BETTER in words and WORSE not in words:
        return "Yes on some figures, within noise on the others."
    if WORSE in words and BETTER not in words:
        return "No: it is worse on some figures and within noise on the others." if len(set(words)) > 1 else "No."
    if WORSE in words:
        return "Mixed: better on some figures, worse on others."
    return "Not measurably: every difference is within noise."


def block(q: Question, results: Path = RESULTS) -> str:
    """The generated Markdown of question ``q`` from ``results/NAME/results.csv`` and ``results_seeds.csv``."""
    folder = results / q.name
    rows = read_table(folder / "results.csv")
    figs = read_seeds_csv(folder / "results_seeds.csv")
    shown = [(k, h) for k, h in COLUMNS if any(_float(r.get(f"{k}_mean")) is not None for r in rows)]
    done = {r["run"]: r.get("seeds_done", "") for r in rows}
    out = [
        f"| encoder | seeds | {' | '.join(h for _, h in shown)} |",
        "|" + " --- |" * (len(shown) + 2),
    ]
    out += [f"| {r['run']} | {done[r['run']]} | {' | '.join(_cell(r, k) for k, _ in shown)} |" for r in rows]
    cells = [paired(figs, q.run, q.reference, SEED_NAMES.get(k, k)) for k, _ in shown]
    cells = [c for c in cells if c.iv is not None]
    out += ["", f"**{q.question} {_answer(cells)}** {q.run} − {q.reference}, paired by seed (95 % interval, "
            f"{cells[0].iv.method if cells else 'no pairs'}, n = {cells[0].iv.n if cells else 0}):"]  # fmt: skip
    headers = dict(shown)
    out += [f"- {headers[c.key]}: {c.text()}" for c in cells]
    if UNTRAINED_ROW in figs:
        trained = [r["run"] for r in rows if r["run"] != UNTRAINED_ROW]
        for k, h in shown:
            vs = [against_untrained(figs, r, UNTRAINED_ROW, SEED_NAMES.get(k, k)) for r in trained]
            not_above = [c for c in vs if c.iv is not None and c.verdict != BETTER]
            if not_above:
                why = "; ".join(f"{c.run} {c.text()}" for c in not_above)
                out.append(f"- {h}: **not a ranking** (not better than the untrained encoder: {why})")
    return "\n".join(out)


def _markers(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- verdicts:{re.escape(name)} -->)\n(.*?)\n?(<!-- /verdicts:{re.escape(name)} -->)", re.S)


def check(docs: tuple[Path, ...] = DOCS, results: Path = RESULTS, write: bool = False) -> list[str]:
    """One message per generated block of ``docs`` that disagrees with the committed tables (``write``: rewrite
    it instead); a question without any block is a message too."""
    problems = []
    for q in QUESTIONS:
        fresh, found = block(q, results), False
        for doc in docs:
            text = doc.read_text()
            pattern = _markers(q.name)
            if not pattern.search(text):
                continue
            found = True
            m = pattern.search(text)
            if m is not None and m.group(2) != fresh:
                if write:
                    doc.write_text(text[: m.start()] + f"{m.group(1)}\n{fresh}\n{m.group(3)}" + text[m.end() :])
                else:
                    problems.append(f"{doc.name}: the '{q.name}' verdict disagrees with experiments/results/"
                                    f"{q.name}/results*.csv (a stale figure?); run python experiments/verdicts.py "
                                    "--write")  # fmt: skip
        if not found:
            problems.append(f"no <!-- verdicts:{q.name} --> block in {', '.join(d.name for d in docs)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="rewrite the generated blocks from the committed tables")
    args = p.parse_args(argv)
    problems = check(write=args.write)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
