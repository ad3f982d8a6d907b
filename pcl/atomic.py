"""Atomic file writes shared by checkpoints and feature shards: temporary file, fsync, rename."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pcl.errors import PCLError


def write_atomic(path: Path, write: Callable[[BinaryIO], None], what: str, hint: str = "") -> None:
    """Call ``write(f)`` on ``path.tmp``, fsync and rename it to ``path``; an ``OSError`` becomes a one-line
    ``PCLError`` ("could not write {what} {path}: {reason}{hint}") and leaves no temporary file behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PCLError(f"could not write {what} {path}: {e.strerror or e}{hint}") from None
