"""Run an ablation suite: every (run, seed) of ``experiments/suites/SUITE.toml``, then its results table and plots.

    python experiments/run.py baseline                      # bundled data, the suite's seeds, one run at a time
    python experiments/run.py baseline /data/cifar10 --jobs 2          # laptop: 2 runs at once, half the cores each
    python experiments/run.py baseline /data/cifar10 --jobs 8 --gpus-per-run 1   # 8-GPU node: one GPU per run
    python experiments/run.py baseline /data/cifar10 --launcher slurm --gpus-per-node 1 --partition gpu
    python experiments/run.py baseline --status             # pending / running / finished / failed per run
    python experiments/run.py my_suite.toml --dry-run       # print the exact commands (sweeps expanded)
    python experiments/run.py warmup -- --amp bf16          # extra training flags for every run

Resumable: finished runs (complete metrics and a readable final checkpoint) are skipped, an interrupted one
continues from its last checkpoint, a failed one is recorded (its error line in the summary) and the suite goes
on; the exit status is 1 when any run failed, with the count in the last line. Runs start seed by seed (every
run of seed 0 first). Two runners on one suite never train the same run: each takes only runs nobody holds.
A runner's training processes get SIGTERM (checkpoint, stop) when it dies, even by SIGKILL, unless ``--detach``;
a rerun waits for a run still trained by a process no runner owns, then goes on. The suite file and every run's
flags are checked before anything runs (``--dry-run`` included).
``--launcher slurm`` submits every pending run as one task of a job array and returns; rerun with ``--status``
to follow it, and without it to summarize. Results: ``OUT/SUITE/results.md`` (+ ``.csv``, PNG curves);
``--results DIR`` also writes them to DIR (e.g. ``experiments/results/SUITE`` to commit them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
from pathlib import Path

from launch import HELD, child_env, die_with_runner, read_json, run_local, slots, visible_gpus, write_json
from status import status_table
from submit import submit
from suite import Job, check_jobs, command_line, load_suite, machine_info, plan
from summary import UNTRAINED, summarize

from pcl.data.sources import check_data_path
from pcl.eval.protocols import PROTOCOLS
from pcl.run.exp_dir import usable_dir
from pcl.run.lock import is_locked
from pcl.utils.cli import ErrorParser, folder_arg, report_error
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged
from pcl.utils.slurm import Resources

ROOT = Path(__file__).resolve().parents[1]  # the checkout: default --out, tools/evaluate.py
LAUNCHERS = ("local", "slurm", "local-submitit")
# what --eval measures: every registered protocol (the summary's columns; fine-tuning takes minutes per run on a CPU)
EVAL_PROTOCOLS = ",".join(PROTOCOLS)


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
    p.add_argument("--status", action="store_true", help="show each run's state (pending/running/finished/failed)")
    p.add_argument("--eval", action="store_true", help="run tools/evaluate.py on each finished run (eval.json)")
    p.add_argument("--summary-only", action="store_true", help="only rebuild the results from finished runs")
    p.add_argument("--metric", default="knn", help="sweep plots: knn, linear, ami, acc_proto_final or acc_proto_best")
    g = p.add_argument_group("on this machine (--launcher local)")
    g.add_argument("--jobs", type=ranged(int, gt=0), default=1, help="runs at once")
    g.add_argument(
        "--gpus-per-run",
        type=ranged(int, ge=0),
        default=0,
        help="GPUs of each run (CUDA_VISIBLE_DEVICES; >1: torchrun)",
    )
    g.add_argument(
        "--threads-per-run", type=ranged(int, gt=0), default=None, help="CPU runs: torch threads (default cores/jobs)"
    )
    g.add_argument(
        "--detach",
        action="store_true",
        help="training processes outlive the runner (default: when it dies they checkpoint and stop); a rerun "
        "waits for the ones still training",
    )
    g = p.add_argument_group("on a cluster (--launcher slurm | local-submitit)")
    g.add_argument("--launcher", default="local", choices=LAUNCHERS)
    g.add_argument("--nodes", type=ranged(int, gt=0), default=1)
    g.add_argument("--gpus-per-node", type=ranged(int, ge=0), default=1, help="one task per GPU (0: one CPU task)")
    g.add_argument("--cpus-per-task", type=ranged(int, gt=0), default=10)
    g.add_argument("--mem-gb", type=ranged(int, gt=0), default=None)
    g.add_argument("--partition", default=None)
    g.add_argument("--time", type=ranged(int, gt=0), default=4320, help="minutes per (re)start")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--max-requeues", type=ranged(int, ge=0), default=20, help="requeues after hitting the time limit")
    g.add_argument(
        "--signal-delay-s", type=ranged(int, ge=0), default=120, help="SIGUSR2 this many seconds before the limit"
    )
    g.add_argument("--save-every-minutes", type=ranged(float, ge=0), default=None, help="passed to every run")
    g.add_argument(
        "--array-parallelism", type=ranged(int, gt=0), default=None, help="tasks of the array running at once"
    )
    args = p.parse_args(argv)
    for flag in ("seeds", "jobs", "threads_per_run", "nodes", "time"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise PCLError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.gpus_per_run < 0 or args.gpus_per_node < 0:
        raise PCLError("--gpus-per-run and --gpus-per-node must be >= 0")
    return args, extra


def _evaluate(job: Job, reference: Path | None = None) -> None:
    """``EVAL_PROTOCOLS`` of a finished run into ``eval.json`` (when the tool exists), set against the suite's
    untrained reference ``reference`` (``SUITE/untrained/eval.json``) when it exists, so that it is measured once
    per suite rather than once per run."""
    import subprocess

    tool = ROOT / "tools" / "evaluate.py"
    rd = job.run_dir
    if not tool.is_file() or rd.eval.is_file():
        return
    with open(rd.eval_log, "w") as log:
        cmd = [sys.executable, str(tool), str(job.exp_dir), "--protocols", EVAL_PROTOCOLS]
        cmd += ["--reference", str(reference)] if reference is not None and reference.is_file() else []
        subprocess.call(die_with_runner(cmd), stdout=log, stderr=log, env=child_env())


def _evaluate_untrained(jobs: list[Job], suite_dir: Path) -> Path:
    """``EVAL_PROTOCOLS`` (but those that measure what training produced, e.g. the run's clusters) of the untrained
    encoder, once per suite, into ``SUITE/untrained/eval.json``: the reference a trained encoder must beat (same
    data and seeded draws)."""
    import subprocess

    tool = ROOT / "tools" / "evaluate.py"
    target = suite_dir / UNTRAINED / "eval.json"
    done = [j for j in jobs if j.run_dir.is_finished()]
    if not tool.is_file() or target.is_file() or not done:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    protocols = ",".join(p for p in EVAL_PROTOCOLS.split(",") if not PROTOCOLS[p].trained_only)
    with open(target.parent / "eval.log", "w") as log:
        cmd = [sys.executable, str(tool), str(done[0].exp_dir), "--encoder", UNTRAINED, "--protocols", protocols]
        subprocess.call(die_with_runner([*cmd, "--out", str(target)]), stdout=log, stderr=log, env=child_env())
    return target


def _resources(args: argparse.Namespace) -> Resources:
    return Resources(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
        partition=args.partition, time=args.time, account=args.account, qos=args.qos, constraint=args.constraint,
        max_requeues=args.max_requeues, signal_delay_s=args.signal_delay_s, parallel=args.array_parallelism,
    )  # fmt: skip


def _world(args: argparse.Namespace) -> int:
    """Processes of one run: torchrun's GPUs here, or the SLURM tasks of one array task."""
    if args.launcher == "local":
        return max(1, args.gpus_per_run)
    return args.nodes * max(1, args.gpus_per_node)


def _key(job: Job) -> str:
    return f"{job.run.name}/seed{job.seed}"


def _submit(jobs: list[Job], suite_dir: Path, args: argparse.Namespace, argv: list[str]) -> int:
    """Submit every run that is neither finished nor held; returns the exit status."""
    pending = [j for j in jobs if not j.run_dir.is_finished() and not is_locked(j.run_dir.runner_lock)]
    if not pending:
        print("nothing to submit: every run is finished or held by a live job")
        return 0
    ids = submit([(_key(j), j.exp_dir, j.argv) for j in pending], suite_dir, args.launcher, _resources(args))
    for key, job_id in ids.items():
        print(f"{key}: job {job_id}")
    again = shlex.join(a for a in argv if a not in ("--launcher", args.launcher))
    print(f"submitted {len(ids)} task(s) ({args.launcher}); follow: python experiments/run.py {again} --status")
    return 0


_SAY = threading.Lock()


def say(line: str) -> None:
    """Print one whole line (the jobs' threads report at once: no two lines may share one)."""
    with _SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _run_here(jobs: list[Job], args: argparse.Namespace) -> tuple[int, int]:
    """Train the jobs on this machine; returns (failed, held by another runner)."""
    todo = []
    for i, job in enumerate(jobs, 1):
        tag = f"[{i}/{len(jobs)}] {job.run.name} seed{job.seed}"
        if job.run_dir.is_finished():
            print(f"{tag}: finished, skipped ({job.run_dir.metrics})")
        else:
            todo.append((tag, job))
    if args.gpus_per_run:
        shares = slots(args.jobs, args.gpus_per_run, 0, visible_gpus())
    else:
        cores = (args.threads_per_run or 0) * args.jobs or os.cpu_count() or 1
        shares = slots(args.jobs, 0, cores, [])

    def report(i: int, line: str) -> None:
        say(f"{todo[i][0]}: {line}")

    statuses = run_local([(job.exp_dir, job.argv) for _, job in todo], shares, report, detach=args.detach)
    if args.eval and jobs:  # the untrained reference first: every run is then set against it
        reference = _evaluate_untrained(jobs, jobs[0].exp_dir.parent.parent)
        for job in jobs:
            if job.run_dir.is_finished():
                _evaluate(job, reference)
    failed = sum(s["status"] == "failed" for s in statuses)
    return failed, sum(s["status"] == HELD for s in statuses)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, extra = parse(argv)
        folder_arg(args.out, "--out")
        folder_arg(args.results, "--results")
        suite = load_suite(args.suite)
        seeds = args.seeds or suite.seeds
        if args.runs:
            keep = set(args.runs.split(","))
            unknown = keep - {r.name for r in suite.runs}
            if unknown:
                raise PCLError(f"--runs: {', '.join(sorted(unknown))} not in suite {suite.name}")
            suite.runs = [r for r in suite.runs if r.name in keep]
        if args.save_every_minutes is not None:
            extra = [*extra, "--save-every-minutes", str(args.save_every_minutes)]
        jobs = plan(suite, args.out, seeds, args.data, extra)
        jobs.sort(key=lambda j: j.seed)  # seed-major: a half-finished suite already compares every run
        check_jobs(jobs, suite.path.name, _world(args))
        suite_dir = args.out.absolute() / suite.name
        if args.data is not None and not (args.dry_run or args.status or args.summary_only):
            check_data_path(args.data)  # every run would fail on it
        if args.dry_run:
            for job in jobs:
                print(command_line(job.argv))
            return 0
        if args.status:
            print(status_table([(_key(j), j.run_dir) for j in jobs], read_json(suite_dir / "jobs.json")))
            return 0
        failed = held = 0
        scope = {
            "runs": [{"name": r.name, "flags": r.flags, "sweep": r.sweep, "swept": r.swept} for r in suite.runs],
            "seeds": seeds,
            "columns": list(suite.columns),
            "reference": suite.reference,
        }
        if args.summary_only:  # the runs and seeds asked for now, not those of the last start (--runs may differ)
            record = read_json(suite_dir / "suite.json")
            if record:
                write_json(suite_dir / "suite.json", {**record, **scope}, "suite record")
        else:
            usable_dir(suite_dir, "--out")
            info = {
                "suite": suite.name,
                "description": suite.description,
                "file": str(suite.path),
                "base": suite.base,
                **scope,
                "extra": extra,
                "command": "python experiments/run.py " + shlex.join(argv),
                "machine": machine_info(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            write_json(suite_dir / "suite.json", info, "suite record")
            if args.launcher != "local":
                return _submit(jobs, suite_dir, args, argv)
            failed, held = _run_here(jobs, args)
        md = summarize(suite_dir, metric=args.metric)
        print(f"results: {md}")
        if args.results is not None:
            print(f"results: {summarize(suite_dir, args.results, metric=args.metric, flag='--results')}")
        print(md.read_text())
        if held:
            print(f"{held} run(s) were held by another runner and left to it")
        if failed:
            print(f"{failed} of {len(jobs)} runs failed (their error lines are in the table above)")
            return 1
    except PCLError as e:
        return report_error(e)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (finished runs are skipped)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
