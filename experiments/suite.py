"""Experiments stage: ablation suites (TOML files) and the resumable runner that executes them.

A suite file (``experiments/suites/NAME.toml``)::

    description = "MoCo v2 vs PCL vs PCL + cluster heads"
    seeds = 3                                   # default for --seeds
    [base]                                      # main_pcl.py flags shared by every run
    config = "cifar.toml"                       # optional: a --config file, relative to this file
    epochs = 30
    warmup-epochs = 5
    num-cluster = "50,100,200"
    [[runs]]
    name = "moco"
    flags = { warmup-epochs = 30 }              # overrides of the base
    [[runs]]
    name = "pcl"
    [[sweeps]]                                  # a grid: one run per combination of the lists
    name = "lr"                                 # name prefix: lr-lr0.03-num-cluster50_100, ...
    lr = [0.03, 0.06]
    num-cluster = ["50,100", "100,200"]
    flags = { epochs = 20 }                     # optional: fixed overrides of every run of the sweep

A flag ``key = value`` becomes ``--key value``; ``true`` becomes ``--key`` and ``false`` ``--no-key``.
Every (run, seed) trains in ``OUT/SUITE/RUN/seedS/`` (``python -m pcl ... --resume auto``, see ``launch.py``).
This module lives beside the runner (``experiments/``), not in the library, and finds the suites next to itself.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pcl.run.run_dir import RunDir
from pcl.utils.errors import PCLError

SUITES_DIR = Path(__file__).resolve().parent / "suites"
FlagValue = str | int | float | bool
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class RunSpec:
    """One named run of a suite: its flag overrides of the base."""

    name: str
    flags: dict[str, FlagValue] = field(default_factory=dict)
    sweep: str | None = None  # the [[sweeps]] entry this run was expanded from
    swept: dict[str, FlagValue] = field(default_factory=dict)  # its values of the swept flags


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


def _value_name(v: FlagValue) -> str:
    """A flag value as part of a run name: ``0.03`` -> ``0.03``, ``"50,100"`` -> ``50_100``, ``True`` -> ``true``."""
    text = str(v).lower() if isinstance(v, bool) else str(v)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def expand_sweep(entry: object, where: str) -> list[RunSpec]:
    """One ``[[sweeps]]`` table -> a named run per combination of its value lists (first key varies slowest)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not _NAME.match(entry["name"]):
        raise PCLError(f"{where} needs a name of letters, digits, '.', '_', '+' or '-'")
    prefix = entry["name"]
    fixed = _flag_table(entry.get("flags", {}), f"{where} {prefix!r} flags")
    lists = {k: v for k, v in entry.items() if k not in ("name", "flags")}
    if not lists:
        raise PCLError(f"{where} {prefix!r} sweeps nothing: give lists of values, e.g. lr = [0.03, 0.06]")
    for k, v in lists.items():
        if not isinstance(v, list) or not v:
            raise PCLError(f"{where} {prefix!r}: {k} must be a non-empty list of values, e.g. {k} = [1, 2]")
        _flag_table(dict.fromkeys([k], v[0]), f"{where} {prefix!r}")
        if any(not isinstance(x, str | int | float | bool) for x in v) or len(set(map(str, v))) < len(v):
            raise PCLError(f"{where} {prefix!r}: {k} must list distinct strings, numbers or bools")
    runs = []
    for combo in itertools.product(*lists.values()):
        swept = dict(zip(lists, combo, strict=True))
        name = "-".join([prefix, *(f"{k}{_value_name(v)}" for k, v in swept.items())])
        runs.append(RunSpec(name, {**fixed, **swept}, sweep=prefix, swept=swept))
    return runs


def load_suite(name_or_path: str) -> Suite:
    """Parse and check a suite file; one-line ``PCLError`` for anything malformed."""
    path = resolve_suite_path(name_or_path)
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PCLError(f"suite file {path} is not valid TOML: {e}") from None
    base = _flag_table(doc.get("base", {}), f"{path.name} [base]")
    if isinstance(base.get("config"), str):  # a config file for main_pcl.py --config, relative to the suite file
        base["config"] = str((path.parent / base["config"]).resolve())
    raw_runs, raw_sweeps = doc.get("runs", []), doc.get("sweeps", [])
    if not isinstance(raw_runs, list) or not isinstance(raw_sweeps, list) or not (raw_runs or raw_sweeps):
        raise PCLError(f"{path.name} has no [[runs]] and no [[sweeps]]")
    runs: list[RunSpec] = []
    for i, r in enumerate(raw_runs):
        name = r.get("name") if isinstance(r, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise PCLError(f"{path.name}: run {i} needs a name of letters, digits, '.', '_', '+' or '-'")
        unknown = set(r) - {"name", "flags"}
        if unknown:
            raise PCLError(f"{path.name}: run {name!r} has unknown keys {sorted(unknown)}")
        runs.append(RunSpec(name, _flag_table(r.get("flags", {}), f"{path.name} run {name!r}")))
    for entry in raw_sweeps:
        runs += expand_sweep(entry, f"{path.name} [[sweeps]]")
    names = [r.name for r in runs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise PCLError(f"{path.name}: two runs are named {dup!r}")
    seeds = doc.get("seeds", 1)
    if not isinstance(seeds, int) or seeds < 1:
        raise PCLError(f"{path.name}: seeds must be a positive integer")
    return Suite(path.stem, path, str(doc.get("description", "")), base, runs, seeds)


def plan(suite: Suite, out: Path, seeds: int, data: str | None, extra: list[str]) -> list[Job]:
    """Every (run, seed) with its exp-dir and full ``main_pcl.py`` argument list (base, run, extra flags)."""
    jobs = []
    for run in suite.runs:
        for seed in range(seeds):
            exp = out.absolute() / suite.name / run.name / f"seed{seed}"
            argv = [*([data] if data else []), *flags_to_argv({**suite.base, **run.flags}), *extra]
            argv += ["--seed", str(seed), "--exp-dir", str(exp), "--resume", "auto"]
            jobs.append(Job(run, seed, exp, argv))
    return jobs


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
