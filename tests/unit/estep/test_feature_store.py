"""Disk shards of E-step features: round trip, memory-mapped streaming, clean-up, write failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcl.estep.clustering import assign
from pcl.estep.feature_store import FeatureStore, ShardWriter
from pcl.utils.errors import PCLError


def write_store(
    directory: Path, feats: np.ndarray, idx: np.ndarray, batch: int = 7, shard_rows: int = 10, dtype: str = "float32"
) -> FeatureStore:
    w = ShardWriter(directory, feats.shape[1], dtype=dtype, shard_rows=shard_rows)
    for s in range(0, len(idx), batch):
        w.add(torch.from_numpy(feats[s : s + batch]), torch.from_numpy(idx[s : s + batch]))
    return w.close()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_keeps_rows_indices_and_dtype(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((53, 4)).astype(np.float32)
    idx = rng.permutation(100)[:53].astype(np.int64)  # arbitrary, non-contiguous dataset indices
    store = write_store(tmp_path, feats, idx, dtype=dtype)
    assert len(store) == 53 and len(store.stems) == 6  # 5 full shards of 10 + one of 3
    got_idx, got_feats = zip(*store.shards(), strict=True)
    assert all(isinstance(f, np.memmap) and f.dtype == np.dtype(dtype) for f in got_feats)
    np.testing.assert_array_equal(np.concatenate(got_idx), idx)
    tol = 0 if dtype == "float32" else 1e-3
    np.testing.assert_allclose(np.concatenate(got_feats).astype(np.float32), feats, atol=tol * 4, rtol=tol)
    rows = np.array([0, 9, 10, 11, 52])
    np.testing.assert_allclose(store.take(rows), feats[rows], atol=tol * 4, rtol=tol)


def test_streamed_assignment_equals_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((200, 8)).astype(np.float32)
    centroids = torch.from_numpy(rng.standard_normal((7, 8)).astype(np.float32))
    store = write_store(tmp_path, feats, np.arange(200), batch=32, shard_rows=50)
    streamed_ids = np.empty(200, dtype=np.int64)
    streamed_d = np.empty(200, dtype=np.float32)
    for idx, f in store.shards():
        ids, d = assign(torch.from_numpy(np.array(f)), centroids, chunk=16)
        streamed_ids[idx], streamed_d[idx] = ids.numpy(), d.numpy()
    x = torch.from_numpy(feats)
    brute = torch.cdist(x, centroids) ** 2
    np.testing.assert_array_equal(streamed_ids, brute.argmin(1).numpy())
    np.testing.assert_allclose(streamed_d, brute.min(1).values.numpy(), rtol=1e-4, atol=1e-4)


def test_delete_removes_all_shards(tmp_path: Path) -> None:
    d = tmp_path / "epoch0000"
    store = write_store(d, np.ones((25, 2), np.float32), np.arange(25))
    assert any(d.iterdir())
    store.delete()
    assert not d.exists()


def test_incomplete_store_is_rejected(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, 2, shard_rows=4)
    w.add(torch.ones(5, 2), torch.arange(5))  # one shard written, no completion marker
    with pytest.raises(PCLError, match="incomplete"):
        FeatureStore(tmp_path)


def test_stale_shards_of_an_interrupted_attempt_are_removed(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, 2, shard_rows=4)
    w.add(torch.ones(9, 2), torch.arange(9))  # interrupted: 2 shards, no marker
    store = write_store(tmp_path, np.zeros((3, 2), np.float32), np.arange(3))
    assert len(store) == 3 and len(list(tmp_path.glob("*.npy"))) == 2


def test_write_failure_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    w = ShardWriter(tmp_path, 2, shard_rows=4)
    with pytest.raises(PCLError, match=r"No space left on device.*--feature-dir"):
        w.add(torch.ones(4, 2), torch.arange(4))
    assert not list(tmp_path.glob("*.tmp"))
