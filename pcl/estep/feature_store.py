"""Feature store: E-step features streamed to disk shards with their dataset indices, read back by mmap.

Layout of a store directory (one per epoch and rank)::

    <dir>/<prefix>-000000.feat.npy   (rows, d) float32 or float16
    <dir>/<prefix>-000000.idx.npy    (rows,) int64 dataset indices
    <dir>/<prefix>.done              written last: a store without it is incomplete

Each file is written to a temporary name and renamed, so a crash never leaves a half-written shard
that looks complete. Host memory while writing is one shard; while reading, one memory-mapped shard. A writer
buffers its batches where they are (on the accelerator) and moves them to the host once per shard, so writing a
batch never waits for the device. :meth:`ShardWriter.state` / :meth:`ShardWriter.restore` carry an open writer
through a checkpoint (``--estep-features bank``: the M-step writes the next E-step's store).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pcl.utils.atomic import write_atomic
from pcl.utils.errors import PCLError

DTYPES = {"float32": np.float32, "float16": np.float16}


SHARD_HINT = (
    "; free space or point --feature-dir elsewhere, then rerun with --resume auto "
    "(the last checkpoint is intact, the E-step reruns)"
)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda f: np.save(f, array), "feature shard", SHARD_HINT)


class ShardWriter:
    """Buffers ``(B, d)`` feature batches and writes a shard every ``shard_rows`` rows.

    ``clear``: remove this prefix's files of an interrupted earlier attempt first (:meth:`restore` keeps them).
    """

    def __init__(
        self,
        directory: Path,
        dim: int,
        dtype: str = "float32",
        shard_rows: int = 65536,
        prefix: str = "rank0",
        clear: bool = True,
    ) -> None:
        if dtype not in DTYPES:
            raise PCLError(f"unknown feature dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        self.dir, self.dim, self.dtype, self.shard_rows, self.prefix = (
            Path(directory),
            dim,
            DTYPES[dtype],
            shard_rows,
            prefix,
        )
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PCLError(f"cannot create feature directory {self.dir}: {e.strerror or e}") from None
        for stale in self.dir.glob(f"{prefix}[-.]*") if clear else ():  # an interrupted earlier attempt
            stale.unlink()
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # batches not yet on the host
        self._feats: list[np.ndarray] = []
        self._idx: list[np.ndarray] = []
        self._buffered = 0
        self.num_shards = 0
        self.rows = 0

    def add(self, features: torch.Tensor, indices: torch.Tensor) -> None:
        """Append ``(B, d)`` features and their ``(B,)`` dataset indices (kept on their device until a shard is due)."""
        self._pending.append((features.detach(), indices.detach()))
        self._buffered += features.shape[0]
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _to_host(self) -> None:
        """Move the pending batches into the host buffer (in the shard dtype)."""
        for feats, idx in self._pending:
            self._feats.append(feats.float().cpu().numpy().astype(self.dtype, copy=False))
            self._idx.append(idx.cpu().numpy().astype(np.int64, copy=False))
        self._pending = []

    def _host_buffer(self) -> tuple[np.ndarray, np.ndarray]:
        """The buffered rows not yet in a shard: ``(features (n, d), indices (n,))``."""
        self._to_host()
        if not self._idx:
            return np.zeros((0, self.dim), dtype=self.dtype), np.zeros(0, dtype=np.int64)
        return np.concatenate(self._feats), np.concatenate(self._idx)

    def _flush(self, rows: int) -> None:
        feats, idx = self._host_buffer()
        stem = self.dir / f"{self.prefix}-{self.num_shards:06d}"
        _save_atomic(stem.with_suffix(".feat.npy"), feats[:rows])
        _save_atomic(stem.with_suffix(".idx.npy"), idx[:rows])
        self._feats, self._idx = ([feats[rows:]], [idx[rows:]]) if rows < len(idx) else ([], [])
        self._buffered -= rows
        self.num_shards += 1
        self.rows += rows

    def close(self) -> FeatureStore:
        """Write the remaining rows and the completion marker; returns the store for reading."""
        if self._buffered:
            self._flush(self._buffered)
        marker = self.dir / f"{self.prefix}.done"
        meta = {"rows": self.rows, "dim": self.dim, "dtype": np.dtype(self.dtype).name, "shards": self.num_shards}
        try:
            marker.write_text(json.dumps(meta))
        except OSError as e:
            raise PCLError(f"could not write {marker}: {e.strerror or e}") from None
        return FeatureStore(self.dir, self.prefix)

    def _stem(self, i: int) -> Path:
        return self.dir / f"{self.prefix}-{i:06d}"

    def indices(self) -> np.ndarray:
        """Dataset indices of every row written so far, shards and buffer, in write order: ``(rows,)`` int64."""
        parts = [np.load(self._stem(i).with_suffix(".idx.npy")) for i in range(self.num_shards)]
        return np.concatenate([*parts, self._host_buffer()[1]]).astype(np.int64, copy=False)

    def state(self) -> dict:
        """Everything :meth:`restore` needs to continue this writer: its settings, the shards written so far (on
        disk) and the buffered rows (in the dict)."""
        feats, idx = self._host_buffer()
        return {
            "dir": str(self.dir),
            "prefix": self.prefix,
            "dim": self.dim,
            "dtype": np.dtype(self.dtype).name,
            "shard_rows": self.shard_rows,
            "num_shards": self.num_shards,
            "rows": self.rows,
            "buffer_features": feats.copy(),
            "buffer_indices": idx.copy(),
        }

    @classmethod
    def restore(cls, state: dict) -> ShardWriter | None:
        """The writer :meth:`state` described, its later shards (written after that state) and completion marker
        removed; None when a shard it had written is gone (e.g. deleted after its E-step)."""
        w = cls(Path(state["dir"]), int(state["dim"]), state["dtype"], int(state["shard_rows"]), state["prefix"], False)
        n = int(state["num_shards"])
        if any(not w._stem(i).with_suffix(s).is_file() for i in range(n) for s in (".feat.npy", ".idx.npy")):
            return None
        for path in w.dir.glob(f"{w.prefix}-*.npy"):
            if int(path.name[len(w.prefix) + 1 :].split(".")[0]) >= n:
                path.unlink()
        (w.dir / f"{w.prefix}.done").unlink(missing_ok=True)
        w.num_shards, w.rows = n, int(state["rows"])
        feats, idx = np.asarray(state["buffer_features"]), np.asarray(state["buffer_indices"])
        if len(idx):
            w._feats, w._idx, w._buffered = [feats.astype(w.dtype, copy=True)], [idx.astype(np.int64)], len(idx)
        return w


@dataclass
class FeatureStore:
    """Read side of one rank's completed shards in ``directory``."""

    directory: Path
    prefix: str = "rank0"

    def __post_init__(self) -> None:
        marker = self.directory / f"{self.prefix}.done"
        if not marker.is_file():
            raise PCLError(f"feature store {self.directory} ({self.prefix}) is incomplete: no {marker.name}")
        meta = json.loads(marker.read_text())
        self.rows, self.dim, self.dtype = int(meta["rows"]), int(meta["dim"]), meta["dtype"]
        self.stems = [self.directory / f"{self.prefix}-{i:06d}" for i in range(int(meta["shards"]))]

    def __len__(self) -> int:
        return self.rows

    def shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices (n,), features (n, d))`` per shard; features are read-only memory maps."""
        for stem in self.stems:
            yield np.load(stem.with_suffix(".idx.npy")), np.load(stem.with_suffix(".feat.npy"), mmap_mode="r")

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Float32 copy of the store rows at sorted positions ``rows`` (0..len-1, store order): ``(n, d)``."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        start, filled = 0, 0
        for _, feats in self.shards():
            stop = start + feats.shape[0]
            lo, hi = np.searchsorted(rows, [start, stop])
            out[filled : filled + hi - lo] = feats[rows[lo:hi] - start]
            filled += hi - lo
            start = stop
        return out

    def delete(self) -> None:
        """Remove this rank's shards (and the directory when it is left empty)."""
        for stem in self.stems:
            for suffix in (".feat.npy", ".idx.npy"):
                stem.with_suffix(suffix).unlink(missing_ok=True)
        (self.directory / f"{self.prefix}.done").unlink(missing_ok=True)
        _remove_if_empty(self.directory)


def _remove_if_empty(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        shutil.rmtree(directory, ignore_errors=True)


def remove_shards(directory: Path, prefix: str) -> None:
    """Remove every file of ``prefix`` in ``directory``, complete store or not (and the directory if left empty)."""
    for path in directory.glob(f"{prefix}[-.]*"):
        path.unlink(missing_ok=True)
    _remove_if_empty(directory)
