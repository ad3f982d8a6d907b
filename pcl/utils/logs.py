"""What a run prints, for a terminal and for a log file alike: progress bars only on a terminal, and the run
folder's ``train.log`` written by the run itself, whatever started it.

- :func:`progress`: a tqdm bar on the terminal's stderr, none when that is not a terminal (a file, a pipe, a
  SLURM log): a log then holds the greppable lines (``epoch N: ...``) and no carriage returns. Bars never go
  into ``train.log``.
- :class:`LogTee`: from :meth:`LogTee.start` on, every line written to ``sys.stdout`` / ``sys.stderr`` is also
  appended to a file (``RunDir.train_log``), unless the process's stdout already is that file (the suite
  runner and the submitit task redirect it there: no line twice). Writes holding a carriage return (progress
  bars) stay off the file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def terminal(stream: IO[str] | None = None) -> IO[str]:
    """The stream under a :class:`LogTee` (``stream`` or ``sys.stderr`` itself when not teed)."""
    s = sys.stderr if stream is None else stream
    return getattr(s, "terminal", s)


def is_terminal(stream: IO[str]) -> bool:
    """True when ``stream`` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress(iterable: Iterable[T], desc: str, total: int | None = None, show: bool = True, **kwargs: Any) -> tqdm:
    """A progress bar over ``iterable`` on the terminal's stderr; disabled when ``show`` is False or stderr is
    not a terminal (``leave=False``; ``kwargs`` go to tqdm)."""
    stream = terminal()
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc, total, disable=not (show and is_terminal(stream)), file=stream, **kwargs)


def say(line: str, err: bool = False) -> None:
    """Print ``line`` on stdout (``err``: stderr) without breaking a progress bar."""
    tqdm.write(line, file=sys.stderr if err else sys.stdout)


class _Tee:
    """A text stream writing to ``terminal`` and, without carriage-return writes, to ``log``."""

    def __init__(self, terminal: IO[str], log: IO[str]) -> None:
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        n = self.terminal.write(text)
        if "\r" not in text and not self.log.closed:
            self.log.write(text)
        return n

    def flush(self) -> None:
        self.terminal.flush()
        if not self.log.closed:
            self.log.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... of the terminal
        return getattr(self.terminal, name)


def _writes_to(stream: IO[str], path: Path) -> bool:
    """True when ``stream``'s file descriptor is the file ``path`` (already redirected there)."""
    try:
        return path.exists() and os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (AttributeError, ValueError, OSError):
        return False


class LogTee:
    """Context manager: inside it, :meth:`start` copies stdout and stderr to a log file; leaving stops it."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None
        self.saved: tuple[IO[str], IO[str]] | None = None
        self.path: Path | None = None

    def start(self, path: Path) -> None:
        """Append every later line of stdout / stderr to ``path`` (a no-op when stdout already writes it, or
        when started already)."""
        if self.saved is not None or _writes_to(sys.stdout, path):
            self.path = path
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed by stop()
        self.saved, self.path = (sys.stdout, sys.stderr), path
        sys.stdout, sys.stderr = _Tee(sys.stdout, self.file), _Tee(sys.stderr, self.file)  # type: ignore[assignment]

    def stop(self) -> None:
        """Restore the streams and close the file."""
        if self.saved is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = self.saved
            self.saved = None
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> LogTee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
