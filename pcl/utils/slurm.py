"""SLURM resources and the submitit executor that asks for them: shared by ``tools/submit_slurm.py`` (one run)
and ``experiments/run.py --launcher slurm|local-submitit`` (a suite as a job array)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Resources:
    """What each task asks the cluster for."""

    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 10
    mem_gb: int | None = None
    partition: str | None = None
    time: int = 4320  # minutes per (re)start
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_requeues: int = 20
    signal_delay_s: int = 120
    parallel: int | None = None  # tasks of a job array running at once (SLURM's %N)
    name: str = "pcl"


def make_executor(res: Resources, folder: Path, cluster: str | None = "slurm") -> object:
    """submitit's executor for ``res``: ``cluster="local"`` is its local executor (tests, a workstation),
    ``None`` auto-detects, ``"slurm"`` / ``"debug"`` as submitit's ``AutoExecutor`` takes them."""
    import submitit

    tasks = max(1, res.gpus_per_node)
    if cluster == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=res.max_requeues)
        ex.update_parameters(
            timeout_min=res.time,
            tasks_per_node=tasks,
            gpus_per_node=res.gpus_per_node,
            signal_delay_s=res.signal_delay_s,
        )
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=res.max_requeues)
    extra = {k: v for k, v in {"constraint": res.constraint, "account": res.account, "qos": res.qos}.items() if v}
    ex.update_parameters(
        name=res.name,
        nodes=res.nodes,
        tasks_per_node=tasks,
        gpus_per_node=res.gpus_per_node,
        cpus_per_task=res.cpus_per_task,
        timeout_min=res.time,
        slurm_partition=res.partition,
        slurm_signal_delay_s=res.signal_delay_s,
        **({"slurm_array_parallelism": res.parallel} if res.parallel else {}),
        **({"mem_gb": res.mem_gb} if res.mem_gb else {}),
        **({"slurm_additional_parameters": extra} if extra else {}),
    )
    return ex
