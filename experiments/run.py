"""Run an ablation suite: every (run, seed) of ``experiments/suites/SUITE.toml``, then its results table and plots.

    python experiments/run.py baseline                      # bundled data, the suite's seeds
    python experiments/run.py baseline /data/cifar10 --seeds 3 --out runs/experiments
    python experiments/run.py my_suite.toml --dry-run       # print the exact commands, change nothing
    python experiments/run.py warmup -- --amp bf16          # extra main_pcl.py flags for every run

Resumable: finished runs are skipped, an interrupted one continues from its last checkpoint, a failed one is
recorded (its error line in the summary) and the suite goes on. Jobs run seed by seed (every run of seed 0
first), so a suite stopped half-way already compares all runs. Results: ``OUT/SUITE/results.md`` (+ ``.csv``,
PNG curves); ``--results DIR`` also writes them to DIR (e.g. ``experiments/results/SUITE`` to commit them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from suite import Job, child_env, command_line, is_finished, load_suite, machine_info, plan, run_job
from summary import summarize

from pcl.utils.cli import ErrorParser, report_error
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

ROOT = Path(__file__).resolve().parents[1]  # the checkout: default --out, tools/evaluate.py
# what --eval measures (the summary's columns; fine-tuning takes minutes per run on a CPU)
EVAL_PROTOCOLS = "knn,linear,clusters,lowshot,finetune,kmeans"


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = ErrorParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", help="suite name (experiments/suites/NAME.toml) or path to a suite .toml file")
    p.add_argument("data", nargs="?", default=None, help="ImageFolder root (default: the bundled subset)")
    p.add_argument("--seeds", type=ranged(int, gt=0), default=None, help="seeds 0..N-1 (default: the suite's `seeds`)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "experiments", help="root of the run folders")
    p.add_argument("--results", type=Path, default=None, help="also write results.md/csv/png here")
    p.add_argument("--runs", default=None, help="comma list: only these runs of the suite")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run and write nothing")
    p.add_argument("--eval", action="store_true", help="run tools/evaluate.py on each finished run (eval.json)")
    p.add_argument("--summary-only", action="store_true", help="only rebuild the results from finished runs")
    args = p.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        raise PCLError(f"--seeds must be positive, got {args.seeds}")
    return args, extra


def _evaluate(job: Job) -> None:
    """``EVAL_PROTOCOLS`` of a finished run into ``eval.json`` (when the tool exists)."""
    import subprocess

    tool = ROOT / "tools" / "evaluate.py"
    rd = job.run_dir
    if not tool.is_file() or rd.eval.is_file():
        return
    with open(rd.eval_log, "w") as log:
        cmd = [sys.executable, str(tool), str(job.exp_dir), "--protocols", EVAL_PROTOCOLS]
        subprocess.call(cmd, stdout=log, stderr=log, env=child_env())


def main(argv: list[str] | None = None) -> int:
    try:
        args, extra = parse(sys.argv[1:] if argv is None else argv)
        suite = load_suite(args.suite)
        seeds = args.seeds or suite.seeds
        if args.runs:
            keep = set(args.runs.split(","))
            unknown = keep - {r.name for r in suite.runs}
            if unknown:
                raise PCLError(f"--runs: {', '.join(sorted(unknown))} not in suite {suite.name}")
            suite.runs = [r for r in suite.runs if r.name in keep]
        jobs = plan(suite, args.out, seeds, args.data, extra)
        jobs.sort(key=lambda j: j.seed)  # seed-major: a half-finished suite already compares every run
        suite_dir = args.out / suite.name
        if args.dry_run:
            for job in jobs:
                print(command_line(job.argv))
            return 0
        if not args.summary_only:
            suite_dir.mkdir(parents=True, exist_ok=True)
            info = {
                "suite": suite.name,
                "description": suite.description,
                "file": str(suite.path),
                "base": suite.base,
                "runs": [{"name": r.name, "flags": r.flags} for r in suite.runs],
                "seeds": seeds,
                "extra": extra,
                "command": "python experiments/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                "machine": machine_info(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            (suite_dir / "suite.json").write_text(json.dumps(info, indent=1))
            for i, job in enumerate(jobs, 1):
                tag = f"[{i}/{len(jobs)}] {job.run.name} seed{job.seed}"
                if is_finished(job.exp_dir):
                    print(f"{tag}: finished, skipped ({job.run_dir.metrics})")
                else:
                    print(f"{tag}: training in {job.exp_dir} ...", flush=True)
                    status = run_job(job)
                    detail = f": {status['error']}" if status["status"] == "failed" else ""
                    print(f"{tag}: {status['status']} in {status['seconds']:.0f}s{detail}", flush=True)
                if args.eval and is_finished(job.exp_dir):
                    _evaluate(job)
        md = summarize(suite_dir)
        print(f"results: {md}")
        if args.results is not None:
            print(f"results: {summarize(suite_dir, args.results)}")
        print(md.read_text())
    except PCLError as e:
        return report_error(e)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (finished runs are skipped)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
