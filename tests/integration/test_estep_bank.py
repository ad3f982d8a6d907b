"""Training with ``--estep-features bank``: each E-step clusters exactly the key features the previous epoch's
M-step wrote (the first one the last warmup epoch's), no eval-view pass runs, the stores are cleaned up, and a
run stopped mid-epoch (SIGTERM) and at an epoch end resumes bit-identically; with a cluster head the bank holds
the key side's cluster-head features."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pcl.estep.estep as estep
from pcl import cli
from pcl.estep.feature_store import FeatureStore
from pcl.estep.view_bank import ViewBank
from pcl.train.engine import Trainer
from tests.helpers import TINY_ARGS, scalars, tiny_model

# 48 images, batch 8: 6 steps per epoch; shards of 20 rows: 2 on disk and 8 rows in the buffer at an epoch end
FLAGS = ["--epochs", "3", "--warmup-epochs", "1", "--estep-features", "bank", "--feature-shard-rows", "20"]
STEPS = 6


def run(data: Path, exp_dir: Path, *extra: str) -> int:
    return cli.main([str(data), *TINY_ARGS, "--exp-dir", str(exp_dir), *FLAGS, *extra])


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """``written``: ``(E-step epoch, rows (B, d), index (B,))`` per bank write; ``clustered``: ``(E-step epoch,
    index (N,), rows (N, d))`` per E-step, from its store; ``passes``: images of each eval-view feature pass."""
    seen: dict[str, list] = {"written": [], "clustered": [], "passes": []}
    real_add, real_cluster, real_extract = ViewBank.add, estep.cluster_store, estep.extract_features

    def add(self: ViewBank, features: torch.Tensor, index: torch.Tensor) -> None:
        seen["written"].append((self.epoch, features.clone(), index.clone()))
        real_add(self, features, index)

    def cluster(store: FeatureStore, *args: object, **kw: object) -> object:
        idx, feats = zip(*store.shards(), strict=True)
        seen["clustered"].append((args[3], np.concatenate(idx), np.concatenate(feats)))
        return real_cluster(store, *args, **kw)

    def extract(fn: object, loader: torch.utils.data.DataLoader, *args: object, **kw: object) -> object:
        seen["passes"].append(len(loader.dataset))
        return real_extract(fn, loader, *args, **kw)

    monkeypatch.setattr(ViewBank, "add", add)
    monkeypatch.setattr(estep, "cluster_store", cluster)
    monkeypatch.setattr(estep, "extract_features", extract)
    return seen


def test_bank_estep_clusters_the_m_steps_keys_and_resumes_bit_identically(
    tiny_data: Path, tmp_path: Path, record: dict[str, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(tiny_data, tmp_path / "full") == 0
    written, clustered = list(record["written"]), list(record["clustered"])
    assert record["passes"] == []  # every image was in the bank: no eval-view pass at all
    assert [w[0] for w in written] == [1] * STEPS + [2] * STEPS + [None] * STEPS  # epoch 2 is the last
    assert [c[0] for c in clustered] == [1, 2]
    for epoch, idx, rows in clustered:  # the store is the previous epoch's keys, in step order
        mine = [w for w in written if w[0] == epoch]
        np.testing.assert_array_equal(idx, torch.cat([w[2] for w in mine]).numpy())
        np.testing.assert_array_equal(rows, torch.cat([w[1] for w in mine]).numpy())
        assert sorted(idx.tolist()) == list(range(48))
    assert not list((tmp_path / "full" / "features").rglob("*"))  # each store deleted after the next checkpoint
    assert [s for s, _ in scalars(tmp_path / "full")["cluster/k3/objective"]] == [1, 2]

    # the same run stopped by SIGTERM at step 3 of epoch 1 (the bank of E-step 2: 1 shard + 4 buffered rows),
    # resumed for one epoch (stopping at the end of epoch 1), then to the end
    for key in record:
        record[key].clear()
    log_step = Trainer._log_step

    def log_then_signal(self: Trainer, step: object) -> None:
        log_step(self, step)
        if self.state.global_step == STEPS + 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_log_step", log_then_signal)
    cut = tmp_path / "cut"
    assert run(tiny_data, cut) == 128 + signal.SIGTERM
    bank = torch.load(cut / "checkpoints" / "last.pth", weights_only=False)["view_bank"]
    assert (
        bank["epoch"] == 2 and bank["writers"][0]["num_shards"] == 1 and len(bank["writers"][0]["buffer_indices"]) == 4
    )
    monkeypatch.setattr(Trainer, "_log_step", log_step)
    assert run(tiny_data, cut, "--resume", "auto", "--stop-after-epochs", "1") == 0
    assert run(tiny_data, cut, "--resume", "auto") == 0
    assert [c[0] for c in record["clustered"]] == [1, 2]
    for (_, ia, ra), (_, ib, rb) in zip(clustered, record["clustered"], strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ra, rb)
    a, b = (torch.load(d / "checkpoints" / "last.pth", weights_only=False) for d in (tmp_path / "full", cut))
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    for la, lb in zip(a["cluster_result"]["levels"], b["cluster_result"]["levels"], strict=True):
        for key in ("im2cluster", "centroids", "density"):
            assert torch.equal(la[key], lb[key]), key
    assert not list((cut / "features").rglob("*"))


def test_images_the_epoch_did_not_reach_get_the_eval_view(
    tiny_data: Path, tmp_path: Path, record: dict[str, list]
) -> None:
    """Batch 10 over 48 images: 4 steps see 40 per epoch; the E-step passes over the other 8 only, and with no
    warmup the first E-step (no bank yet) is the whole eval-view pass."""
    flags = ["--batch-size", "10", "--warmup-epochs", "0", "--epochs", "2", "--knn-freq", "0"]
    assert run(tiny_data, tmp_path, *flags) == 0
    assert record["passes"] == [48, 8]
    for _, idx, _ in record["clustered"]:
        assert sorted(idx.tolist()) == list(range(48))


def test_with_a_cluster_head_the_bank_holds_the_key_sides_cluster_features(tmp_path: Path) -> None:
    from pcl.estep.estep import EStepConfig

    model = tiny_model(cluster_head="mlp")
    model.view_bank = ViewBank(EStepConfig(feature_dir=tmp_path, features="bank"), 8, first=1, last=3)
    model.view_bank.begin(0, rank=0)
    views, index = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)], torch.tensor([3, 1, 0, 2])
    out = model(views, index)
    step = model.objective(out, index)
    expected = F.normalize(model.cluster_k(out.k_raw.float()), dim=1)  # before the momentum update
    model.after_step(step)
    store = model.view_bank.take(1).close()
    (idx, feats), *_ = store.shards()
    np.testing.assert_array_equal(idx, index.numpy())
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-6, atol=1e-7)
    assert int(model.queue_ptr) == 4  # the keys were enqueued as before
