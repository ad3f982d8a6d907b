"""Experiments stage: ablation suites (TOML files) and the resumable runner that executes them.

A suite file (``experiments/suites/NAME.toml``)::

    description = "MoCo v2 vs PCL vs PCL + cluster heads"
    seeds = 3                                   # default for --seeds
    reference = "moco"                          # optional: the run the others are compared with (default: first)
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

``reference`` names the run every other is compared with in the summary (paired by seed, with intervals;
default: the first run). A flag ``key = value`` becomes ``--key value``; ``true`` becomes ``--key`` and
``false`` ``--no-key`` (or, for a
flag without a ``--no-`` form such as ``gpu-aug``, leaves it off). Every key is checked when the file is loaded
(``--dry-run`` included): an unknown top-level, run or sweep key, a flag ``main_pcl.py`` does not have, and a
missing ``config`` file are one ``error:`` line with the closest known name; :func:`check_jobs` then parses every
run's command line as ``main_pcl.py`` would (ranges, choices, types). Suite files are TOML whatever their suffix
(``.toml``, ``.TOML``, ``.yaml`` holding TOML); a ``.json`` file may hold the same keys as JSON.
Every (run, seed) trains in ``OUT/SUITE/RUN/seedS/`` (``python -m pcl ... --resume auto``, see ``launch.py``).
This module lives beside the runner (``experiments/``), not in the library, and finds the suites next to itself.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import os
import platform
import re
import shlex
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pcl.run.run_dir import RunDir
from pcl.utils.errors import PCLError

SUITES_DIR = Path(__file__).resolve().parent / "suites"
FlagValue = str | int | float | bool
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
TOP_KEYS = ("description", "seeds", "base", "runs", "sweeps", "columns", "reference")
RUN_KEYS = ("name", "flags")
RUNNER_FLAGS = ("exp-dir", "seed", "resume")  # set by the runner for every (run, seed)
SUITE_SUFFIXES = (".toml", ".json", ".yaml", ".yml", ".txt")  # a name ending so is a path, never a suite name


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
    columns: tuple[str, ...] = ()  # training scalars (metrics.json keys) the summary shows, e.g. "epoch/loss_uniform"
    reference: str | None = None  # the run every other is compared with (paired by seed); None: the first run


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


@functools.cache
def main_pcl_options() -> frozenset[str]:
    """Every long option of ``main_pcl.py`` (``--epochs``, ``--no-mlp``, ...), read from its parser."""
    from pcl.config import build_parser

    return frozenset(o for a in build_parser()._actions for o in a.option_strings if o.startswith("--"))


def flags_to_argv(flags: dict[str, FlagValue]) -> list[str]:
    """``{"epochs": 3, "mlp": False, "save-clusters": True}`` -> ``--epochs 3 --no-mlp --save-clusters``; ``false``
    for a flag without a ``--no-`` form (``gpu-aug``, off unless given) gives nothing."""
    argv: list[str] = []
    for key, v in flags.items():
        if v is False and f"--{key}" in main_pcl_options() and f"--no-{key}" not in main_pcl_options():
            continue
        if isinstance(v, bool):
            argv.append(f"--{key}" if v else f"--no-{key}")
        else:
            argv += [f"--{key}", str(v)]
    return argv


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'seeds'?)`` for the closest of ``known`` names, or ``''``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    """An unknown key of ``table`` is a ``PCLError`` naming it, the closest allowed key and the allowed keys."""
    for key in table:
        if key not in allowed:
            raise PCLError(
                f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}; known keys: {', '.join(allowed)}"
            )


def check_flag_name(key: str, value: FlagValue, where: str) -> None:
    """``key`` must be a ``main_pcl.py`` flag (without dashes) that the runner does not set itself."""
    if key.startswith("-"):
        raise PCLError(f"{where}: flag {key!r} must be written without dashes, e.g. {key.lstrip('-')} = ...")
    if key in RUNNER_FLAGS:
        raise PCLError(f"{where}: --{key} is set by the runner, remove it from the suite")
    options = main_pcl_options()
    if f"--{key}" not in options:
        names = sorted(o.removeprefix("--") for o in options if not o.startswith("--no-") and o != "--help")
        raise PCLError(f"{where}: main_pcl.py has no flag --{key}{did_you_mean(key, names)}")


def _flag_value(key: str, v: object, where: str) -> FlagValue:
    if isinstance(v, list):
        raise PCLError(
            f"{where}: {key} = {json.dumps(v)} is a list, but a flag here takes one value; to run one value after "
            f'the other, sweep it: [[sweeps]] name = "{key}" {key} = {json.dumps(v)}'
        )
    if not isinstance(v, str | int | float | bool):
        raise PCLError(f"{where}: flag {key!r} must hold a string, number or bool, got {json.dumps(v, default=str)}")
    return v


def _flag_table(obj: object, where: str, suite_dir: Path | None = None) -> dict[str, FlagValue]:
    """A table of ``main_pcl.py`` flags, every name and value checked; ``config`` (a ``--config`` file) made
    absolute relative to ``suite_dir`` and required to exist."""
    if not isinstance(obj, dict):
        raise PCLError(f"{where} must be a table of flags, e.g. {{ epochs = 30 }}")
    out: dict[str, FlagValue] = {}
    for k, v in obj.items():
        out[k] = _flag_value(k, v, where)
        check_flag_name(k, out[k], where)
    if suite_dir is not None and isinstance(out.get("config"), str):
        config = (suite_dir / out["config"]).resolve()
        if not config.is_file():
            what = "is a folder" if config.is_dir() else "does not exist"
            raise PCLError(f"{where}: config file {out['config']!r} ({config}) {what}")
        out["config"] = str(config)
    return out


def resolve_suite_path(name_or_path: str) -> Path:
    """A suite name (``baseline``) in ``experiments/suites/`` or a path to a suite file (any suffix)."""
    p = Path(name_or_path)
    if p.is_dir():
        raise PCLError(f"suite {p} is a folder: give a suite file (.toml) or the name of one in {SUITES_DIR}")
    if p.is_file():
        return p
    if p.suffix.lower() in SUITE_SUFFIXES or os.sep in name_or_path:
        raise PCLError(f"suite file {p} does not exist")
    candidate = SUITES_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = sorted(x.stem for x in SUITES_DIR.glob("*.toml"))
        raise PCLError(f"unknown suite {name_or_path!r}{did_you_mean(name_or_path, known)}; known suites: "
                       f"{', '.join(known)}")  # fmt: skip
    return candidate


def read_suite_file(path: Path) -> dict:
    """The document of a suite file: TOML whatever the suffix (``.TOML``, ``.yaml`` holding TOML), JSON only
    for a ``.json`` file; one ``PCLError`` line when it is neither."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PCLError(f"suite file {path} is not a text file (a suite is a TOML file)") from None
    except OSError as e:
        raise PCLError(f"cannot read suite file {path}: {e.strerror or e}") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise PCLError(f"suite file {path} is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise PCLError(f"suite file {path} must hold a JSON object with the keys of a suite")
        return doc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PCLError(
            f"suite file {path} is not valid TOML (suite files are TOML whatever their suffix): {e}"
        ) from None


def _value_name(v: FlagValue) -> str:
    """A flag value as part of a run name: ``0.03`` -> ``0.03``, ``"50,100"`` -> ``50_100``, ``True`` -> ``true``."""
    text = str(v).lower() if isinstance(v, bool) else str(v)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def expand_sweep(entry: object, where: str, suite_dir: Path | None = None) -> list[RunSpec]:
    """One ``[[sweeps]]`` table -> a named run per combination of its value lists (first key varies slowest)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not _NAME.match(entry["name"]):
        raise PCLError(f"{where} needs a name of letters, digits, '.', '_', '+' or '-'")
    prefix = entry["name"]
    fixed = _flag_table(entry.get("flags", {}), f"{where} {prefix!r} flags", suite_dir)
    lists = {k: v for k, v in entry.items() if k not in RUN_KEYS}
    if not lists:
        raise PCLError(f"{where} {prefix!r} sweeps nothing: give lists of values, e.g. lr = [0.03, 0.06]")
    for k, v in lists.items():
        if not isinstance(v, list) or not v:
            check_flag_name(k, v if isinstance(v, str | int | float | bool) else "", f"{where} {prefix!r}")
            raise PCLError(f"{where} {prefix!r}: {k} must be a non-empty list of values, e.g. {k} = [1, 2]")
        for x in v:
            check_flag_name(k, _flag_value(k, x, f"{where} {prefix!r}: an element of {k}"), f"{where} {prefix!r}")
        if len(set(map(str, v))) < len(v):
            raise PCLError(f"{where} {prefix!r}: {k} must list distinct strings, numbers or bools")
    runs = []
    for combo in itertools.product(*lists.values()):
        swept = dict(zip(lists, combo, strict=True))
        name = "-".join([prefix, *(f"{k}{_value_name(v)}" for k, v in swept.items())])
        runs.append(RunSpec(name, {**fixed, **swept}, sweep=prefix, swept=swept))
    return runs


def _runs(raw_runs: object, where: str, suite_dir: Path) -> list[RunSpec]:
    """The ``[[runs]]`` entries, names and flags checked."""
    if not isinstance(raw_runs, list):
        raise PCLError(f"{where}: runs must be [[runs]] tables, each with a name")
    runs = []
    for i, r in enumerate(raw_runs):
        name = r.get("name") if isinstance(r, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise PCLError(f"{where}: run {i} needs a name of letters, digits, '.', '_', '+' or '-'")
        check_keys(r, RUN_KEYS, f"{where} run {name!r}")
        runs.append(RunSpec(name, _flag_table(r.get("flags", {}), f"{where} run {name!r} flags", suite_dir)))
    return runs


def load_suite(name_or_path: str) -> Suite:
    """Parse and check a suite file; one-line ``PCLError`` for anything malformed (module docstring)."""
    path = resolve_suite_path(name_or_path)
    doc = read_suite_file(path)
    check_keys(doc, TOP_KEYS, path.name)
    base = _flag_table(doc.get("base", {}), f"{path.name} [base]", path.parent)
    raw_runs, raw_sweeps = doc.get("runs", []), doc.get("sweeps", [])
    if not isinstance(raw_sweeps, list):
        raise PCLError(f"{path.name}: sweeps must be [[sweeps]] tables, each with a name")
    runs = _runs(raw_runs, path.name, path.parent)
    for entry in raw_sweeps:
        runs += expand_sweep(entry, f"{path.name} [[sweeps]]", path.parent)
    if not runs:
        raise PCLError(f"{path.name} has no [[runs]] and no [[sweeps]]")
    names = [r.name for r in runs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise PCLError(f"{path.name}: two runs are named {dup!r}")
    seeds = doc.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise PCLError(f"{path.name}: seeds must be a positive integer, got {json.dumps(seeds, default=str)}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise PCLError(f"{path.name}: description must be a string")
    columns = doc.get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
        raise PCLError(f'{path.name}: columns must be a list of metrics.json keys, e.g. ["epoch/loss_inst"]')
    reference = doc.get("reference")
    if reference is not None and (not isinstance(reference, str) or reference not in names):
        raise PCLError(f"{path.name}: reference = {json.dumps(reference, default=str)} must name one of the runs"
                       f"{did_you_mean(str(reference), names)}; runs: {', '.join(names)}")  # fmt: skip
    return Suite(path.stem, path, description, base, runs, seeds, tuple(columns), reference)


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


def check_jobs(jobs: list[Job], where: str, world: int = 1) -> None:
    """Parse each run's command line as ``main_pcl.py`` does and run its data-free checks (``world`` processes per
    run), once per run: a bad value is the flag's own ``error:`` line, prefixed by the run's name, before
    anything trains (``--dry-run`` included)."""
    from pcl.config import parse_config, validate

    seen: set[str] = set()
    for job in jobs:
        if job.run.name in seen:
            continue
        seen.add(job.run.name)
        try:
            validate(parse_config(job.argv), world)
        except PCLError as e:
            raise PCLError(f"{where} run {job.run.name!r}: {str(e).strip().splitlines()[-1]}") from None


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
