"""Experiments: how a suite's (run, seed) jobs start, here or on a cluster, and who holds which run.

- :func:`run_local` trains up to N jobs at once on this machine, each in a ``python -m pcl`` subprocess with its
  share of the CPU cores (``OMP_NUM_THREADS``) or its own GPUs (``CUDA_VISIBLE_DEVICES``; more than one GPU: under
  torchrun).
- :func:`submit` makes every pending job one task of a submitit job array (SLURM, or submitit's local executor
  for tests) and returns at once; the job ids go to ``SUITE/jobs.json``.

One runner per run: whoever trains a run holds its ``RunDir.runner_lock`` (an ``flock``, dropped by the kernel
when the holder dies); a second runner skips the runs it cannot lock. ``status.json`` records the outcome of the
last start: ``done`` (every epoch), ``stopped`` (exit 0 before the last epoch) or ``failed`` (with the run's
``error:`` line).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pcl
from pcl.run.lock import ExpDirLock
from pcl.run.run_dir import RunDir
from pcl.utils.atomic import write_atomic
from pcl.utils.cli import pythonpath_env
from pcl.utils.errors import PCLError

HELD = "held by another runner"


@dataclass(frozen=True)
class Slot:
    """What one of the N concurrently running jobs gets: a CPU thread count, or GPU ids."""

    threads: int | None = None
    gpus: tuple[str, ...] = ()


def slots(jobs: int, gpus_per_run: int, cores: int, visible_gpus: list[str]) -> list[Slot]:
    """``jobs`` disjoint shares of the machine: ``cores // jobs`` threads each, or ``gpus_per_run`` GPUs each."""
    if gpus_per_run <= 0:
        return [Slot(threads=max(1, cores // jobs))] * jobs
    need = jobs * gpus_per_run
    if len(visible_gpus) < need:
        raise PCLError(
            f"--jobs {jobs} --gpus-per-run {gpus_per_run} needs {need} GPUs, this machine shows {len(visible_gpus)}"
        )
    return [Slot(gpus=tuple(visible_gpus[i * gpus_per_run : (i + 1) * gpus_per_run])) for i in range(jobs)]


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def child_env() -> dict[str, str]:
    """The environment of a training process: the ``pcl`` this process imported comes first on its path, so the
    child trains with the same code (a checkout on ``PYTHONPATH``, or the installed package)."""
    return pythonpath_env(Path(pcl.__file__).resolve().parents[1])


def train_command(argv: list[str], slot: Slot, python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """The process that trains one job in ``slot``: its command line and environment."""
    env = child_env()
    if slot.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(slot.threads)
    if slot.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
    if len(slot.gpus) > 1:
        torchrun = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(len(slot.gpus))]
        return [*torchrun, "-m", "pcl", *argv], env
    return [python, "-m", "pcl", *argv], env


def last_error_line(log: str) -> str:
    """The run's ``error:`` line if it printed one, else its last non-empty line."""
    lines = [ln.strip() for ln in log.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, ``{}`` when missing or unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_json(path: Path, doc: dict, what: str) -> None:
    """``doc`` as JSON, written atomically (a reader never sees half a file)."""
    data = json.dumps(doc, indent=1).encode()
    write_atomic(path, lambda f: f.write(data), what)


def outcome(rd: RunDir, rc: int, log_from: int, started: float) -> dict:
    """``status.json`` of a start that ended with exit code ``rc``; its output begins at byte ``log_from``."""
    state = "failed" if rc != 0 else "done" if rd.is_finished() else "stopped"
    status: dict = {"status": state, "returncode": rc}
    if state == "failed":
        with open(rd.train_log, "rb") as f:
            f.seek(log_from)
            status["error"] = last_error_line(f.read().decode(errors="replace"))
    status.update(started=round(started, 3), ended=round(time.time(), 3), seconds=round(time.time() - started, 1))
    return status


@contextlib.contextmanager
def holding(rd: RunDir) -> Iterator[bool]:
    """Hold the run's runner lock inside; yields ``False`` (and holds nothing) when another runner has it."""
    rd.root.mkdir(parents=True, exist_ok=True)
    try:
        lock = ExpDirLock(rd.root, rd.runner_lock.name).acquire()
    except PCLError:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def run_job(exp_dir: Path, argv: list[str], slot: Slot = Slot(), on_start: Callable[[], None] = lambda: None) -> dict:
    """Train one job in a subprocess (output appended to ``train.log``) unless it is finished or held by another
    runner; returns its status (``finished`` / ``held by another runner`` when nothing ran)."""
    rd = RunDir(exp_dir)
    with holding(rd) as mine:
        if not mine:
            return {"status": HELD}
        if rd.is_finished():  # checked under the lock: another runner may have just finished it
            return {"status": "finished"}
        on_start()
        cmd, env = train_command(argv, slot)
        started = time.time()
        with open(rd.train_log, "a") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            log_from = log.tell()
            rc = subprocess.call(cmd, stdout=log, stderr=log, env=env)
        if rc in (130, -2):
            raise KeyboardInterrupt
        status = outcome(rd, rc, log_from, started)
        write_json(rd.status, {**status, **({"threads": slot.threads} if slot.threads else {}),
                               **({"gpus": list(slot.gpus)} if slot.gpus else {})}, "status file")  # fmt: skip
        return status


def run_local(
    jobs: list[tuple[Path, list[str]]], shares: list[Slot], report: Callable[[int, str], None]
) -> list[dict]:
    """Run ``jobs`` (exp-dir, argv), ``len(shares)`` at a time in start order, each in a free share; ``report(i,
    line)`` tells when job ``i`` starts and how it ended. Returns the statuses in job order."""
    free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
    for s in shares:
        free.put(s)

    def one(i: int) -> dict:
        slot = free.get()
        try:
            status = run_job(*jobs[i], slot, on_start=lambda: report(i, f"training in {jobs[i][0]} ..."))
            detail = f": {status['error']}" if status.get("error") else ""
            took = f" in {status['seconds']:.0f}s" if "seconds" in status else ""
            report(i, f"{'finished, skipped' if status['status'] == 'finished' else status['status']}{took}{detail}")
            return status
        finally:
            free.put(slot)

    pool = ThreadPoolExecutor(max_workers=len(shares))
    try:
        futures = [pool.submit(one, i) for i in range(len(jobs))]
        return [f.result() for f in futures]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # nothing new starts; running ones end with their Ctrl-C
        raise
    finally:
        pool.shutdown(wait=True)
