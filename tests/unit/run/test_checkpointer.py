"""The checkpointer: the checkpoint format (unchanged since aaff5a9), kept / latest files, exact restore."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pcl.run.checkpoint import load_checkpoint, save_checkpoint
from pcl.run.checkpointer import Checkpointer, TrainState, load_resumable
from pcl.run.run_dir import RunDir
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError

# the top-level keys a checkpoint of the code at aaff5a9 holds (old checkpoints must keep resuming)
KEYS_AT_AAFF5A9 = {
    "epoch", "step_in_epoch", "epoch_meter", "num_train", "global_step", "skipped_steps", "model", "optimizer",
    "scheduler", "scaler", "cluster_result", "rng", "world", "config",
}  # fmt: skip
KEYS_ADDED = {"epoch_scalars", "epoch_timer"}  # mid-epoch: the epoch's logged scalars (issue 20, defect 2)


def _parts(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))


def _checkpointer(root: Path, seed: int, save_freq: int = 2, epochs: int = 4) -> Checkpointer:
    model, opt, sched = _parts(seed)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return Checkpointer(RunDir(root), model, opt, sched, scaler, DistInfo(), {"train": {}}, save_freq, epochs)


def _train_a_step(c: Checkpointer) -> None:
    c.model(torch.randn(5, 4)).square().mean().backward()
    c.optimizer.step()
    c.scheduler.step()


def test_checkpoint_keys_are_those_of_aaff5a9_plus_the_mid_epoch_log(tmp_path: Path) -> None:
    c = _checkpointer(tmp_path, 0)
    state = c.state(TrainState(2, 10, 1), num_train=48, extra={"cluster_result": None})
    assert set(state) == KEYS_AT_AAFF5A9 | KEYS_ADDED
    assert state["epoch_scalars"] is None and state["epoch_timer"] is None  # epoch end: nothing pending
    assert (state["epoch"], state["global_step"], state["skipped_steps"], state["num_train"]) == (2, 10, 1, 48)
    assert state["world"] == 1 and len(state["rng"]) == 1 and state["config"] == {"train": {}}


def test_save_keeps_numbered_checkpoints_and_last(tmp_path: Path) -> None:
    c = _checkpointer(tmp_path, 0, save_freq=2, epochs=3)
    rd = RunDir(tmp_path)
    for epoch in (1, 2, 3):
        c.save(c.state(TrainState(epoch, epoch * 5), 48, {"cluster_result": None}))
        assert load_checkpoint(rd.last)["epoch"] == epoch
    assert sorted(p.name for p in rd.checkpoints.glob("checkpoint_*.pth")) == [
        "checkpoint_0002.pth",  # every --save-freq
        "checkpoint_0003.pth",  # and the last epoch
    ]
    mid = c.state(TrainState(3, 17), 48, {"cluster_result": None}, step_in_epoch=2, meter={"seen": 8.0})
    c.save(mid)  # mid-epoch: last.pth only
    assert load_checkpoint(rd.last)["step_in_epoch"] == 2
    assert load_checkpoint(rd.checkpoint(3))["step_in_epoch"] == 0


def test_restore_puts_back_modules_counters_and_rng(tmp_path: Path) -> None:
    src = _checkpointer(tmp_path, 0)
    _train_a_step(src)
    torch.manual_seed(123)
    src.save(src.state(TrainState(1, 7, 2), 48, {"cluster_result": {"epoch": 0, "levels": []}}))
    expected_draw = torch.rand(3)
    dst = _checkpointer(tmp_path, 1)
    resumed = dst.restore(RunDir(tmp_path).last, None, seed=0)
    assert torch.rand(3).equal(expected_draw)  # epoch-end checkpoint: RNG restored at once
    assert resumed.state == TrainState(1, 7, 2) and resumed.step_in_epoch == 0 and resumed.pending_rng is None
    assert resumed.extra == {"cluster_result": {"epoch": 0, "levels": []}}
    for a, b in zip(src.model.parameters(), dst.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert dst.optimizer.state_dict()["state"].keys() == src.optimizer.state_dict()["state"].keys()
    assert dst.scheduler.last_epoch == 1


def test_a_checkpoint_without_the_later_keys_still_restores(tmp_path: Path) -> None:
    """Checkpoints older than the mid-epoch position (no ``step_in_epoch`` / ``epoch_meter``, nor the keys added
    since aaff5a9) resume at an epoch end."""
    src = _checkpointer(tmp_path, 0)
    state = src.state(TrainState(1, 7), 48, {"cluster_result": None})
    del state["step_in_epoch"], state["epoch_meter"], state["epoch_scalars"], state["epoch_timer"]
    path = tmp_path / "old.pth"
    save_checkpoint(state, path)
    resumed = _checkpointer(tmp_path, 1).restore(path, None, seed=0)
    assert resumed.step_in_epoch == 0 and resumed.epoch_meter is None and resumed.state.epoch == 1
    assert resumed.epoch_scalars is None and resumed.epoch_timer is None


def test_mid_epoch_checkpoint_keeps_the_epochs_scalars(tmp_path: Path) -> None:
    src = _checkpointer(tmp_path, 0)
    scalars, timer = {"cluster/k5/objective": 0.25, "time/estep_seconds": 3.0}, {"kmeans": 1.5}
    src.save(src.state(TrainState(1, 9), 48, {"cluster_result": None}, 3, {"seen": 24.0}, scalars, timer))
    resumed = _checkpointer(tmp_path, 1).restore(RunDir(tmp_path).last, None, seed=0)
    assert (resumed.step_in_epoch, resumed.epoch_meter) == (3, {"seen": 24.0})
    assert resumed.epoch_scalars == scalars and resumed.epoch_timer == timer


def test_last_and_kept_checkpoints_are_independent_files(tmp_path: Path) -> None:
    c = _checkpointer(tmp_path, 0, save_freq=1)
    rd = RunDir(tmp_path)
    c.save(c.state(TrainState(1, 5), 48, {"cluster_result": None}))
    a, b = rd.last.stat(), rd.checkpoint(1).stat()
    assert a.st_ino != b.st_ino and a.st_nlink == 1 and b.st_nlink == 1
    with open(rd.last, "r+b") as f:  # overwritten in place (cp other.pth last.pth)
        f.truncate(10)
    assert load_checkpoint(rd.checkpoint(1))["epoch"] == 1


def test_resume_auto_falls_back_to_the_newest_readable_kept_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    c = _checkpointer(tmp_path, 0, save_freq=1)
    rd = RunDir(tmp_path)
    for epoch in (1, 2, 3):
        c.save(c.state(TrainState(epoch, 5 * epoch), 48, {"cluster_result": None}))
    rd.last.write_bytes(b"garbage")
    rd.checkpoint(3).write_bytes(b"")  # the newest kept one is unreadable too
    path, ckpt = load_resumable(rd.last, rd)
    assert path == rd.checkpoint(2) and ckpt["epoch"] == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "last.pth cannot be read" in out[0] and "resuming from" in out[0]
    with pytest.raises(PCLError, match="cannot be read"):
        load_resumable(rd.last)  # an explicit --resume PATH does not fall back
    for e in (1, 2):
        rd.checkpoint(e).write_bytes(b"")
    with pytest.raises(PCLError, match=r"last\.pth cannot be read"):
        load_resumable(rd.last, rd)  # nothing readable: the error of last.pth
