"""Experiments on a cluster: every pending (run, seed) of a suite becomes one task of a submitit job array.

``--launcher slurm`` submits to SLURM with the resources of ``tools/submit_slurm.py``; ``--launcher
local-submitit`` runs the same tasks with submitit's local executor (tests, or a workstation without SLURM).
The runner returns after submitting; ``SUITE/jobs.json`` maps each ``RUN/seedS`` to its job id, and the
submitit logs are in ``SUITE/slurm/``. Each task trains in-process (one task per GPU; ``torch.distributed``
from SLURM's variables), with ``--resume auto``; on SIGUSR2 (pre-emption, or ``--signal-delay-s`` before the
time limit) the run writes a checkpoint and submitit requeues the task (time limits at most
``--max-requeues`` times).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from launch import HELD, child_env, holding, outcome, read_json, wait_for_trainer, write_json

from pcl.run.run_dir import RunDir
from pcl.utils.slurm import Resources, make_executor


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2) appended to ``path`` inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


class SuiteTask:
    """One (run, seed) as a submitit task; ``checkpoint()`` is submitit's requeue hook."""

    def __init__(self, exp_dir: Path, argv: list[str]) -> None:
        self.exp_dir, self.argv = Path(exp_dir), list(argv)

    def __call__(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        rd = RunDir(self.exp_dir)
        if rd.is_finished():
            return "finished"
        if env.global_rank != 0:
            return str(self._train())
        with holding(rd) as mine:
            if not mine:
                return HELD
            wait_for_trainer(rd, lambda line: print(f"{self.exp_dir}: {line}", flush=True))
            if rd.is_finished():
                return "finished"
            started, log_from = time.time(), rd.train_log.stat().st_size if rd.train_log.is_file() else 0
            with output_to(rd.train_log):
                print(f"$ job {env.job_id}: python -m pcl {' '.join(self.argv)}", flush=True)
                code = self._train()
            status = outcome(rd, code, log_from, started)
            write_json(rd.status, {**status, "job_id": env.job_id}, "status file")
        if code != 0:
            raise RuntimeError(f"training exited with code {code}: {status.get('error', '')}")
        return status["status"]

    def _train(self) -> int:
        from pcl import cli

        return cli.main(self.argv)

    def checkpoint(self) -> object:
        """Called by submitit on SIGUSR2 after the run wrote its checkpoint: requeue the same task."""
        import submitit

        return submitit.helpers.DelayedSubmission(SuiteTask(self.exp_dir, self.argv))


def submit(jobs: list[tuple[str, Path, list[str]]], suite_dir: Path, launcher: str, res: Resources) -> dict[str, str]:
    """Submit ``jobs`` (``RUN/seedS`` key, exp-dir, argv) as one array; records and returns ``{key: job id}``."""
    import cloudpickle

    for name in ("launch", __name__):  # the tasks cannot import experiments/: ship these modules by value
        cloudpickle.register_pickle_by_value(sys.modules[name])
    cluster = "local" if launcher == "local-submitit" else "slurm"
    executor = make_executor(replace(res, name="pcl-suite"), suite_dir / "slurm", cluster)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]  # the tasks import the same pcl as this process
    try:
        submitted = executor.submit_array([SuiteTask(exp, argv) for _, exp, argv in jobs])
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    ids = {key: str(j.job_id) for (key, _, _), j in zip(jobs, submitted, strict=True)}
    record = read_json(suite_dir / "jobs.json")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    record.update({k: {"job_id": v, "launcher": launcher, "submitted": stamp} for k, v in ids.items()})
    write_json(suite_dir / "jobs.json", record, "job list")
    return ids
