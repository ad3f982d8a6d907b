"""Checkpoint stage: atomic writes, finite-only state, RNG capture for exact resume."""

from __future__ import annotations

import random
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pcl.utils.atomic import write_atomic
from pcl.utils.errors import PCLError


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generator states captured by :func:`rng_state` (CUDA ones only where CUDA exists)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _float_tensors(obj: object, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _float_tensors(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _float_tensors(v, f"{path}[{i}]")


def non_finite_entries(state: dict) -> list[str]:
    """Names of floating-point tensors in ``state`` that hold NaN or Inf."""
    return [name for name, t in _float_tensors(state) if not bool(torch.isfinite(t).all())]


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` via a temporary file and rename; refuses non-finite tensors."""
    bad = non_finite_entries(state)
    if bad:
        raise PCLError(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(state, f), "checkpoint")


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Make ``dst`` an independent copy of the just-written checkpoint ``src``, atomically (never a hard link:
    overwriting one file in place must not change the other)."""
    with open(src, "rb") as f:
        write_atomic(dst, lambda out: shutil.copyfileobj(f, out, 1 << 24), "checkpoint")


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint onto the CPU, with a clear error for a missing or unreadable file."""
    if path.is_dir():
        hint = next((p for p in (path / "checkpoints" / "last.pth", path / "last.pth") if p.is_file()), None)
        expected = f"{hint}" if hint else f"a .pth file such as {path / 'checkpoints' / 'last.pth'}"
        raise PCLError(f"checkpoint {path} is a directory; expected {expected}")
    if not path.is_file():
        raise PCLError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive: a truncated file or another format
        raise PCLError(f"checkpoint {path} cannot be read: not a (complete) file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise PCLError(f"checkpoint {path} cannot be read: {e}") from None
