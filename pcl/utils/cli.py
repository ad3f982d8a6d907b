"""What every entry point shares: argparse errors as one ``error:`` line, exit 2, and the test PYTHONPATH."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

from pcl.utils.errors import PCLError

P = ParamSpec("P")


class ErrorParser(argparse.ArgumentParser):
    """argparse whose errors become one-line ``PCLError``s instead of usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PCLError(message)


def error_line(e: BaseException) -> str:
    """``error: <message>``: the last line only (errors raised in DataLoader workers arrive with the worker's
    traceback in their text)."""
    last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    return f"error: {last.removeprefix('pcl.utils.errors.PCLError: ')}"


def report_error(e: BaseException) -> int:
    """Print ``e`` as one ``error:`` line on stderr; returns the exit status of bad input, 2."""
    print(error_line(e), file=sys.stderr)
    return 2


def entry_point(*extra: type[BaseException]) -> Callable[[Callable[P, int]], Callable[P, int]]:
    """Decorator of a tool's ``main``: a ``PCLError`` (or one of ``extra``) becomes one ``error:`` line, exit 2."""

    def wrap(main: Callable[P, int]) -> Callable[P, int]:
        @functools.wraps(main)
        def run(*args: P.args, **kwargs: P.kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except (PCLError, *extra) as e:
                return report_error(e)

        return run

    return wrap


def folder_arg(path: Path | str | None, flag: str) -> None:
    """A flag that names a folder (created if missing) must not name a file: one ``PCLError`` line."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise PCLError(f"{flag} {path} is a file, not a folder")


def pythonpath_env(root: Path | str) -> dict[str, str]:
    """``os.environ`` with ``root`` first on ``PYTHONPATH``: a subprocess imports this checkout's ``pcl``."""
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}
