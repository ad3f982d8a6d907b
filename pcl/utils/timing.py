"""Timing stage: wall-clock seconds per part of an epoch (E-step features, k-means, M-step, ...).

The engine logs them as ``time/<part>_seconds`` per-epoch scalars. On CUDA a phase synchronises the device
at its start and end, so the seconds are the phase's own work, not whatever was still queued before it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")


class PhaseTimer:
    """Accumulates seconds per named phase until :meth:`pop`; ``enabled=False`` makes every call a no-op.

    ``cpu=True``: each :meth:`phase` also adds this process's CPU seconds as ``<name>_cpu`` (benchmarks on a
    shared machine; data-loader worker processes are not counted).
    """

    def __init__(self, device: torch.device | None = None, enabled: bool = True, cpu: bool = False) -> None:
        self.sync = device is not None and device.type == "cuda"
        self.enabled = enabled
        self.cpu = cpu
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        if self.enabled:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """``with timer.phase("kmeans"): ...`` adds the block's seconds (device-synchronised) to ``name``."""
        if not self.enabled:
            yield
            return
        if self.sync:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.add(name, time.perf_counter() - t0)
            if self.cpu:
                self.add(f"{name}_cpu", time.process_time() - c0)

    def timed_iter(self, items: Iterable[T], name: str) -> Iterator[T]:
        """Yield from ``items``, adding the time spent waiting for each item to ``name`` (no device sync)."""
        it = iter(items)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.add(name, time.perf_counter() - t0)
                return
            self.add(name, time.perf_counter() - t0)
            yield item

    def pop(self) -> dict[str, float]:
        """``{"time/<name>_seconds": s}`` for every phase so far, and start over."""
        out = {f"time/{name}_seconds": s for name, s in self.seconds.items()}
        self.seconds = {}
        return out


NULL_TIMER = PhaseTimer(enabled=False)
