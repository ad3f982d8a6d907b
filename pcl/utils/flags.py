"""Flags declared once: a config dataclass field carries its command-line flag, help, choices and valid range.

    lr: float | None = flag(None, "--lr", type=float, gt=0, help="base lr (default: per optimizer)")

:func:`flag` returns a ``dataclasses.field`` whose metadata holds a :class:`Flag`; ``pcl.config.build_parser``
adds the flag of every field of the configuration, in the ``-h`` group of its dataclass (its ``GROUP`` class
attribute) unless the field names another (``group=``). Each config's ``validate()`` calls :func:`check_fields`,
which checks every value against its declared choices and range (finite unless ``finite=False``; ``None`` =
"default" always passes), so a value from a ``--config`` file passes exactly the checks its flag passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcl.utils.errors import PCLError

_KEY = "flag"


def int_list(text: str) -> list[int]:
    """argparse type of comma lists such as ``--num-cluster 50,100,200``."""
    try:
        items = [x.strip() for x in text.split(",")]
        if text.strip() and "" in items:  # "10,,20": a missing value, not "10,20"
            raise ValueError
        return [int(x) for x in items if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    """argparse type of comma lists of numbers such as ``--wd-grid 1e-4,1e-2`` (at least one)."""
    try:
        items = [x.strip() for x in text.split(",")]
        if "" in items:  # "", "1,,2" or "1,": a missing value
            raise ValueError
        return [float(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Flag:
    """One field's command-line flag: argparse options plus the valid range of its value(s)."""

    names: tuple[str, ...]  # ("-a", "--arch"), or ("data",) for a positional
    help: str | None = None
    choices: tuple[Any, ...] | None = None
    type: Callable[[str], Any] | None = None
    action: Any = None  # "store_true", argparse.BooleanOptionalAction, ...
    nargs: str | None = None
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    finite: bool = True  # NaN / inf refused (numeric flags)
    group: str | None = None  # -h group; None: the dataclass's GROUP
    help_first: bool = False  # listed first in its -h group (before the fields of earlier sections)

    @property
    def name(self) -> str:
        """The flag as messages spell it: the long option (``--arch``), or the positional's name."""
        return next((n for n in self.names if n.startswith("--")), self.names[-1])

    @property
    def dest(self) -> str:
        """argparse's dest: ``--kmeans-niter`` -> ``kmeans_niter``."""
        return self.name.lstrip("-").replace("-", "_")

    @property
    def numeric(self) -> bool:
        """True for flags whose values are numbers (ranges apply to each)."""
        return self.type in (int, float, int_list, float_list)

    def add_to(self, parser: argparse._ActionsContainer, default: Any) -> argparse.Action:
        """Add this flag with ``default`` (the field's) to ``parser`` or an argument group."""
        kw: dict[str, Any] = {"default": default, "help": self.help}
        for key in ("choices", "type", "action", "nargs"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        if self.names[0].startswith("-"):
            kw["dest"] = self.dest
        return parser.add_argument(*self.names, **kw)

    def range_text(self) -> str:
        """The declared range in words: ``positive``, ``>= 0``, ``in [0, 1)``; empty when unbounded."""
        lo = f"[{_fmt(self.ge)}" if self.ge is not None else f"({_fmt(self.gt)}" if self.gt is not None else None
        hi = f"{_fmt(self.le)}]" if self.le is not None else f"{_fmt(self.lt)})" if self.lt is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return "positive" if self.gt == 0 else f"> {_fmt(self.gt)}" if self.gt is not None else f">= {lo[1:]}"
        if hi:
            return f"<= {hi[:-1]}" if self.le is not None else f"< {hi[:-1]}"
        return ""

    def check(self, value: Any) -> None:
        """Raise a one-line ``PCLError`` naming the flag when ``value`` is not one of its choices, or it (or an
        item of a list / tuple) is out of range."""
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            listed = ", ".join(str(c) for c in self.choices)
            raise PCLError(f"{self.name} must be one of {listed}, got {value!r}")
        if not self.numeric:
            return
        for v in value if isinstance(value, list | tuple) else [value]:
            ok = not (self.finite and not math.isfinite(v))
            ok = ok and (self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
            ok = ok and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt)
            if not ok:
                words = self.range_text()
                if self.finite and not (isinstance(v, float) and math.isnan(v)) and not math.isfinite(v):
                    words = "a finite positive number" if words == "positive" else f"a finite number {words}".rstrip()
                raise PCLError(f"{self.name} must be {words or 'a finite number'}, got {v}")


def flag(default: Any = dataclasses.MISSING, *names: str, default_factory: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with ``default`` (or ``default_factory``) whose flag is ``names`` (default
    ``--field-name``, filled by :func:`flag_of`); ``kw`` are :class:`Flag`'s other attributes."""
    if "type" not in kw and "action" not in kw and isinstance(default, (int, float)) and not isinstance(default, bool):
        kw["type"] = type(default)
    if "type" not in kw and isinstance(default, Path):
        kw["type"] = Path
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: (names, kw)})


def flag_of(f: dataclasses.Field) -> Flag | None:
    """The :class:`Flag` of dataclass field ``f`` (``None`` for fields without a flag)."""
    spec = f.metadata.get(_KEY)
    if spec is None:
        return None
    names, kw = spec
    return Flag(names=names or ("--" + f.name.replace("_", "-"),), **kw)


def flag_group(cls: type, f: dataclasses.Field) -> str | None:
    """The ``-h`` group of field ``f`` of dataclass ``cls``: its flag's ``group``, else ``cls.GROUP``."""
    spec = flag_of(f)
    if spec is None:
        return None
    return spec.group or getattr(cls, "GROUP", None)


def field_flag(cls: type, name: str) -> Flag:
    """The :class:`Flag` of field ``name`` of dataclass ``cls``."""
    found = flag_of({f.name: f for f in dataclasses.fields(cls)}[name])
    if found is None:
        raise KeyError(f"{cls.__name__}.{name} declares no flag")
    return found


def check_fields(cfg: Any) -> None:
    """Check every flag-carrying field of dataclass instance ``cfg`` against its declared range."""
    for f in dataclasses.fields(cfg):
        spec = flag_of(f)
        if spec is not None:
            spec.check(getattr(cfg, f.name))


@dataclass(frozen=True)
class Ranged:
    """argparse ``type`` of a tool's numeric flag with its valid range: parses, checks, and refuses with
    argparse's one-line error (``argument --k: must be positive, got 0``). ``spec`` holds the range."""

    spec: Flag

    def __call__(self, text: str) -> Any:
        kind = self.spec.type
        try:
            value = kind(text)  # type: ignore[misc]
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {getattr(kind, '__name__', 'number')} value: {text!r}") from None
        try:
            self.spec.check(value)
        except PCLError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{self.spec.name} ")) from None
        return value


def ranged(kind: Callable[[str], Any], **bounds: Any) -> Ranged:
    """A tool flag's ``type``: ``kind`` (int, float, int_list, float_list) within ``bounds`` (``ge``/``gt``/``le``/
    ``lt``, ``finite``), e.g. ``p.add_argument("--k", type=ranged(int, gt=0))``."""
    return Ranged(Flag(names=("value",), type=kind, **bounds))
