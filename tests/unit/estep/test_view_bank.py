"""``--estep-features bank``: an open shard writer through a checkpoint, the bank's epochs, its completion by the
eval view of the images it lacks, and its clean-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pcl.estep.estep import EStepConfig, FeaturePass, bank_store, run_estep
from pcl.estep.feature_store import FeatureStore, ShardWriter
from pcl.estep.view_bank import ViewBank
from pcl.utils.distributed import DistInfo


def rows(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    idx, feats = zip(*store.shards(), strict=True)
    return np.concatenate(idx), np.concatenate(feats)


def test_writer_state_restores_exactly_and_drops_what_came_after(tmp_path: Path) -> None:
    """A writer restored from :meth:`ShardWriter.state` ends with the store an uninterrupted one writes, also
    when the interrupted one had written more shards (and its marker) after the state was taken."""
    x, idx = torch.randn(23, 4), torch.randperm(23)
    whole = ShardWriter(tmp_path / "whole", 4, "float16", shard_rows=5)
    for s in range(0, 23, 3):
        whole.add(x[s : s + 3], idx[s : s + 3])
    expected = rows(whole.close())

    w = ShardWriter(tmp_path / "cut", 4, "float16", shard_rows=5)
    for s in range(0, 12, 3):
        w.add(x[s : s + 3], idx[s : s + 3])
    state = w.state()  # 2 shards on disk, 2 rows in the buffer
    assert (state["num_shards"], len(state["buffer_indices"])) == (2, 2)
    for s in range(12, 23, 3):  # the run goes on after the checkpoint, then dies
        w.add(x[s : s + 3], idx[s : s + 3])
    w.close()
    back = ShardWriter.restore(state)
    assert back is not None and not (tmp_path / "cut" / "rank0.done").exists()
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [
        f"rank0-00000{i}.{s}.npy" for i in (0, 1) for s in ("feat", "idx")
    ]
    np.testing.assert_array_equal(back.indices(), idx[:12].numpy())
    for s in range(12, 23, 3):
        back.add(x[s : s + 3], idx[s : s + 3])
    got = rows(back.close())
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    (tmp_path / "cut" / "rank0-000000.feat.npy").unlink()
    assert ShardWriter.restore(state) is None  # a shard it had written is gone


def _bank(tmp_path: Path, **kw: object) -> ViewBank:
    return ViewBank(EStepConfig(feature_dir=tmp_path / "features", **kw), dim=4, first=2, last=5)


def test_the_bank_is_written_only_in_epochs_followed_by_an_estep(tmp_path: Path) -> None:
    bank = _bank(tmp_path)
    open_for = []
    for epoch in range(5):  # E-steps at epochs 2, 3, 4 (warmup 2, 5 epochs)
        bank.begin(epoch, rank=0)
        open_for.append(bank.epoch)
        bank.add(torch.randn(2, 4), torch.tensor([0, 1]))
    assert open_for == [None, 2, 3, 4, None]
    assert bank.take(4) is None  # epoch 4 wrote nothing (no E-step 5)


def test_after_save_keeps_only_the_open_store(tmp_path: Path) -> None:
    bank = _bank(tmp_path)
    bank.begin(1, rank=0)
    bank.add(torch.randn(3, 4), torch.arange(3))
    bank.take(2).close()  # E-step 2 used it
    bank.begin(2, rank=0)
    bank.add(torch.randn(3, 4), torch.arange(3))
    bank.writer.add(torch.randn(5, 4), torch.arange(5))
    bank.writer._flush(5)  # a shard of the open store on disk
    bank.after_save(rank=0)
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["epoch0003"]
    kept = _bank(tmp_path / "kept", keep_features=True)
    kept.begin(1, rank=0)
    kept.add(torch.randn(3, 4), torch.arange(3))
    kept.take(2).close()
    kept.after_save(rank=0)
    assert (tmp_path / "kept" / "features" / "epoch0002" / "rank0.done").exists()


def test_load_state_restores_the_writer_or_restarts_with_a_note(tmp_path: Path) -> None:
    bank = _bank(tmp_path)
    bank.begin(2, rank=0)
    bank.add(torch.randn(3, 4), torch.tensor([4, 0, 2]))
    state = bank.state()
    assert state["epoch"] == 3 and state["world"] == 1
    again = _bank(tmp_path)
    assert again.load_state(state, rank=0) is None
    np.testing.assert_array_equal(again.take(3).indices(), [4, 0, 2])
    assert again.load_state(None, rank=0) is None and again.writer is None  # a checkpoint without a bank
    state["world"] = 2
    note = again.load_state(state, rank=0)
    assert note is not None and "2 processes wrote it, 1 resume" in note
    assert again.epoch == 3 and len(again.writer.indices()) == 0  # an empty bank for E-step 3


def test_bank_store_adds_the_eval_view_of_the_missing_images_only(tmp_path: Path) -> None:
    """Rows the M-step wrote stay as written; each image it lacks gets ``features_fn`` of its eval view; every
    image is in the store once."""
    images = torch.randn(10, 3, 2, 2)
    loader = torch.utils.data.DataLoader(list(zip(images, range(10), strict=True)), batch_size=4)
    calls = []

    def features_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.flatten(1)[:, :4]

    fp = FeaturePass(features_fn, loader, 10, 4, DistInfo())
    cfg = EStepConfig(feature_dir=tmp_path)
    written = ShardWriter(tmp_path / "epoch0001", 4, shard_rows=3)
    bank_rows = torch.full((6, 4), 7.0)
    written.add(bank_rows, torch.tensor([9, 0, 4, 5, 1, 8]))
    idx, feats = rows(bank_store(written, fp, tmp_path / "epoch0001", cfg))
    assert sorted(idx.tolist()) == list(range(10)) and sum(calls) == 4  # the 4 missing images only
    for i, row in zip(idx, feats, strict=True):
        expected = 7.0 * np.ones(4) if i in (9, 0, 4, 5, 1, 8) else images[i].flatten()[:4].numpy()
        np.testing.assert_allclose(row, expected, rtol=1e-6)
    # no bank at all (a run without warmup): the whole eval-view pass, as the official E-step
    calls.clear()
    idx, _ = rows(bank_store(None, fp, tmp_path / "epoch0000", cfg))
    assert idx.tolist() == list(range(10)) and sum(calls) == 10


def test_run_estep_leaves_the_bank_store_to_its_owner(tmp_path: Path) -> None:
    loader = torch.utils.data.DataLoader(list(zip(torch.randn(12, 3, 2, 2), range(12), strict=True)), batch_size=6)
    fp = FeaturePass(lambda x: torch.nn.functional.normalize(x.flatten(1)[:, :4], dim=1), loader, 12, 4, DistInfo())
    cfg = EStepConfig(num_cluster=[2], feature_dir=tmp_path, features="bank")
    cfg.kmeans.nredo = 1
    result = run_estep(fp, cfg, epoch=1, temperature=0.2)
    assert len(result.levels[0].im2cluster) == 12
    assert (tmp_path / "epoch0001" / "rank0.done").exists()  # deleted by ViewBank.after_save, not here
