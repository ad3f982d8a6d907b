"""Atomic writes: a full disk is named as such, with the folder, whatever form the error takes."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch

from pcl.utils.atomic import write_atomic
from pcl.utils.errors import PCLError


@pytest.mark.parametrize(
    "exc",
    [
        OSError("8192 requested and 6112 written"),  # numpy's np.save on a full disk (no errno)
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 123 vs 456"),
    ],
)
def test_a_full_disk_names_the_disk_and_the_folder(tmp_path: Path, exc: BaseException) -> None:
    path = tmp_path / "features" / "rank0-000000.feat.npy"
    path.parent.mkdir()

    def write(f: BinaryIO) -> None:
        if isinstance(exc, RuntimeError):  # torch's zip writer: the OSError is the context
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as inner:
                raise exc from inner
        raise exc

    with pytest.raises(PCLError) as info:
        write_atomic(path, write, "feature shard", "; free space")
    msg = str(info.value)
    assert msg.startswith(f"could not write feature shard {path}: No space left on device")
    assert f"the disk holding {path.parent} is full" in msg and msg.endswith("; free space")
    assert "requested" not in msg and not list(path.parent.iterdir())  # no temporary left behind


def test_numpy_short_write_through_np_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What np.save raises when the disk fills mid-array becomes the full-disk message."""
    import pcl.estep.feature_store as fs

    def short_write(f: BinaryIO, array: np.ndarray) -> None:
        raise OSError(f"{array.nbytes} requested and {array.nbytes // 2} written")

    monkeypatch.setattr(fs.np, "save", short_write)
    writer = fs.ShardWriter(tmp_path / "epoch0001", dim=4, shard_rows=2)
    with pytest.raises(PCLError, match=r"No space left on device \(the disk holding .*epoch0001 is full\)"):
        writer.add(torch.ones(2, 4), torch.arange(2))
