"""What recomputing BatchNorm statistics does to a finished suite's encoders (``tools/evaluate.py --recalibrate-bn``).

    python experiments/bn_effect.py SUITE_DIR --out experiments/results/baseline/bn_recalibration.md

For every finished run of ``SUITE_DIR`` (``RUN/seedS`` with an ``eval.json``), the encoder is evaluated again with
its BatchNorm running statistics recomputed on the eval view of the train images (forward passes only: no labels,
no gradient) into ``RUN/seedS/eval_recalibrated_bn.json``, and the suite's untrained reference (recalibrated by
default, ``SUITE_DIR/untrained/eval.json``) is evaluated with its initial statistics into
``SUITE_DIR/untrained/eval_init_bn.json``; files already there are reused. The table gives, per run and column,
the figure before and after and the paired difference over seeds (after - before, same seed) with its 95 %
interval and verdict (``pcl.analysis.intervals``); the untrained row's "before" is the init-statistics figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from launch import child_env
from summary import UNTRAINED, eval_columns

from pcl.analysis.intervals import Interval, paired_interval, verdict
from pcl.eval.registry import SummaryColumn
from pcl.run.run_dir import RunDir
from pcl.utils.atomic import write_bytes_atomic
from pcl.utils.cli import ErrorParser, report_error
from pcl.utils.errors import PCLError

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "evaluate.py"
AFTER = "eval_recalibrated_bn.json"  # a trained run's figures with recomputed statistics
INIT = "eval_init_bn.json"  # the untrained reference's figures with its initial statistics
PROTOCOLS = "knn,linear,lowshot,kmeans"  # the frozen-feature protocols (fine-tuning trains BN itself)
UNTRAINED_ROW = "untrained encoder (init statistics → recomputed)"

Figures = dict[str, dict[int, Mapping[str, object]]]  # run -> seed -> eval.json


class Pair(NamedTuple):
    """The ``eval.json`` of one encoder before and after its statistics are recomputed."""

    run: str
    seed: int
    before: Path
    after: Path


def runs_of(suite_dir: Path) -> list[Pair]:
    """Every finished, evaluated run of ``suite_dir`` (sorted by run then seed), then the untrained reference."""
    pairs = []
    for seed_dir in sorted(suite_dir.glob("*/seed*")):
        rd = RunDir(seed_dir)
        if seed_dir.parent.name == UNTRAINED or not rd.eval.is_file() or not seed_dir.name[4:].isdigit():
            continue
        pairs.append(Pair(seed_dir.parent.name, int(seed_dir.name[4:]), rd.eval, seed_dir / AFTER))
    untrained = suite_dir / UNTRAINED / "eval.json"
    if untrained.is_file():
        pairs.append(Pair(UNTRAINED_ROW, 0, untrained.parent / INIT, untrained))
    return pairs


def evaluate_missing(pairs: list[Pair], protocols: str, call: Callable[[list[str]], int] = subprocess.call) -> None:
    """Run ``tools/evaluate.py`` for every file of ``pairs`` that is not there yet (one call each)."""
    first_run = next((p.before.parent for p in pairs if p.run != UNTRAINED_ROW), None)
    for p in pairs:
        if p.run == UNTRAINED_ROW:
            if p.before.is_file() or first_run is None:
                continue
            target = p.before
            cmd = [str(first_run), "--encoder", "untrained", "--untrained-bn", "init", "--out", str(target)]
        else:
            if p.after.is_file():
                continue
            target = p.after
            cmd = [str(p.before.parent), "--recalibrate-bn", "--reference", "none", "--out", str(target)]
        print(f"{p.run} seed{p.seed}: evaluating -> {target}", flush=True)
        rc = call([sys.executable, str(TOOL), *cmd, "--protocols", protocols])
        if rc != 0 or not target.is_file():
            raise PCLError(f"tools/evaluate.py failed for {p.run} seed{p.seed} (exit {rc}); its output is above")


def _load(pairs: Iterable[Pair]) -> tuple[Figures, Figures]:
    before: Figures = {}
    after: Figures = {}
    for p in pairs:
        if p.before.is_file() and p.after.is_file():
            before.setdefault(p.run, {})[p.seed] = json.loads(p.before.read_text())
            after.setdefault(p.run, {})[p.seed] = json.loads(p.after.read_text())
    return before, after


def effect(before: Figures, after: Figures, column: SummaryColumn, run: str) -> tuple[float, float, Interval] | None:
    """Mean before, mean after and the paired interval of (after - before) of ``run`` on ``column`` (None: no
    seed has both figures)."""
    a, b = [], []
    for seed, ev in before.get(run, {}).items():
        x, y = column.read(ev), column.read(after[run][seed])
        if x is not None and y is not None:
            b.append(x)
            a.append(y)
    if not a:
        return None
    return sum(b) / len(b), sum(a) / len(a), paired_interval([y - x for x, y in zip(b, a, strict=True)])


def table(before: Figures, after: Figures) -> tuple[str, list[list[object]]]:
    """The Markdown table (a row per run, a cell per column with figures) and the CSV rows of every cell."""
    runs = list(before)
    effects = {(c.key, r): effect(before, after, c, r) for c in eval_columns() for r in runs}
    columns = [c for c in eval_columns() if any(effects[c.key, r] for r in runs)]
    head = ["run", "seeds", *(c.header for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    rows: list[list[object]] = []
    for run in runs:
        cells = [run, str(len(before[run]))]
        for c in columns:
            e = effects[c.key, run]
            if e is None:
                cells.append("–")
                continue
            b, a, iv = e
            word = verdict(iv, c.higher_is_better) if iv.defined else "n = 1: no verdict"
            cells.append(f"{b:.{c.digits}f} → {a:.{c.digits}f} ({iv.text(c.digits)} {word})")
            rows.append([run, c.key, iv.n, b, a, iv.mean, iv.lo, iv.hi, iv.method, word])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def markdown(suite_dir: Path, protocols: str, md_table: str) -> str:
    return (
        f"# BatchNorm statistics recomputed: the effect on `{suite_dir.name}`'s encoders\n\n"
        f"Command: `python experiments/bn_effect.py {suite_dir} --protocols {protocols}`. Each cell: the figure "
        "as trained → with the BatchNorm statistics recomputed on the eval view of the train images, then the "
        "paired difference over seeds (after - before) with its 95 % interval and verdict. The untrained row: "
        "the same random network with its initial statistics → recomputed (the suite's reference row).\n\n"
        f"{md_table}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = ErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite_dir", type=Path, help="a suite's folder: RUN/seedS/eval.json and untrained/")
    p.add_argument("--protocols", default=PROTOCOLS, help=f"protocols measured (default {PROTOCOLS})")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown here and the CSV beside it")
    args = p.parse_args(argv)
    try:
        if not args.suite_dir.is_dir():
            raise PCLError(f"{args.suite_dir} is not a folder (a suite's folder: RUN/seedS/eval.json)")
        pairs = runs_of(args.suite_dir)
        if not pairs:
            raise PCLError(f"{args.suite_dir}: no evaluated run (RUN/seedS/eval.json): run the suite with --eval")
        evaluate_missing(pairs, args.protocols, lambda cmd: subprocess.call(cmd, env=child_env()))
        md_table, rows = table(*_load(pairs))
        text = markdown(args.suite_dir, args.protocols, md_table)
        print(text)
        if args.out is not None:
            try:
                args.out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PCLError(f"cannot create the folder of --out {args.out}: {e.strerror or e}") from None
            write_bytes_atomic(args.out, text.encode(), "the BatchNorm table")
            head = "run,column,n,before,after,diff,lo,hi,method,verdict\n"
            body = "".join(",".join("" if v is None else str(v) for v in r) + "\n" for r in rows)
            write_bytes_atomic(args.out.with_suffix(".csv"), (head + body).encode(), "the BatchNorm CSV")
    except PCLError as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
