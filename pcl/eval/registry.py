"""Evaluation protocols as a registry: what a protocol declares, and the table of registered ones.

A :class:`Protocol` names itself, its settings (a dataclass whose fields declare their flags with
``pcl.utils.flags.flag``, as the training configuration does), whether it runs by default, what it computes from
the shared :class:`pcl.eval.context.EvalContext`, the ``eval.json`` block it writes, its rows of
``tools/evaluate.py``'s table and its columns in suite summaries (``experiments/summary.py``). ``evaluate_run``,
``tools/evaluate.py`` (flags, ``--protocols``, table), ``experiments/run.py --eval`` and the suite summaries read
:data:`PROTOCOLS`; its order (registration order) is the order of the table rows and of the summary columns.

The built-in protocols register when ``pcl.eval.protocols`` is imported (one module each); a new one is one new
module that calls :func:`register_protocol`, plus its import in ``pcl/eval/protocols/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pcl.analysis.intervals import binomial_se
from pcl.utils.errors import PCLError
from pcl.utils.flags import Flag, check_fields, flag_of

if TYPE_CHECKING:
    from pcl.eval.context import EvalContext

Rows = list[tuple[str, str]]  # (name, value) lines of the text table


@dataclass(frozen=True)
class Block:
    """What one protocol adds to ``eval.json``: top-level ``values`` and entries of its ``settings`` object."""

    values: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SummaryColumn:
    """One column of a suite summary: the CSV key (cells ``KEY_mean`` / ``KEY_std``), the Markdown header, how to
    read one run's figure from its ``eval.json`` (None: no figure) and the digits shown. A column is shown when
    some run has a figure, or always (``always``). ``se``: the standard error of one evaluation's figure (same
    units; None: unknown), which bounds the comparison of two single evaluations (``tools/evaluate.py``'s
    untrained reference, a one-seed suite); ``higher_is_better`` (None: neither) words the verdicts."""

    key: str
    header: str
    read: Callable[[Mapping[str, Any]], float | None]
    digits: int = 2
    always: bool = False
    se: Callable[[Mapping[str, Any]], float | None] | None = None
    higher_is_better: bool | None = True


def _no_rows(result: Mapping[str, Any]) -> Rows:
    return []


def _no_notes(result: Mapping[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol.

    Attributes:
        name: its name in ``--protocols`` and in ``settings`` of ``eval.json``.
        help: one line for ``tools/evaluate.py -h``.
        settings: a dataclass; fields carrying a ``flag(...)`` are its command-line flags (nested dataclass fields
            are walked too); ``settings()`` are the defaults.
        compute: ``(context, settings) -> Block``: the figures, from the context's frozen features, backbone,
            data or run.
        rows: ``eval.json content -> [(name, value)]``: its lines of the text table ([] when it has no figure).
        empty: the top-level ``eval.json`` keys it holds when it does not run (e.g. ``{"knn_top1": None}``).
        columns: its columns in suite summaries.
        default_on: run when ``--protocols`` is not given (then ``--no-NAME`` turns it off).
        switch: the settings field whose flag, when given, also turns the protocol on (``--lowshot 1,16``).
        needs_labels: skipped (its ``empty`` keys stay) when the data has no class labels.
        trained_only: measures what training produced (the run's clusters): left out for an untrained encoder.
        notes: ``eval.json content -> [line]``: lines printed under the table (e.g. why it was skipped).
    """

    name: str
    help: str
    settings: type
    compute: Callable[[EvalContext, Any], Block]
    rows: Callable[[Mapping[str, Any]], Rows] = _no_rows
    empty: Mapping[str, Any] = field(default_factory=dict)
    columns: tuple[SummaryColumn, ...] = ()
    default_on: bool = False
    switch: str | None = None
    needs_labels: bool = True
    trained_only: bool = False
    notes: Callable[[Mapping[str, Any]], list[str]] = _no_notes


PROTOCOLS: dict[str, Protocol] = {}  # name -> protocol, in registration order


def register_protocol(protocol: Protocol) -> Protocol:
    """Add ``protocol`` to :data:`PROTOCOLS` (again registering the same object is a no-op); returns it."""
    if not dataclasses.is_dataclass(protocol.settings):
        raise TypeError(f"protocol {protocol.name!r}: settings must be a dataclass, got {protocol.settings!r}")
    names = {f.name for f in dataclasses.fields(protocol.settings)}
    if protocol.switch is not None and protocol.switch not in names:
        raise TypeError(f"protocol {protocol.name!r}: switch {protocol.switch!r} is not a field of its settings")
    old = PROTOCOLS.get(protocol.name)
    if old is not None and old is not protocol:
        raise ValueError(f"an evaluation protocol named {protocol.name!r} is already registered")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def _builtins() -> dict[str, Protocol]:
    """:data:`PROTOCOLS` with the built-in protocols registered."""
    import pcl.eval.protocols  # noqa: F401 - registers them

    return PROTOCOLS


def choose(*names: str, **settings: Any) -> dict[str, Any]:
    """Chosen protocols -> their settings, in registry order: ``names`` with default settings, and the keyword
    arguments' protocols with the given settings, e.g. ``choose("knn", lowshot=LowShotConfig(ks=(1,)))``."""
    registry = _builtins()
    wanted = set(names) | set(settings)
    unknown = sorted(wanted - set(registry))
    if unknown:
        raise PCLError(f"unknown protocol {', '.join(unknown)}; choose from {','.join(registry)}")
    return {n: settings[n] if n in settings else p.settings() for n, p in registry.items() if n in wanted}


def default_protocols() -> dict[str, Any]:
    """The protocols that run by default, with their default settings."""
    return choose(*(n for n, p in _builtins().items() if p.default_on))


# ---------------------------------------------------------------------- settings dataclasses and their flags


@dataclass(frozen=True)
class SettingFlag:
    """A flag of a settings dataclass: the field's path from the settings class down, its flag, its default."""

    path: tuple[str, ...]
    flag: Flag
    default: Any


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]


def setting_flags(cls: type) -> list[SettingFlag]:
    """Every flag of dataclass ``cls``, nested dataclass fields included (depth first, in field order)."""
    out: list[SettingFlag] = []
    for f in dataclasses.fields(cls):
        spec, default = flag_of(f), _default(f)
        if spec is not None:
            out.append(SettingFlag((f.name,), spec, default))
        elif dataclasses.is_dataclass(default):
            out += [dataclasses.replace(s, path=(f.name, *s.path)) for s in setting_flags(type(default))]
    return out


def settings_from(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of dataclass ``cls`` whose flag-carrying fields are read by flag dest from ``values`` (missing:
    the default; a list for a tuple-valued field becomes a tuple); nested dataclass fields are filled the same."""
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        spec, default = flag_of(f), _default(f)
        if spec is not None and spec.dest in values:
            value = values[spec.dest]
            kw[f.name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
        elif spec is None and dataclasses.is_dataclass(default):
            kw[f.name] = settings_from(type(default), values)
    return cls(**kw)


def check_settings(settings: Any) -> None:
    """Check every flag-carrying field of dataclass instance ``settings`` (nested ones too) against its range."""
    check_fields(settings)
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_settings(value)


# ---------------------------------------------------------------------- helpers for protocol modules


def figure(node: Any, *path: str) -> float | None:
    """The number at ``path`` in nested dicts (``figure(evaluation, "lowshot", "1", "top1")``), else None."""
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def test_count(evaluation: Mapping[str, Any], key: str = "n_test") -> int | None:
    """The number of test (``n_test``) or train (``n_train``) images of an evaluation, from its settings."""
    n = (evaluation.get("settings") or {}).get(key)
    return int(n) if isinstance(n, int) and n > 0 else None


def accuracy_se(evaluation: Mapping[str, Any], percent: float | None, key: str = "n_test") -> float | None:
    """Binomial standard error (points) of an accuracy of ``percent`` % over the evaluation's ``key`` images."""
    n = test_count(evaluation, key)
    return None if percent is None or n is None else binomial_se(percent, n)


def draws_se(evaluation: Mapping[str, Any], block: Any, key: str = "top1", n_key: str = "n_test",
             draws: int | None = None, scale: float = 1.0) -> float | None:  # fmt: skip
    """Standard error of a mean over draws (``block[key]``, ``block[key + "_std"]``, ``draws`` or
    ``len(block["draws"])`` of them): ``sqrt(std^2 / draws + binomial^2)``, the spread of the draws and the test
    images' binomial error together (points, after ``scale``)."""
    if not isinstance(block, Mapping) or block.get(key) is None:
        return None
    count = draws if draws is not None else len(block.get("draws") or []) or 1
    std = float(block.get(key + "_std") or 0.0) * scale
    binom = accuracy_se(evaluation, float(block[key]) * scale, n_key)
    return None if binom is None else math.sqrt(std * std / count + binom * binom)


def pm(block: Mapping[str, Any], key: str, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    """``block[key] +- block[key_std]``, scaled and rounded (a table cell)."""
    return f"{scale * block[key]:.{digits}f}{unit} +- {scale * block[key + '_std']:.{digits}f}"
