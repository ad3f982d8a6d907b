"""Experiments stage: ablation suites (TOML files) and the resumable runner that executes them.

A suite file (``experiments/suites/NAME.toml``)::

    description = "MoCo v2 vs PCL vs PCL + cluster heads"
    seeds = 3                                   # default for --seeds
    [base]                                      # main_pcl.py flags shared by every run
    epochs = 30
    warmup-epochs = 5
    num-cluster = "50,100,200"
    [[runs]]
    name = "moco"
    flags = { warmup-epochs = 30 }              # overrides of the base
    [[runs]]
    name = "pcl"

A flag ``key = value`` becomes ``--key value``; ``true`` becomes ``--key`` and ``false`` ``--no-key``.
Every (run, seed) trains in ``OUT/SUITE/RUN/seedS/`` through ``python -m pcl`` in a subprocess with
``--resume auto``: a finished run (complete ``metrics.json``) is skipped, an interrupted one continues.
The files of a run folder are named by :class:`pcl.run.run_dir.RunDir`; this module lives beside the runner
(``experiments/``), not in the library, and finds the suites next to itself.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

import pcl
from pcl.run.run_dir import RunDir
from pcl.utils.atomic import write_atomic
from pcl.utils.cli import pythonpath_env
from pcl.utils.errors import PCLError

SUITES_DIR = Path(__file__).resolve().parent / "suites"
FlagValue = str | int | float | bool
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class RunSpec:
    """One named run of a suite: its flag overrides of the base."""

    name: str
    flags: dict[str, FlagValue] = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    base: dict[str, FlagValue]
    runs: list[RunSpec]
    seeds: int = 1


@dataclass
class Job:
    """One (run, seed) of a suite and where it trains."""

    run: RunSpec
    seed: int
    exp_dir: Path
    argv: list[str]  # main_pcl.py arguments

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.exp_dir)


def flags_to_argv(flags: dict[str, FlagValue]) -> list[str]:
    """``{"epochs": 3, "mlp": False, "save-clusters": True}`` -> ``--epochs 3 --no-mlp --save-clusters``."""
    argv: list[str] = []
    for key, v in flags.items():
        if isinstance(v, bool):
            argv.append(f"--{key}" if v else f"--no-{key}")
        else:
            argv += [f"--{key}", str(v)]
    return argv


def _flag_table(obj: object, where: str) -> dict[str, FlagValue]:
    if not isinstance(obj, dict):
        raise PCLError(f"{where} must be a table of flags, e.g. {{ epochs = 30 }}")
    for k, v in obj.items():
        if not isinstance(v, str | int | float | bool) or k.startswith("-"):
            raise PCLError(f"{where}: flag {k!r} must be written without dashes and hold a string, number or bool")
        if k in ("exp-dir", "seed", "resume"):
            raise PCLError(f"{where}: --{k} is set by the runner, remove it from the suite")
    return dict(obj)


def resolve_suite_path(name_or_path: str) -> Path:
    """A suite name (``baseline``) in ``experiments/suites/`` or a path to a ``.toml`` file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise PCLError(f"suite file {p} does not exist")
        return p
    candidate = SUITES_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = ", ".join(sorted(x.stem for x in SUITES_DIR.glob("*.toml")))
        raise PCLError(f"unknown suite {name_or_path!r}; known suites: {known}")
    return candidate


def load_suite(name_or_path: str) -> Suite:
    """Parse and check a suite file; one-line ``PCLError`` for anything malformed."""
    path = resolve_suite_path(name_or_path)
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PCLError(f"suite file {path} is not valid TOML: {e}") from None
    base = _flag_table(doc.get("base", {}), f"{path.name} [base]")
    raw_runs = doc.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        raise PCLError(f"{path.name} has no [[runs]]")
    runs: list[RunSpec] = []
    for i, r in enumerate(raw_runs):
        name = r.get("name") if isinstance(r, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise PCLError(f"{path.name}: run {i} needs a name of letters, digits, '.', '_', '+' or '-'")
        if name in {x.name for x in runs}:
            raise PCLError(f"{path.name}: two runs are named {name!r}")
        unknown = set(r) - {"name", "flags"}
        if unknown:
            raise PCLError(f"{path.name}: run {name!r} has unknown keys {sorted(unknown)}")
        runs.append(RunSpec(name, _flag_table(r.get("flags", {}), f"{path.name} run {name!r}")))
    seeds = doc.get("seeds", 1)
    if not isinstance(seeds, int) or seeds < 1:
        raise PCLError(f"{path.name}: seeds must be a positive integer")
    return Suite(path.stem, path, str(doc.get("description", "")), base, runs, seeds)


def plan(suite: Suite, out: Path, seeds: int, data: str | None, extra: list[str]) -> list[Job]:
    """Every (run, seed) with its exp-dir and full ``main_pcl.py`` argument list (base, run, extra flags)."""
    jobs = []
    for run in suite.runs:
        for seed in range(seeds):
            exp = out / suite.name / run.name / f"seed{seed}"
            argv = [*([data] if data else []), *flags_to_argv({**suite.base, **run.flags}), *extra]
            argv += ["--seed", str(seed), "--exp-dir", str(exp), "--resume", "auto"]
            jobs.append(Job(run, seed, exp, argv))
    return jobs


def is_finished(exp_dir: Path) -> bool:
    """True when ``metrics.json`` exists and records the last epoch of the schedule."""
    try:
        return bool(json.loads(RunDir(exp_dir).metrics.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def last_error_line(log: str) -> str:
    """The run's ``error:`` line if it printed one, else its last non-empty line."""
    lines = [ln.strip() for ln in log.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def machine_info() -> dict[str, str | int]:
    """What the suite ran on, for the results file."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count() or 0,
        "gpu": dev,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def command_line(jobs_argv: list[str]) -> str:
    return "python -m pcl " + shlex.join(jobs_argv)


def child_env() -> dict[str, str]:
    """The environment of a training subprocess: the ``pcl`` this process imported comes first on its path, so
    the child trains with the same code (a checkout on ``PYTHONPATH``, or the installed package)."""
    return pythonpath_env(Path(pcl.__file__).resolve().parents[1])


def write_status(run_dir: RunDir, status: dict) -> None:
    """``status.json``, written atomically (a reader never sees half a file)."""
    data = json.dumps(status, indent=1).encode()
    write_atomic(run_dir.status, lambda f: f.write(data), "status file")


def run_job(job: Job, python: str = sys.executable) -> dict:
    """Train one job in a subprocess (output appended to ``train.log``); returns and writes ``status.json``."""
    job.exp_dir.mkdir(parents=True, exist_ok=True)
    rd = job.run_dir
    t0 = time.time()
    with open(rd.train_log, "a") as log:
        log.write(f"$ {command_line(job.argv)}\n")
        log.flush()
        rc = subprocess.call([python, "-m", "pcl", *job.argv], stdout=log, stderr=log, env=child_env())
    if rc == 130 or rc == -2:
        raise KeyboardInterrupt
    # done: all epochs; stopped: exit 0 before the last epoch (--stop-after-epochs); failed: non-zero exit
    state = "failed" if rc != 0 else "done" if is_finished(job.exp_dir) else "stopped"
    status: dict = {"status": state, "returncode": rc}
    if state == "failed":
        status["error"] = last_error_line(rd.train_log.read_text(errors="replace"))
    status["seconds"] = round(time.time() - t0, 1)
    write_status(rd, status)
    return status
