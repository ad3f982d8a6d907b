"""Submit ``main_pcl.py`` to SLURM with submitit: requeued on pre-emption / time limit, resumed with --resume auto.

python tools/submit_slurm.py --nodes 2 --gpus-per-node 8 --partition gpu --time 4320 -- \\
    /data/imagenet --arch resnet50 --exp-dir runs/in1k --save-every-minutes 30 ...

Every task of the job runs ``pcl.cli.main`` in-process (one task per GPU; torch.distributed is set up from
SLURM's variables by ``submitit.helpers.TorchDistributedEnvironment``). Every (re)start passes ``--resume auto``.
Before its time limit, or when pre-empted, SLURM sends SIGUSR2 (``--signal-delay-s`` seconds ahead); the run
finishes its step, writes a mid-epoch checkpoint, and hands over to submitit, which requeues the job (at most
``--max-requeues`` times after a time limit; pre-emptions do not count).
``--cluster local`` runs the same job on this machine (submitit's local executor), for tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcl.run.exp_dir import usable_dir
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged
from pcl.utils.slurm import Resources, make_executor


def with_resume_auto(argv: list[str]) -> list[str]:
    """``argv`` with any ``--resume X`` / ``--resume=X`` / ``--overwrite`` replaced by ``--resume auto``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--resume":
            skip = True
            continue
        if a.startswith("--resume=") or a == "--overwrite":
            continue
        out.append(a)
    return [*out, "--resume", "auto"]


class PCLJob:
    """The submitted callable: one training task; ``checkpoint()`` is submitit's requeue hook."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = with_resume_auto(argv)

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from pcl import cli

        print(f"PCLJob: task {env.global_rank}/{env.num_tasks} of job {env.job_id}: main_pcl.py {' '.join(self.argv)}")
        sys.stdout.flush()
        code = cli.main(self.argv)
        if code >= 128 and env.global_rank != 0:  # rank 0 requeues the whole job
            return code
        if code != 0:
            raise RuntimeError(f"main_pcl.py exited with code {code} (see the job's stderr)")
        return code

    def checkpoint(self) -> object:
        """Called by submitit on SIGUSR2 after the run wrote its checkpoint: requeue the same command."""
        import submitit

        return submitit.helpers.DelayedSubmission(PCLJob(self.argv))


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=ranged(int, gt=0), default=1)
    p.add_argument(
        "--gpus-per-node", type=ranged(int, ge=0), default=8, help="one task per GPU (0: one CPU task per node)"
    )
    p.add_argument(
        "--cpus-per-task", type=ranged(int, gt=0), default=10, help="data-loading cores per task (match --workers)"
    )
    p.add_argument("--mem-gb", type=ranged(int, gt=0), default=None, help="memory per node")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", type=ranged(int, gt=0), default=4320, help="time limit per (re)start, minutes")
    p.add_argument("--max-requeues", type=ranged(int, ge=0), default=20, help="requeues after hitting the time limit")
    p.add_argument(
        "--signal-delay-s", type=ranged(int, ge=0), default=120, help="SIGUSR2 this many seconds before the limit"
    )
    p.add_argument("--constraint", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--name", default="pcl")
    p.add_argument("--job-dir", type=Path, default=None, help="submitit logs (default: <exp-dir>/slurm)")
    p.add_argument("--cluster", default=None, choices=("slurm", "local", "debug"), help="default: auto-detect")
    p.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then the main_pcl.py arguments")
    return p


def exp_dir_of(argv: list[str]) -> Path:
    for i, a in enumerate(argv):
        if a == "--exp-dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--exp-dir="):
            return Path(a.split("=", 1)[1])
    return Path("runs/default")


def resources(a: argparse.Namespace) -> Resources:
    """The parsed flags as :class:`pcl.utils.slurm.Resources`."""
    return Resources(
        nodes=a.nodes, gpus_per_node=a.gpus_per_node, cpus_per_task=a.cpus_per_task, mem_gb=a.mem_gb,
        partition=a.partition, time=a.time, account=a.account, constraint=a.constraint,
        max_requeues=a.max_requeues, signal_delay_s=a.signal_delay_s, name=a.name,
    )  # fmt: skip


def check_main_args(main_args: list[str], world: int) -> None:
    """The training flags, parsed and checked as ``main_pcl.py`` does for ``world`` processes, before anything
    is submitted (a typo is one ``error:`` line here, not a failed job in the queue)."""
    from pcl.config import parse_config, validate

    try:
        validate(parse_config(main_args), world)
    except PCLError as e:
        raise PCLError(f"main_pcl.py arguments: {str(e).strip().splitlines()[-1]}") from None


def submit(argv: list[str] | None = None) -> object:
    """Parse, submit, print the job id and log folder; returns the submitit job."""
    a = build_parser().parse_args(argv)
    main_args = a.main_args[1:] if a.main_args[:1] == ["--"] else a.main_args
    check_main_args(main_args, a.nodes * max(1, a.gpus_per_node))
    job_dir = a.job_dir or exp_dir_of(main_args) / "slurm"
    usable_dir(job_dir, "--job-dir" if a.job_dir else "the job folder (<exp-dir>/slurm)")
    if __name__ != "__main__":  # imported (e.g. by a test): ship PCLJob by value, the job cannot import tools/
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    job = make_executor(resources(a), job_dir, a.cluster).submit(PCLJob(main_args))
    print(f"submitted job {job.job_id}; logs in {job_dir}")
    return job


@entry_point()
def main(argv: list[str] | None = None) -> int:
    """Submit; 2 with one ``error:`` line for a bad flag."""
    submit(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
