"""Run-directory layout and the ``--resume`` lookup."""

from __future__ import annotations

from pathlib import Path

from pcl.run.run_dir import RunDir


def test_paths_of_a_run_directory(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    assert rd.last == tmp_path / "checkpoints" / "last.pth"
    assert rd.checkpoint(12) == tmp_path / "checkpoints" / "checkpoint_0012.pth"
    assert rd.clusters_file(3) == tmp_path / "clusters" / "epoch_0003.pth"
    assert (rd.tb, rd.features, rd.config) == (tmp_path / "tb", tmp_path / "features", tmp_path / "config.json")
    assert (rd.metrics, rd.eval) == (tmp_path / "metrics.json", tmp_path / "eval.json")
    assert (rd.train_log, rd.eval_log) == (tmp_path / "train.log", tmp_path / "eval.log")
    assert (rd.status, rd.runner_lock) == (tmp_path / "status.json", tmp_path / ".runner.lock")
    assert not any(tmp_path.iterdir())  # asking for paths creates nothing


def test_resume_lookup(tmp_path: Path) -> None:
    rd = RunDir(str(tmp_path))
    assert rd.resume_path(None) is None
    assert rd.resume_path("auto") is None  # nothing yet: fresh start
    rd.last.parent.mkdir(parents=True)
    rd.last.write_bytes(b"x")
    assert rd.resume_path("auto") == rd.last
    assert rd.resume_path("elsewhere/ckpt.pth") == Path("elsewhere/ckpt.pth")


def test_finished_needs_complete_metrics_and_a_readable_final_checkpoint(tmp_path: Path) -> None:
    import json

    import torch

    rd = RunDir(tmp_path)
    assert not rd.is_finished()  # nothing yet
    rd.metrics.write_text(json.dumps({"complete": True, "epochs_total": 2, "epochs": []}))
    assert not rd.is_finished()  # metrics say complete, no checkpoint
    rd.checkpoints.mkdir()
    torch.save({"epoch": 2, "w": torch.zeros(1000)}, rd.last)
    assert rd.is_finished()
    data = rd.last.read_bytes()
    rd.last.write_bytes(data[: len(data) // 2])  # killed while writing the last checkpoint (non-atomic file system)
    assert not rd.is_finished()
    torch.save({"epoch": 1}, rd.last)  # an earlier epoch's checkpoint
    assert not rd.is_finished()
    torch.save({"epoch": 2}, rd.last)
    rd.metrics.write_text(json.dumps({"complete": False, "epochs_total": 2, "epochs": []}))
    assert not rd.is_finished()


def test_is_locked_sees_a_live_holder_and_not_a_released_one(tmp_path: Path) -> None:
    from pcl.run.lock import ExpDirLock, is_locked

    path = tmp_path / ".runner.lock"
    assert not is_locked(path)  # no file
    lock = ExpDirLock(tmp_path, path.name).acquire()
    assert is_locked(path) and not is_locked(tmp_path / ".lock")  # its own file, not the trainer's
    lock.release()
    assert not is_locked(path) and path.exists()


def test_resume_auto_without_last_takes_the_newest_kept_checkpoint(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.checkpoints.mkdir()
    for e in (2, 10):
        rd.checkpoint(e).write_bytes(b"x")
    assert rd.resume_path("auto") == rd.checkpoint(10)


def test_resume_auto_takes_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    """A kill between ``checkpoint_0002.pth`` and its copy to ``last.pth`` leaves ``last.pth`` an epoch behind:
    the numbered one is newer; a mid-epoch ``last.pth`` is ahead of the numbered one of its epoch."""
    import torch

    rd = RunDir(tmp_path)
    rd.checkpoints.mkdir()
    torch.save({"epoch": 1, "step_in_epoch": 0}, rd.last)
    for e in (1, 2):
        torch.save({"epoch": e, "step_in_epoch": 0}, rd.checkpoint(e))
    assert rd.resume_path("auto") == rd.checkpoint(2)
    torch.save({"epoch": 2, "step_in_epoch": 3}, rd.last)
    assert rd.resume_path("auto") == rd.last
    torch.save({"epoch": 2}, rd.last)  # the same epoch (an older checkpoint without step_in_epoch): last.pth
    assert rd.resume_path("auto") == rd.last
    rd.last.write_bytes(b"garbage")  # unreadable: load_resumable falls back and says so
    assert rd.resume_path("auto") == rd.last
    torch.save({"epoch": 9999, "step_in_epoch": 0}, rd.checkpoint(9999))
    torch.save({"epoch": 10000, "step_in_epoch": 0}, rd.checkpoint(10000))
    torch.save({"epoch": 3, "step_in_epoch": 0}, rd.last)
    assert rd.kept_checkpoints()[-1] == rd.checkpoint(10000) and rd.resume_path("auto") == rd.checkpoint(10000)
