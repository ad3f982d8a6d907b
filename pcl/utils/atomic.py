"""Atomic file writes shared by checkpoints, feature shards, run records and suite results: temporary file,
fsync, rename; a failed write (a full disk above all) is one ``PCLError`` line naming the disk."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pcl.utils.errors import PCLError

TMP_SUFFIX = ".tmp"
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's message for a write cut short (full disk)


def _interrupted(e: BaseException) -> bool:
    """True for Ctrl-C, also when torch re-raised it as a ``RuntimeError`` from its zip writer."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def write_atomic(path: Path, write: Callable[[BinaryIO], None], what: str, hint: str = "") -> None:
    """Call ``write(f)`` on ``path.tmp``, fsync and rename it to ``path``.

    A write failure (``OSError``, or the ``RuntimeError`` torch's zip writer turns it into, e.g. on a full
    disk) becomes a one-line ``PCLError`` ("could not write {what} {path}: {reason}{hint}"). Whatever stops
    the write (Ctrl-C, a signal, an error) removes the temporary file; ``path`` is either the old or the new
    complete file, never a partial one.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _interrupted(e):
            raise KeyboardInterrupt from None
        if isinstance(e, OSError | RuntimeError):
            raise write_error(e, path, what, hint) from None
        raise


def write_bytes_atomic(path: Path, data: bytes, what: str) -> None:
    """``data`` as the whole of ``path`` (or the old file on failure): :func:`write_atomic` of one buffer."""
    write_atomic(path, lambda f: f.write(data), what)


def write_error(e: BaseException, path: Path, what: str, hint: str = "") -> PCLError:
    """The one-line error of a failed write of ``what`` to ``path`` ("could not write ...: No space left on
    device (the disk holding ... is full)"), for writers that cannot go through :func:`write_atomic` (a lock
    file, a folder)."""
    return PCLError(f"could not write {what} {path}: {failure_reason(e, path)}{hint}")


def failure_reason(e: BaseException, path: Path) -> str:
    """The OS-level reason of a write failure (torch hides the ``OSError`` in the exception chain); a full disk
    (``ENOSPC``, or numpy's "8192 requested and 6112 written") is named as such, with the folder."""
    full = f"No space left on device (the disk holding {path.parent} is full)"
    cur: BaseException | None = e
    while cur is not None:
        if isinstance(cur, OSError) and (cur.errno == errno.ENOSPC or SHORT_WRITE.search(str(cur))):
            return full
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        cur = cur.__cause__ or cur.__context__
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return full if SHORT_WRITE.search(first) else first


def remove_stale_temporaries(*directories: Path) -> list[Path]:
    """Delete ``*.tmp`` files left by a killed writer in ``directories`` (not recursive); returns them.

    Call only while holding the exp-dir lock, so that no live writer owns them.
    """
    removed = []
    for d in directories:
        if not d.is_dir():
            continue
        for tmp in d.glob(f"*{TMP_SUFFIX}"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed
