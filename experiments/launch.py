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

A training process dies with its runner: on Linux it is started through :data:`DIE_WITH_RUNNER`
(``prctl(PR_SET_PDEATHSIG, SIGTERM)``, which holds also when the runner is killed with SIGKILL), so it writes a
checkpoint and stops; ``detach=True`` (``run.py --detach``) lets it train on. A run whose exp-dir lock is held
by a live process that no runner owns (such a detached orphan of an earlier runner, or a run started by hand)
is reported as running and waited for; the runner then records it as done, or resumes it if it stopped early.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pcl
from pcl.run.lock import LOCK_NAME, ExpDirLock, LockBusy, is_locked, lock_owner
from pcl.run.run_dir import RunDir
from pcl.utils.atomic import failure_reason, write_atomic, write_error
from pcl.utils.cli import pythonpath_env
from pcl.utils.errors import PCLError

HELD = "held by another runner"
# run as ``python -c DIE_WITH_RUNNER RUNNER_PID CMD...``: SIGTERM when the runner dies, then exec CMD
DIE_WITH_RUNNER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(128 + signal.SIGTERM)  # the runner died before the prctl\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
WAIT_POLL_S = 1.0


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


def die_with_runner(cmd: list[str], python: str = sys.executable) -> list[str]:
    """``cmd`` started so that it gets SIGTERM when this process dies, even by SIGKILL (Linux; elsewhere
    ``cmd`` unchanged). The signal comes when the thread that started it ends: call from the thread that waits."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [python, "-c", DIE_WITH_RUNNER, str(os.getpid()), *cmd]


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
    """Hold the run's runner lock inside; yields ``False`` (and holds nothing) when another runner has it. A
    lock file that cannot be written (a full disk) is a one-line ``PCLError``."""
    try:
        rd.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PCLError(f"cannot create the run folder {rd.root}: {failure_reason(e, rd.runner_lock)}") from None
    try:
        lock = ExpDirLock(rd.root, rd.runner_lock.name).acquire()
    except LockBusy:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def wait_for_trainer(rd: RunDir, say: Callable[[str], None], cancelled: threading.Event | None = None) -> dict | None:
    """When a live process holds the trainer's lock of ``rd`` (called under the runner lock, so no runner owns
    it: a detached orphan of an earlier runner, or a run started by hand), say so and wait until it ends.
    Returns its owner record, None when nobody held it. ``cancelled`` set: ``KeyboardInterrupt``."""
    owner = lock_owner(rd.root / LOCK_NAME)
    if owner is None:
        return None
    say(
        f"running in pid {owner.get('pid')} (started {owner.get('started', '?')}) that no runner owns, e.g. left by "
        "an earlier runner; waiting for it to end"
    )
    while is_locked(rd.root / LOCK_NAME):
        if cancelled is not None and cancelled.is_set():
            raise KeyboardInterrupt
        time.sleep(WAIT_POLL_S)
    return owner


def _train(rd: RunDir, argv: list[str], slot: Slot, detach: bool) -> dict:
    """One start of the run in a subprocess, output appended to ``train.log``; returns its outcome."""
    cmd, env = train_command(argv, slot)
    started = time.time()
    try:
        log = open(rd.train_log, "a")  # noqa: SIM115 - the child writes to it while this thread waits
    except OSError as e:
        raise write_error(e, rd.train_log, "the training log") from None
    with log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        log_from = log.tell()
        rc = subprocess.call(cmd if detach else die_with_runner(cmd), stdout=log, stderr=log, env=env)
    if rc in (130, -2):
        raise KeyboardInterrupt
    return outcome(rd, rc, log_from, started)


def run_job(
    exp_dir: Path,
    argv: list[str],
    slot: Slot = Slot(),
    on_start: Callable[[], None] = lambda: None,
    say: Callable[[str], None] = lambda line: None,
    detach: bool = False,
    cancelled: threading.Event | None = None,
) -> dict:
    """Train one job in a subprocess (output appended to ``train.log``) unless it is finished or held by another
    runner; returns its status (``finished`` / ``held by another runner`` when nothing ran). A run trained by a
    process no runner owns is waited for first (:func:`wait_for_trainer`, lines through ``say``); if that
    process finished it, the status is ``done`` with a ``note``. ``detach``: the child outlives this runner."""
    rd = RunDir(exp_dir)
    with holding(rd) as mine:
        if not mine:
            return {"status": HELD}
        if rd.is_finished():  # checked under the lock: another runner may have just finished it
            return {"status": "finished"}
        waited_from = time.time()
        owner = wait_for_trainer(rd, say, cancelled)
        if owner is not None and rd.is_finished():
            note = f"trained by pid {owner.get('pid')}, which no runner owned (left running by an earlier runner?)"
            status = {"status": "done", "returncode": 0, "note": note}
            status.update(started=round(waited_from, 3), ended=round(time.time(), 3))
            write_json(rd.status, status, "status file")
            return status
        on_start()
        status = _train(rd, argv, slot, detach)
        write_json(rd.status, {**status, **({"threads": slot.threads} if slot.threads else {}),
                               **({"gpus": list(slot.gpus)} if slot.gpus else {})}, "status file")  # fmt: skip
        return status


def run_local(
    jobs: list[tuple[Path, list[str]]],
    shares: list[Slot],
    report: Callable[[int, str], None],
    detach: bool = False,
) -> list[dict]:
    """Run ``jobs`` (exp-dir, argv), ``len(shares)`` at a time in start order, each in a free share; ``report(i,
    line)`` tells when job ``i`` starts, waits and how it ended. Returns the statuses in job order. ``detach``:
    the training processes outlive this process (default: they get SIGTERM when it dies)."""
    free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
    for s in shares:
        free.put(s)
    cancelled = threading.Event()

    def one(i: int) -> dict:
        slot = free.get()
        try:
            status = run_job(
                *jobs[i], slot, on_start=lambda: report(i, f"training in {jobs[i][0]} ..."),
                say=lambda line: report(i, line), detach=detach, cancelled=cancelled,
            )  # fmt: skip
            extra = status.get("error") or status.get("note")
            detail = f": {extra}" if extra else ""
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
        cancelled.set()  # a job waiting for another process stops waiting
        pool.shutdown(wait=True, cancel_futures=True)  # nothing new starts; running ones end with their Ctrl-C
        raise
    finally:
        pool.shutdown(wait=True)
