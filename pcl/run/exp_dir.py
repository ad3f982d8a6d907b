"""Exp-dir safety before training: usable directories, one run per exp-dir, no silent overwrite.

Rank 0 checks and locks the exp-dir; every rank checks its feature dir (it may be node-local). Any rank's
problem stops every rank with the same one-line error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from pcl.run.lock import ExpDirLock
from pcl.run.run_dir import RunDir
from pcl.utils import distributed as pdist
from pcl.utils.atomic import failure_reason, remove_stale_temporaries
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError


def usable_dir(path: Path, flag: str) -> None:
    """Create ``path`` if needed and prove it is a writable directory; else one-line ``PCLError`` (a full disk
    named as such)."""
    if path.exists() and not path.is_dir():
        raise PCLError(f"{flag} {path} exists and is not a directory")
    probe = path / f".write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise PCLError(f"{flag} {path} is not usable: {failure_reason(e, probe)}") from None


def existing_checkpoints(run_dir: RunDir) -> list[Path]:
    return sorted(run_dir.checkpoints.glob("*.pth")) if run_dir.checkpoints.is_dir() else []


def remove_run_outputs(run_dir: RunDir) -> None:
    """``--overwrite``: delete the previous run's outputs (never the exp-dir itself or foreign files)."""
    outputs = (run_dir.checkpoints, run_dir.tb, run_dir.clusters, run_dir.features, run_dir.config)
    for p in (*outputs, run_dir.metrics, run_dir.eval):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _main_checks(run_dir: RunDir, resume: str | None, overwrite: bool) -> tuple[ExpDirLock, list[str]]:
    """Rank 0: usable, locked, no checkpoint silently replaced, stale temporaries gone. Returns notes."""
    exp_dir = run_dir.root
    usable_dir(exp_dir, "--exp-dir")
    lock = ExpDirLock(exp_dir).acquire()
    notes = []
    try:
        if lock.stale:
            notes.append(
                f"took over the stale lock of a run that is gone ({lock.stale.get('pid')} on {lock.stale.get('host')})"
            )
        found = existing_checkpoints(run_dir)
        if found and not resume:
            if not overwrite:
                raise PCLError(
                    f"{exp_dir} already holds checkpoints ({', '.join(p.name for p in found[:3])}); "
                    "pass --resume auto to continue that run, or --overwrite to delete it and start over"
                )
            remove_run_outputs(run_dir)
            notes.append(f"--overwrite: removed the previous run's outputs in {exp_dir}")
        stale = remove_stale_temporaries(run_dir.checkpoints, run_dir.clusters, exp_dir)
        if stale:
            notes.append(f"removed {len(stale)} temporary file(s) left by an interrupted write")
    except BaseException:
        lock.release()
        raise
    return lock, notes


def prepare(
    run_dir: RunDir, feature_dir: Path, resume: str | None, overwrite: bool, info: DistInfo
) -> ExpDirLock | None:
    """All the exp-dir checks, on every rank together; returns rank 0's lock (release it at the end)."""
    lock, error = None, None
    try:
        if info.is_main:
            lock, notes = _main_checks(run_dir, resume, overwrite)
            for n in notes:
                print(n)
        usable_dir(feature_dir, "--feature-dir")
    except PCLError as e:
        error = str(e)
    errors = [e for e in pdist.all_gather_object(error) if e]
    if errors:
        if lock is not None:
            lock.release()
        raise PCLError(errors[0])
    return lock
