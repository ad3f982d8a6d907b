"""Experiments, read side: a suite's results table (Markdown + CSV) and curve plots.

Reads only files the runs wrote: ``suite.json`` (written by the runner), and per ``RUN/seedS/``
``metrics.json`` (engine), ``status.json`` (runner) and ``eval.json`` (``tools/evaluate.py``, optional).
Never parses printed output. The evaluation columns (kNN, linear, AMI, low-shot, fine-tune, clustering ACC, and any
newly registered protocol's) come from the protocol registry (``pcl/eval/protocols/``): header, CSV key, how to
read the figure from ``eval.json``; kNN and AMI fall back on the training record when ``eval.json`` has none.
The runs of a ``[[sweeps]]`` entry also get a section of their own: a table by swept value and a plot of one
metric (default the final kNN top-1) against the first swept flag.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from paired import (
    PAIRED_HEADER,
    UNTRAINED_ROW,
    Comparison,
    Figures,
    compare_all,
    not_a_ranking,
    paired_csv_rows,
    section,
    worse_than_untrained,
)
from suite import flags_to_argv

from pcl.eval.protocols import PROTOCOLS
from pcl.eval.registry import SummaryColumn
from pcl.run.curves import plot_curves, save_figure
from pcl.run.exp_dir import usable_dir
from pcl.run.metrics import read_run_record
from pcl.run.run_dir import RunDir
from pcl.utils.atomic import write_bytes_atomic
from pcl.utils.errors import PCLError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PLOTS = {"knn_top1": "eval/knn_top1", "acc_inst": "epoch/acc_inst", "acc_proto": "epoch/acc_proto"}
METRICS = {  # --metric: its cells (mean, std) and label
    "knn": ("knn_mean", "knn_std", "kNN top-1 (%)"),
    "linear": ("linear_mean", "linear_std", "linear top-1 (%)"),
    "ami": ("ami_mean", "ami_std", "AMI"),
    "acc_proto_final": ("acc_proto_final", None, "acc_proto final (%)"),
    "acc_proto_best": ("acc_proto_best", None, "acc_proto best (%)"),
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) > 1 else None


@dataclass
class SeedResult:
    """Final figures of one (run, seed); ``figures``: the evaluation columns' values, by column key."""

    seed: int
    status: str  # done | stopped | failed | running/not started
    error: str = ""
    epochs_done: int = 0
    figures: dict[str, float | None] = field(default_factory=dict)  # eval_columns()' figures (eval.json, training)
    se: dict[str, float | None] = field(default_factory=dict)  # their standard errors within one evaluation
    acc_proto: float | None = None
    best_acc_proto: float | None = None
    skipped: int = 0
    sec_per_epoch: float | None = None
    peak_rss_mib: float | None = None
    cuda_peak_mib: float | None = None
    lowshot: dict[int, float] = field(default_factory=dict)  # low-shot top-1 (%) by k images per class


def eval_columns() -> list[SummaryColumn]:
    """The evaluation protocols' columns, in registry order (``pcl.eval.protocols``)."""
    return [column for protocol in PROTOCOLS.values() for column in protocol.columns]


def training_columns(names: list[str]) -> list[SummaryColumn]:
    """Columns of training scalars a suite file asks for (``columns = ["epoch/loss_uniform"]``): the value in the
    last epoch's record of ``metrics.json`` (``read`` gets that record). Which way is better is not known for an
    arbitrary scalar (a loss, a collapse verdict), so their differences read *higher* / *lower*, never *better*."""
    return [SummaryColumn(name.replace("/", "_"), f"{name} (last epoch)", lambda last, n=name: last.get(n), 3,
                          higher_is_better=None) for name in names]  # fmt: skip


def summary_columns(info: dict) -> list[SummaryColumn]:
    """The evaluation protocols' columns, then the training scalars the suite names (``suite.json`` ``columns``)."""
    return eval_columns() + training_columns(list(info.get("columns") or []))


def _eval_figures(evaluation: dict) -> dict[str, float | None]:
    """Every evaluation column's figure of one run's ``eval.json``."""
    return {c.key: c.read(evaluation) for c in eval_columns()}


def _eval_se(evaluation: dict) -> dict[str, float | None]:
    """The standard error of every evaluation column's figure of one ``eval.json`` (None: unknown)."""
    return {c.key: c.se(evaluation) if c.se is not None and evaluation else None for c in eval_columns()}


def _training_figures(metrics: dict) -> dict[str, float | None]:
    """Figures the training record gives for columns that ``eval.json`` lacks: the last kNN monitor (``knn``) and
    the mean AMI of the last epoch's ``cluster/k*/ami`` scalars (``ami``)."""
    last = metrics["epochs"][-1] if metrics.get("epochs") else {}
    amis = [v for k, v in last.items() if k.startswith("cluster/") and k.endswith("/ami") and v is not None]
    return {"knn": metrics.get("final", {}).get("knn_top1"), "ami": _mean(amis)}


@dataclass
class RunRow:
    name: str
    flags: dict
    planned: int
    seeds: list[SeedResult] = field(default_factory=list)
    sweep: str | None = None  # the [[sweeps]] entry of this run
    swept: dict = field(default_factory=dict)  # its swept flag values
    note: str = ""  # shown instead of the flags (the untrained reference row)

    def done(self) -> list[SeedResult]:
        return [s for s in self.seeds if s.status == "done"]

    def values(self, attr: str) -> list[float]:
        return [getattr(s, attr) for s in self.done() if getattr(s, attr) is not None]

    def figures(self, key: str) -> list[float]:
        """The finished seeds' figures of evaluation column ``key``."""
        return [s.figures[key] for s in self.done() if s.figures.get(key) is not None]


def _lowshot_top1(evaluation: dict) -> dict[int, float]:
    """``{k: top-1 %}`` of the ``lowshot`` block of ``eval.json``."""
    block = evaluation.get("lowshot") or {}
    return {int(k): v["top1"] for k, v in block.items() if isinstance(v, dict) and v.get("top1") is not None}


UNTRAINED = "untrained"  # SUITE/untrained/eval.json (experiments/run.py --eval)


def untrained_row(suite_dir: Path) -> RunRow | None:
    """The untrained encoder's figures as a one-seed reference row, when ``--eval`` has measured them."""
    evaluation = _read_json(suite_dir / UNTRAINED / "eval.json")
    if not evaluation:
        return None
    settings = evaluation.get("settings") or {}
    seed = SeedResult(
        seed=int(settings.get("seed", (settings.get("linear") or {}).get("seed", 0))),
        status="done",
        figures=_eval_figures(evaluation),
        se=_eval_se(evaluation),
        lowshot=_lowshot_top1(evaluation),
    )
    init = str(settings.get("bn", "")).startswith("BatchNorm statistics at init")
    how = "BatchNorm at init" if init else "BatchNorm recalibrated on the train images"
    note = f"reference: `tools/evaluate.py RUN --encoder untrained` ({how})"
    return RunRow(UNTRAINED_ROW, {}, 1, [seed], note=note)


def read_seed(exp_dir: Path, seed: int, extra: list[SummaryColumn] = ()) -> SeedResult:
    rd = RunDir(exp_dir)
    metrics = read_run_record(rd.metrics) if rd.metrics.is_file() else {}
    status, evaluation = _read_json(rd.status), _read_json(rd.eval)
    state = status.get("status") or ("running or interrupted" if metrics else "not started")
    if state == "done" and not metrics.get("complete"):
        state = "stopped"
    final = metrics.get("final", {})
    figures = _eval_figures(evaluation)
    for key, value in _training_figures(metrics).items():
        if figures.get(key) is None:
            figures[key] = value
    last = metrics["epochs"][-1] if metrics.get("epochs") else {}
    figures.update({c.key: c.read(last) for c in extra})
    return SeedResult(
        seed=seed,
        status=state,
        error=status.get("error", ""),
        epochs_done=len(metrics.get("epochs", [])),
        figures=figures,
        se=_eval_se(evaluation),
        acc_proto=final.get("acc_proto"),
        best_acc_proto=final.get("best_acc_proto"),
        skipped=int(final.get("skipped_steps") or 0),
        sec_per_epoch=final.get("seconds_per_epoch"),
        peak_rss_mib=final.get("peak_rss_mib"),
        cuda_peak_mib=final.get("cuda_max_allocated_mib"),
        lowshot=_lowshot_top1(evaluation),
    )


def _suite_record(suite_dir: Path) -> dict:
    """``suite_dir/suite.json``; a one-line ``PCLError`` for a path that is no suite folder (missing, a file,
    one run's folder) or a record that is not the runner's."""
    if suite_dir.exists() and not suite_dir.is_dir():
        raise PCLError(f"{suite_dir} is a file, not a suite folder (OUT/SUITE, written by experiments/run.py)")
    info = _read_json(suite_dir / "suite.json")
    if not info:
        if RunDir(suite_dir).metrics.is_file() or RunDir(suite_dir).checkpoints.is_dir():
            suite = suite_dir.parent.parent if suite_dir.name.startswith("seed") else suite_dir.parent
            raise PCLError(f"{suite_dir} is one run's folder, not a suite folder: give OUT/SUITE, e.g. {suite}")
        raise PCLError(f"{suite_dir} has no suite.json; run the suite with experiments/run.py first")
    runs, seeds = info.get("runs"), info.get("seeds")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "name" in r for r in runs) or not (
        isinstance(seeds, int) and seeds > 0
    ):
        raise PCLError(f"{suite_dir / 'suite.json'} is not a suite record of experiments/run.py (runs, seeds)")
    return info


def collect(suite_dir: Path) -> tuple[dict, list[RunRow]]:
    """The runner's ``suite.json`` and one row per run, in suite order."""
    info = _suite_record(suite_dir)
    extra, rows = list(info.get("columns") or []), []
    for run in info["runs"]:
        row = RunRow(run["name"], run.get("flags") or {}, info["seeds"], sweep=run.get("sweep"),
                     swept=run.get("swept") or {})  # fmt: skip
        for seed in range(info["seeds"]):
            row.seeds.append(read_seed(suite_dir / run["name"] / f"seed{seed}", seed, training_columns(extra)))
        rows.append(row)
    reference = untrained_row(suite_dir)
    return info, rows + ([reference] if reference is not None else [])


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _row_cells(row: RunRow, ref_sec: float | None, columns: list[SummaryColumn]) -> dict[str, object]:
    v = row.values
    sec = _median(v("sec_per_epoch"))  # one seed run on a loaded machine must not skew it
    rss = v("peak_rss_mib")
    cuda = v("cuda_peak_mib")
    failed = [s for s in row.seeds if s.status == "failed"]
    return {
        "run": row.name,
        "seeds_done": len(row.done()),
        "seeds_planned": row.planned,
        **{
            f"{c.key}_{stat}": f(row.figures(c.key))
            for c in columns
            for stat, f in (("mean", _mean), ("std", _std))
        },
        "acc_proto_final": _mean(v("acc_proto")),
        "acc_proto_best": _mean(v("best_acc_proto")),
        "skipped_steps": sum(s.skipped for s in row.done()),
        "sec_per_epoch": sec,
        "sec_per_epoch_rel": sec / ref_sec if sec is not None and ref_sec else None,
        "peak_rss_mib": max(rss) if rss else None,
        "cuda_peak_mib": max(cuda) if cuda else None,
        "flags": " ".join(flags_to_argv(row.flags)),
        "note": row.note,
        "failed": "; ".join(f"seed{s.seed}: {s.error}" for s in failed),
    }


def table(rows: list[RunRow], columns: list[SummaryColumn] | None = None) -> list[dict[str, object]]:
    """Per-run cells (``columns``: default the evaluation columns); seconds per epoch relative to the first row
    that has a figure."""
    secs = [_median(r.values("sec_per_epoch")) for r in rows]
    ref = next((s for s in secs if s), None)
    return [_row_cells(r, ref, eval_columns() if columns is None else columns) for r in rows]


@dataclass
class Verdicts:
    """The paired comparisons of a suite (``experiments/paired.py``): the reference run, the untrained row's name
    (None: no untrained reference), the trained runs, every comparison, the columns that are not a ranking (key ->
    reason) and the cells worse than the untrained reference."""

    reference: str
    untrained: str | None
    runs: list[str]
    comparisons: list[Comparison]
    reasons: dict[str, str] = field(default_factory=dict)
    worse: set[tuple[str, str]] = field(default_factory=set)


def figures_of(rows: list[RunRow]) -> Figures:
    """The finished seeds' figures (and standard errors, ``KEY_se``) of every row, for ``paired.py``."""
    out: Figures = {}
    for r in rows:
        for s in r.done():
            values = {k: v for k, v in s.figures.items() if v is not None}
            values.update({f"{k}_se": v for k, v in s.se.items() if v is not None})
            out.setdefault(r.name, {})[s.seed] = values
    return out


def verdicts(info: dict, rows: list[RunRow], columns: list[SummaryColumn]) -> Verdicts | None:
    """Every run against the reference run (``reference`` of the suite file, else the first run) and every trained
    run against the untrained reference, on ``columns``; None when there is no trained run."""
    trained = [r.name for r in rows if not r.note]
    if not trained:
        return None
    reference = info.get("reference") if info.get("reference") in trained else trained[0]
    untrained = UNTRAINED_ROW if any(r.name == UNTRAINED_ROW for r in rows) else None
    comparisons = compare_all(figures_of(rows), trained, reference, untrained,
                              [(c.key, c.higher_is_better) for c in columns])  # fmt: skip
    v = Verdicts(reference, untrained, trained, comparisons)
    if untrained is not None:
        v.reasons = {c.key: why for c in columns if (why := not_a_ranking(comparisons, c.key, untrained))}
        v.worse = worse_than_untrained(comparisons, untrained)
    return v


WORSE_MARK = " ▼"


def _verdict_sections(v: Verdicts, shown: list[SummaryColumn]) -> list[str]:
    """The two sections of paired differences under the results table."""
    columns = [(c.key, c.header, c.digits) for c in shown]
    others = [r for r in v.runs if r != v.reference]
    out = section(f"Paired differences against `{v.reference}` (run − reference, same seed, 95 % interval)",
                  v.comparisons, others, v.reference, columns)  # fmt: skip
    if v.untrained is not None:
        out += section("Against the untrained reference (run − untrained encoder, 95 % interval)", v.comparisons,
                       v.runs, v.untrained, columns, v.reasons)  # fmt: skip
    if out:
        out += [
            "Intervals: Student t on the paired differences over seeds (n − 1 degrees of freedom, scipy.stats) below "
            "10 pairs, a seeded percentile bootstrap from 10 on; against the untrained reference (one seed) the run's "
            "seeds against its value, and for a run of one seed the normal interval of the two evaluations' standard "
            "errors (test-set binomial error and the spread of the draws). *better* / *worse*: the interval excludes "
            "0; *within noise*: it contains 0; n = 1 pair: no verdict. Bold: worse than the reference. All pairs "
            "are also in `results_paired.csv`.",
            "",
        ]
    return out


def _markdown(info: dict, cells: list[dict[str, object]], plots: list[Path], v: Verdicts | None = None) -> str:
    has_cuda = any(c["cuda_peak_mib"] is not None for c in cells)
    shown = [col for col in summary_columns(info) if col.always or any(c[f"{col.key}_mean"] is not None for c in cells)]
    reasons = v.reasons if v is not None else {}
    worse = v.worse if v is not None else set()
    head = ["run", "seeds", *(col.header + (" — not a ranking" if col.key in reasons else "") for col in shown)]
    head += ["acc_proto final", "acc_proto best", "skipped steps", "s/epoch (rel.)", "peak RSS (MiB)"]
    head += ["CUDA peak (MiB)"] * has_cuda + ["flags vs base"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in cells:
        rel = c["sec_per_epoch_rel"]
        row = [str(c["run"]), f"{c['seeds_done']}/{c['seeds_planned']}"]
        row += [_fmt(c[f"{col.key}_mean"], c[f"{col.key}_std"], col.digits)
                + (WORSE_MARK if (c["run"], col.key) in worse else "") for col in shown]  # fmt: skip
        row += [
            _fmt(c["acc_proto_final"], None, 1),
            _fmt(c["acc_proto_best"], None, 1),
            str(c["skipped_steps"]),
            "–" if rel is None else f"{rel:.2f}",
            _fmt(c["peak_rss_mib"], None, 0),
        ]
        if has_cuda:
            row.append(_fmt(c["cuda_peak_mib"], None, 0))
        row.append(str(c["note"]) if c["note"] else f"`{c['flags']}`" if c["flags"] else "(base)")
        lines.append("| " + " | ".join(row) + " |")
    m = info.get("machine", {})
    out = [
        f"# Suite `{info['suite']}`",
        "",
        info.get("description", ""),
        "",
        f"Command: `{info.get('command', '')}`  ",
        f"Machine: {m.get('cores', '?')} CPU cores ({m.get('cpu', '?')}), {m.get('gpu', '?')}, "
        f"torch {m.get('torch', '?')}.  ",
        f"Base flags: `{' '.join(flags_to_argv(info.get('base', {})))}`  ",
        f"Seeds: {info['seeds']} (0..{info['seeds'] - 1}). Values are mean ± sample std over the finished seeds, "
        "taken at the last epoch; acc_proto best = best epoch, averaged over seeds; s/epoch = E-step + M-step + "
        "kNN monitor, median over seeds, relative to the first row.",
        "",
        *lines,
        "",
    ]
    if worse:
        out += [f"{WORSE_MARK.strip()}: worse than the untrained encoder (the 95 % interval of run − untrained lies "
                "below 0; section 'Against the untrained reference').", ""]  # fmt: skip
    if reasons:
        out += ["Not a ranking (a trained run is not better than the untrained encoder):", ""]
        out += [f"- {col.header}: {reasons[col.key]}" for col in shown if col.key in reasons] + [""]
    if v is not None:
        out += _verdict_sections(v, shown)
    failed = [c for c in cells if c["failed"]]
    if failed:
        out += ["Failed runs:", ""] + [f"- `{c['run']}`: {c['failed']}" for c in failed] + [""]
    incomplete = [c for c in cells if c["seeds_done"] < c["seeds_planned"]]
    if incomplete:
        names = ", ".join(f"`{c['run']}` ({c['seeds_done']}/{c['seeds_planned']})" for c in incomplete)
        out += [f"Not all seeds finished: {names}. Rerun the command to continue (finished runs are skipped).", ""]
    out += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(out) + "\n"


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plot_sweep(name: str, rows: list[RunRow], cells: list[dict[str, object]], metric: str, out: Path) -> Path:
    """``metric`` (mean ± std over seeds) against the first swept flag, one line per value of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean_key, std_key, label = METRICS[metric]
    keys = list(rows[0].swept)
    xs = list(dict.fromkeys(r.swept[keys[0]] for r in rows))
    numeric = all(_is_number(x) for x in xs)
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for r, c in zip(rows, cells, strict=True):
        if c[mean_key] is None:
            continue
        x = r.swept[keys[0]]
        other = ", ".join(f"{k}={r.swept[k]}" for k in keys[1:]) or name
        lines.setdefault(other, []).append((x if numeric else xs.index(x), c[mean_key], c[std_key] or 0.0))
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
    for other, pts in lines.items():
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=other)  # fmt: skip
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    elif len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log")
    ax.set_xlabel(f"--{keys[0]}")
    ax.set_ylabel(label)
    ax.set_title(f"sweep {name}: {label} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return out


def draw_lowshot(ax: Axes, rows: list[RunRow]) -> None:
    """Low-shot top-1 against k images per class on ``ax``: one line per run with figures (mean over its
    finished seeds), shaded from the minimum to the maximum seed when it has several; reference rows dashed."""
    for r in rows:
        per_k: dict[int, list[float]] = {}
        for s in r.done():
            for k, v in s.lowshot.items():
                per_k.setdefault(k, []).append(v)
        if not per_k:
            continue
        ks = sorted(per_k)
        mean = [statistics.fmean(per_k[k]) for k in ks]
        seeds = max(len(v) for v in per_k.values())
        style = {"linestyle": "--", "color": "0.4"} if r.note else {}
        (line,) = ax.plot(ks, mean, marker="o", label=f"{r.name} ({seeds} seed{'s' * (seeds > 1)})", **style)
        if seeds > 1:
            lo, hi = [min(per_k[k]) for k in ks], [max(per_k[k]) for k in ks]
            ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ks_all = sorted({k for r in rows for s in r.done() for k in s.lowshot})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.set_xlabel("labelled images per class (k)")
    ax.set_ylabel("test top-1 (%), mean of the draws")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_lowshot(rows: list[RunRow], out: Path, title: str) -> Path:
    """:func:`draw_lowshot` as a PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    draw_lowshot(ax, rows)
    ax.set_title(f"{title} (line: mean over seeds, band: min to max)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return out


def _sweep_sections(rows: list[RunRow], cells: list[dict[str, object]], metric: str, dest: Path) -> str:
    """Per sweep: a table of the metric by swept value, and its plot (written to ``dest``)."""
    mean_key, std_key, label = METRICS[metric]
    out = []
    for name in dict.fromkeys(r.sweep for r in rows if r.sweep):
        members = [(r, c) for r, c in zip(rows, cells, strict=True) if r.sweep == name]
        keys = list(members[0][0].swept)
        lines = ["| " + " | ".join([*keys, "seeds", label]) + " |", "|" + " --- |" * (len(keys) + 2)]
        for r, c in members:
            value = _fmt(c[mean_key], c[std_key] if std_key else None)
            lines.append("| " + " | ".join([*(str(r.swept[k]) for k in keys), f"{c['seeds_done']}/{r.planned}",
                                            value]) + " |")  # fmt: skip
        png = plot_sweep(name, [r for r, _ in members], [c for _, c in members], metric, dest / f"sweep_{name}.png")
        out += [f"## Sweep `{name}`", "", *lines, "", f"![sweep_{name}]({png.name})", ""]
    return "\n".join(out) + ("\n" if out else "")


def _csv_bytes(header: list[str], rows: list[list[object]]) -> bytes:
    """A CSV file's bytes (``None`` cells empty)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue().encode()


FIRST = ("knn", "linear", "ami")  # results_seeds.csv names them knn_top1, linear_top1, ami (its first layout)


def _seeds_csv(rows: list[RunRow], columns: list[SummaryColumn]) -> bytes:
    """``results_seeds.csv``: one row per (run, seed) with every column's figure and standard error (``KEY_se``)."""
    keys = [*FIRST, *(c.key for c in columns if c.key not in FIRST)]
    se_keys = [c.key for c in columns if c.se is not None]
    head = ["run", "seed", "status", "epochs_done", "knn_top1", "linear_top1", "ami", *keys[3:],
            *(f"{k}_se" for k in se_keys), "acc_proto", "best_acc_proto", "skipped_steps", "sec_per_epoch",
            "peak_rss_mib", "error"]  # fmt: skip
    per_seed = [
        [r.name, s.seed, s.status, s.epochs_done, *[s.figures.get(key) for key in keys],
         *[s.se.get(key) for key in se_keys], s.acc_proto, s.best_acc_proto, s.skipped, s.sec_per_epoch,
         s.peak_rss_mib, s.error]
        for r in rows for s in r.seeds
    ]  # fmt: skip
    return _csv_bytes(head, per_seed)


def summarize(suite_dir: Path, dest: Path | None = None, metric: str = "knn", flag: str = "--dest") -> Path:
    """Write ``results.md``, ``results.csv``, ``results_seeds.csv``, the curve PNGs and one plot per sweep (of
    ``metric``) to ``dest`` (default: ``suite_dir``; ``flag`` names it in errors); returns the Markdown path.

    Every file is written atomically (the whole new file or the old one; a full disk is one ``PCLError``
    line); nothing is created before ``suite_dir`` is known to be a suite folder."""
    if metric not in METRICS:
        raise PCLError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    info, rows = collect(suite_dir)
    dest = dest or suite_dir
    usable_dir(dest, flag)
    columns = summary_columns(info)
    cells = table(rows, columns)
    write_bytes_atomic(dest / "results.csv", _csv_bytes(list(cells[0]), [list(c.values()) for c in cells]), "results")
    write_bytes_atomic(dest / "results_seeds.csv", _seeds_csv(rows, columns), "results")
    shown = [c for c in columns if any(r.figures(c.key) for r in rows)]
    v = verdicts(info, rows, shown)
    if v is not None:
        write_bytes_atomic(dest / "results_paired.csv", _csv_bytes(PAIRED_HEADER, paired_csv_rows(v.comparisons)),
                           "results")  # fmt: skip
    groups = {r.name: [suite_dir / r.name / f"seed{s.seed}" for s in r.seeds if s.epochs_done] for r in rows}
    groups = {k: v for k, v in groups.items() if v}
    plots = []
    for stem, tag in PLOTS.items():
        title = f"{info['suite']}: {tag}"
        plots += plot_curves(groups, [tag], dest / f"{stem}.png", title, missing_ok=True) if groups else []
    if any(s.lowshot for r in rows for s in r.done()):
        plots.append(plot_lowshot(rows, dest / "lowshot.png", f"{info['suite']}: low-shot linear SVM"))
    md = dest / "results.md"
    text = _markdown(info, cells, plots, v) + _sweep_sections(rows, cells, metric, dest) + _kept_notes(md)
    write_bytes_atomic(md, text.encode(), "results")
    return md


NOTES_HEADING = "## Notes"


def _kept_notes(md: Path) -> str:
    """The hand-written tail of an existing ``results.md``, from its ``## Notes`` heading on ('' if none),
    so that regenerating the table does not erase the reading of it."""
    if not md.is_file():
        return ""
    text = md.read_text()
    i = text.find(f"\n{NOTES_HEADING}")
    return "" if i < 0 else "\n" + text[i + 1 :].rstrip("\n") + "\n"
