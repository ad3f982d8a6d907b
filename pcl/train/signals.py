"""Graceful stop on SIGTERM / SIGUSR1 / SIGUSR2 (cluster pre-emption, time limits).

First signal: a flag is set; the training loop finishes the current step, writes a mid-epoch checkpoint and
raises ``Preempted`` (exit code ``128 + signal number``, as a shell reports a process killed by it). During the
E-step (nothing resumable to save) ``Preempted`` is raised at once. A handler installed before ours (e.g.
submitit's requeue handler) is called after the checkpoint is written. Second signal: the default action,
i.e. the process ends at once; every file is written atomically, so the last checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from types import FrameType

GRACEFUL = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(BaseException):  # like KeyboardInterrupt: not an error of the run
    """Raised after a graceful stop; ``code`` is the process exit code (128 + signal number)."""

    def __init__(self, signum: int, checkpoint: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.code = 128 + signum
        self.checkpoint = checkpoint


class StopRequest:
    """The signal handlers' state; ``install()`` / ``uninstall()`` around a run (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.immediate = False
        self.previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for s in GRACEFUL:  # a second signal: default action, the process ends at once
            with contextlib.suppress(ValueError, OSError):
                signal.signal(s, signal.SIG_DFL)
        if self.immediate:
            raise Preempted(signum)

    def install(self) -> None:
        self.signum, self.immediate, self.previous = None, False, {}
        for s in GRACEFUL:
            try:
                self.previous[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: no graceful stop
                self.previous.clear()
                return

    def uninstall(self) -> None:
        """Put the previous handlers back (``previous`` is kept for ``chain``)."""
        for s, h in self.previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(s, h)

    @contextlib.contextmanager
    def stop_at_once(self) -> Iterator[None]:
        """Inside (the E-step): a signal raises ``Preempted`` immediately instead of waiting for a step end."""
        if self.requested:
            raise Preempted(self.signum)
        self.immediate = True
        try:
            yield
        finally:
            self.immediate = False

    def chain(self) -> None:
        """Call the handler that was installed before ours for the received signal (e.g. submitit requeue)."""
        prev = self.previous.get(self.signum) if self.signum is not None else None
        if callable(prev):
            prev(self.signum, None)


STOP = StopRequest()


def slurm_requeue(run: Callable[..., object] = subprocess.run) -> str:
    """``scontrol requeue $SLURM_JOB_ID`` (array jobs: ``ARRAYJOBID_TASKID``); returns a one-line outcome."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "--requeue: not running under SLURM (no SLURM_JOB_ID), not requeued"
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if shutil.which("scontrol") is None and run is subprocess.run:
        return f"--requeue: scontrol not found, job {job} not requeued"
    proc = run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if getattr(proc, "returncode", 0) != 0:
        return f"--requeue: scontrol requeue {job} failed: {(getattr(proc, 'stderr', '') or '').strip()}"
    return f"requeued SLURM job {job}"
