"""Exclusive lock on an exp-dir: one training run per directory.

``<exp-dir>/.lock`` holds the owner's pid, host, start time and SLURM job id (JSON). The lock itself is an
``flock`` on that file, which the kernel drops when the owner dies (SIGKILL, node reboot), so a lock file left
behind by a dead run is stale and taken over. On file systems without ``flock`` support the pid is checked
instead (same host only; a lock from another host must then be removed by hand).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from pcl.utils.atomic import write_error
from pcl.utils.errors import PCLError

LOCK_NAME = ".lock"
_HELD: set[int] = set()  # lock fds of this process


def _close_in_child() -> None:
    """A forked child (DataLoader worker) must not keep the lock alive after the run dies: close its copies
    (the parent's lock stays: ``flock`` is released only when every copy is closed)."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict) -> str:
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"


class LockBusy(PCLError):
    """The lock is held by another live process (the message names it)."""


def lock_owner(path: Path) -> dict | None:
    """The owner record (``pid``, ``host``, ``started``) of ``path`` while a live process holds it, else None."""
    return (_read(path) or {"pid": "?"}) if is_locked(path) else None


def is_locked(path: Path) -> bool:
    """True while a live process holds the ``flock`` of ``path`` (checked without taking it; no file, no lock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock on this file system: the recorded pid decides (same host only)
        info = _read(path)
        return info.get("host") == socket.gethostname() and _pid_alive(int(info.get("pid", -1)))
    finally:
        os.close(fd)
    return False


class ExpDirLock:
    """``acquire()`` takes the lock or raises ``PCLError`` naming the run that holds it; ``release()``.

    ``name``: the lock file in ``exp_dir`` (the trainer's ``.lock``; the suite runner holds its own).
    """

    def __init__(self, exp_dir: Path, name: str = LOCK_NAME) -> None:
        self.path = Path(exp_dir) / name
        self._fd: int | None = None
        self.stale: dict | None = None  # the previous owner's record when a stale lock was taken over

    def acquire(self) -> ExpDirLock:
        """Take the lock; ``LockBusy`` when a live process holds it, a one-line ``PCLError`` naming the disk
        when the lock file cannot be written (a full disk)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, self.path, "the lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockBusy(self._busy(_read(self.path))) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            self._check_without_flock()  # no flock on this file system: fall back to pid/host
        previous = _read(self.path)
        if previous.get("pid") not in (None, os.getpid()):
            self.stale = previous
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_owner()).encode(), 0)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)  # the flock goes with it
            raise write_error(e, self.path, "the lock file") from None
        self._fd = fd
        _HELD.add(fd)
        return self

    def _check_without_flock(self) -> None:
        info = _read(self.path)
        if not info or info.get("pid") == os.getpid():
            return
        same_job = info.get("slurm_job_id") and info.get("slurm_job_id") == os.environ.get("SLURM_JOB_ID")
        if same_job:  # an earlier incarnation of this (requeued) job
            return
        if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
            return
        raise LockBusy(self._busy(info))

    def _busy(self, info: dict) -> str:
        return (
            f"exp-dir {self.path.parent} is in use by another run ({_describe(info)}); wait for it, use another "
            f"--exp-dir, or delete {self.path} if that run is dead"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # emptied, not removed: a run that opened it meanwhile keeps its inode
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        _HELD.discard(self._fd)
        self._fd = None

    def __enter__(self) -> ExpDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
