"""Fault tolerance: full disk and Ctrl-C during a save, resume checks, exp-dir lock and safety, bad data folders."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pcl.utils.atomic
from pcl import cli
from pcl.data.datasets import IndexedImageFolder
from pcl.run.lock import ExpDirLock
from pcl.train.signals import slurm_requeue
from pcl.utils.errors import PCLError
from tests.helpers import ROOT, TINY_ARGS, make_image_folder, scalars, tool_env


def run(data: Path, exp_dir: Path, *extra: str) -> int:
    return cli.main([str(data), *TINY_ARGS, "--exp-dir", str(exp_dir), *extra])


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def after_one_epoch(tiny_data: Path, module_tmp: Path) -> Path:
    """An exp-dir after epoch 1 of 2 (``last.pth`` at epoch 1)."""
    exp = module_tmp
    assert run(tiny_data, exp, "--stop-after-epochs", "1") == 0
    return exp


@pytest.fixture
def exp_copy(after_one_epoch: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(after_one_epoch, tmp_path / "exp"))


class FailingFile(io.FileIO):
    """A file whose writes fail after ``budget`` bytes with ``exc`` (a full disk, or Ctrl-C mid-write)."""

    def __init__(self, path: str, mode: str, budget: int, exc: BaseException) -> None:
        super().__init__(path, mode)
        self.budget, self.exc = budget, exc

    def write(self, b: bytes) -> int:
        if len(b) > self.budget:
            raise self.exc
        self.budget -= len(b)
        return super().write(b)


def fail_writes(monkeypatch: pytest.MonkeyPatch, exc: BaseException, budget: int = 4096) -> None:
    def fake_open(path: Path, mode: str = "r", *a: object, **kw: object) -> io.FileIO:
        return FailingFile(str(path), mode, budget, exc)

    monkeypatch.setattr(pcl.utils.atomic, "open", fake_open, raising=False)


# ---------------------------------------------------------------- 1, 2: full disk and Ctrl-C while saving
def test_disk_full_during_checkpoint_is_one_error_line(
    tiny_data: Path, exp_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    last = exp_copy / "checkpoints" / "last.pth"
    before = last.read_bytes()
    fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    capsys.readouterr()
    assert run(tiny_data, exp_copy, "--resume", "auto") == 2  # torch turns the OSError into a RuntimeError
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "checkpoint" in line
    assert not list(exp_copy.rglob("*.tmp"))
    assert last.read_bytes() == before  # the previous checkpoint is intact


def test_ctrl_c_during_save_exits_130_and_names_the_checkpoint(
    tiny_data: Path, exp_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    last = exp_copy / "checkpoints" / "last.pth"
    before = last.read_bytes()
    fail_writes(monkeypatch, KeyboardInterrupt())
    capsys.readouterr()
    assert run(tiny_data, exp_copy, "--resume", "auto") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "<exp-dir>" not in err
    assert f"latest checkpoint is {last}" in err
    assert not list(exp_copy.rglob("*.tmp"))
    assert last.read_bytes() == before


def test_ctrl_c_before_any_checkpoint_claims_none(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    fail_writes(monkeypatch, KeyboardInterrupt())
    assert run(tiny_data, tmp_path, "--epochs", "1") == 130
    err = capsys.readouterr().err
    assert f"no checkpoint was written in {tmp_path}" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.pth"))


# ---------------------------------------------------------------- 3, 4: resume with another configuration
@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--low-dim", "8"], ["--low-dim 16 -> 8"]),
        (["--pcl-r", "24"], ["--pcl-r 16 -> 24"]),
        (["--arch", "resnet34"], ["--arch resnet18 -> resnet34"]),
        (["--cluster-head", "mlp", "--stem", "small"], ["--cluster-head none -> mlp", "--stem imagenet -> small"]),
        (["--no-mlp"], ["--mlp True -> False"]),
        (["--optimizer", "lamb"], ["--optimizer adamw -> lamb"]),
        (["--no-exclude-bn-bias"], ["--exclude-bn-bias True -> False"]),
        (["--amp", "fp16"], ["--amp off -> fp16"]),
    ],
)
def test_resume_with_a_shape_or_optimizer_change_is_refused(
    tiny_data: Path, exp_copy: Path, capsys: pytest.CaptureFixture, flags: list[str], needles: list[str]
) -> None:
    before = {p.name: p.read_bytes() for p in (exp_copy / "checkpoints").iterdir()}
    config = (exp_copy / "config.json").read_text()
    assert run(tiny_data, exp_copy, "--resume", "auto", *flags) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot resume" in line
    for n in needles:
        assert n in line
    assert {p.name: p.read_bytes() for p in (exp_copy / "checkpoints").iterdir()} == before
    assert (exp_copy / "config.json").read_text() == config


def test_harmless_changes_resume(tiny_data: Path, exp_copy: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--resume", "auto", "--epochs", "3", "--stop-after-epochs", "1", "--print-freq", "5", "--amp", "bf16"]
    assert run(tiny_data, exp_copy, *argv) == 0
    assert "1 epochs done" in capsys.readouterr().out
    assert torch.load(exp_copy / "checkpoints" / "last.pth", weights_only=False)["epoch"] == 2


def test_resume_from_an_exported_backbone_is_a_clear_error(
    tiny_data: Path, exp_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "backbone.pth"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "export_backbone.py"),
            str(exp_copy / "checkpoints" / "last.pth"),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=tool_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert run(tiny_data, tmp_path / "new", "--resume", str(out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not a training checkpoint" in line and "export_backbone" in line


def test_changed_lr_on_resume_is_applied_and_recorded(
    tiny_data: Path, exp_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    old = torch.load(exp_copy / "checkpoints" / "last.pth", weights_only=False)
    assert old["scheduler"]["base_lrs"][0] == pytest.approx(1e-3)
    assert run(tiny_data, exp_copy, "--resume", "auto", "--lr", "0.004", "--wd", "0.01") == 0
    out = capsys.readouterr().out
    assert "--lr 0.001 -> 0.004 applied" in out and "--wd 0.05 -> 0.01 applied" in out
    ckpt = torch.load(exp_copy / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["scheduler"]["base_lrs"] == [0.004] * len(ckpt["scheduler"]["base_lrs"])
    groups = ckpt["optimizer"]["param_groups"]
    assert groups[0]["initial_lr"] == 0.004 and groups[0]["weight_decay"] == 0.01
    # the last step's lr is the new base lr times the cosine factor at the end of the 2 epochs (min lr 0)
    assert json.loads((exp_copy / "config.json").read_text())["optim"]["lr"] == 0.004
    assert ckpt["config"]["optim"]["lr"] == 0.004
    tags = scalars(exp_copy)
    lrs = dict(tags["train/lr"])
    steps = 48 // 8
    assert lrs[steps] > 2 * lrs[steps - 1]  # the first resumed step uses the new, 4x larger base lr


# ---------------------------------------------------------------- 5, 9: lock, overwrite, numbered checkpoints
def test_a_second_run_on_a_locked_exp_dir_is_refused(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pcl.run.lock import ExpDirLock; "
            "ExpDirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=tool_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run(tiny_data, tmp_path, "--resume", "auto") == 2
        line = one_error_line(capsys.readouterr().err)
        assert "in use by another run" in line and f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    lock = ExpDirLock(tmp_path).acquire()  # the holder died: its lock is stale and taken over
    assert lock.stale is not None and lock.stale["pid"] == holder.pid
    lock.release()


def test_lock_is_exclusive_and_released() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with ExpDirLock(Path(d)), pytest.raises(PCLError, match="in use by another run"):
            ExpDirLock(Path(d)).acquire()
        with ExpDirLock(Path(d)) as again:
            assert again.stale is None  # released cleanly: not reported as stale


def test_forked_children_do_not_keep_the_lock(tmp_path: Path) -> None:
    """DataLoader workers are forked: a worker outliving a killed run must not block the restarted run."""
    lock = ExpDirLock(tmp_path).acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: signal that it runs (the at-fork hook has run), then linger like a worker
        os.write(w, b"x")
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"x"
        os.close(lock._fd)  # the run dies without releasing (as under SIGKILL)
        ExpDirLock(tmp_path).acquire().release()  # the lingering child does not hold it
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_fresh_run_over_a_checkpoint_needs_resume_or_overwrite(
    tiny_data: Path, exp_copy: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = exp_copy / "checkpoints" / "last.pth"
    before = last.read_bytes()
    assert run(tiny_data, exp_copy) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "already holds checkpoints" in line and "--resume auto" in line and "--overwrite" in line
    assert last.read_bytes() == before

    import pcl.run.checkpointer as ckpt_mod

    written: list[str] = []
    save, copy = ckpt_mod.save_checkpoint, ckpt_mod.copy_checkpoint
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", lambda s, p: (written.append(p.name), save(s, p))[1])
    monkeypatch.setattr(ckpt_mod, "copy_checkpoint", lambda a, b: (written.append(b.name), copy(a, b))[1])
    (exp_copy / "checkpoints" / "last.pth.tmp").write_bytes(b"partial")  # a killed writer's leftover
    assert run(tiny_data, exp_copy, "--overwrite", "--epochs", "1") == 0
    assert torch.load(last, weights_only=False)["global_step"] == 48 // 8  # a new run, not a resumed one
    assert not list(exp_copy.rglob("*.tmp"))
    assert written == ["checkpoint_0001.pth", "last.pth"]  # the numbered one first


def test_resume_recreates_a_lost_numbered_checkpoint(
    tiny_data: Path, exp_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpts = exp_copy / "checkpoints"
    assert run(tiny_data, exp_copy, "--resume", "auto", "--stop-after-epochs", "1") == 0
    final = ckpts / "checkpoint_0002.pth"
    final.unlink()  # as if killed between the two writes of an older version
    capsys.readouterr()
    assert run(tiny_data, exp_copy, "--resume", "auto") == 0
    assert f"recreated {final}" in capsys.readouterr().out
    assert torch.load(final, weights_only=False)["epoch"] == 2


def test_resume_auto_on_an_empty_exp_dir_starts_from_scratch(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(tiny_data, tmp_path, "--resume", "auto", "--epochs", "1") == 0
    assert "starting from scratch" in capsys.readouterr().out
    assert not (tmp_path / ".lock").read_text()  # released


# ---------------------------------------------------------------- issue 20: finished runs, independent checkpoints
def test_a_failed_final_save_leaves_the_run_unfinished(
    tiny_data: Path, exp_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Defect 1: ``complete: true`` only once the final checkpoint exists (here its save fails, as on a full disk)."""
    import pcl.run.checkpointer as ckpt_mod
    from pcl.run.run_dir import RunDir

    save = ckpt_mod.save_checkpoint

    def disk_full_at_the_end(state: dict, path: Path) -> None:
        if path.name == "checkpoint_0002.pth":
            raise PCLError(f"could not write checkpoint {path}: No space left on device")
        save(state, path)

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", disk_full_at_the_end)
    assert run(tiny_data, exp_copy, "--resume", "auto") == 2
    assert "No space left" in one_error_line(capsys.readouterr().err)
    record = json.loads((exp_copy / "metrics.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [0, 1] and record["complete"] is False
    assert not RunDir(exp_copy).is_finished()
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save)
    assert run(tiny_data, exp_copy, "--resume", "auto") == 0
    assert json.loads((exp_copy / "metrics.json").read_text())["complete"] is True
    assert RunDir(exp_copy).is_finished()


def test_last_and_kept_checkpoints_are_independent_and_auto_resume_falls_back(
    tiny_data: Path, exp_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    """Defect 3: overwriting ``last.pth`` in place leaves ``checkpoint_0002.pth`` intact, and ``--resume auto``
    continues from it with one line saying so."""
    ckpts = exp_copy / "checkpoints"
    assert run(tiny_data, exp_copy, "--resume", "auto") == 0
    last, kept = ckpts / "last.pth", ckpts / "checkpoint_0002.pth"
    assert last.stat().st_ino != kept.stat().st_ino and last.stat().st_nlink == 1
    with open(last, "r+b") as f:  # overwritten in place, e.g. by `cp other.pth last.pth` gone wrong
        f.truncate(1000)
    assert torch.load(kept, weights_only=False)["epoch"] == 2
    capsys.readouterr()
    assert run(tiny_data, exp_copy, "--resume", "auto", "--epochs", "3") == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "cannot be read" in ln]
    assert len(lines) == 1 and f"resuming from {kept}" in lines[0], lines
    assert torch.load(last, weights_only=False)["epoch"] == 3


# ---------------------------------------------------------------- 6: unusable directories
def test_exp_dir_that_is_a_file(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert run(tiny_data, f) == 2
    assert "--exp-dir" in one_error_line(capsys.readouterr().err)


def test_feature_dir_that_is_a_file_is_reported_before_training(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    f = tmp_path / "features"
    f.write_text("x")
    t0 = time.monotonic()
    assert run(tiny_data, tmp_path / "exp", "--feature-dir", str(f)) == 2
    assert "--feature-dir" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "exp" / "checkpoints").exists() and time.monotonic() - t0 < 60


def test_read_only_exp_dir(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        assert run(tiny_data, ro / "exp") == 2
        line = one_error_line(capsys.readouterr().err)
        assert "--exp-dir" in line and "Read-only file system" in line
    finally:
        subprocess.run(["umount", str(ro)], check=False)


# ---------------------------------------------------------------- 7: data folders
def test_directory_symlink_loop_is_named(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    link = data / "train" / "class1" / "loop"
    link.symlink_to(data / "train" / "class1", target_is_directory=True)
    assert run(data, tmp_path / "exp") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(link) in line and "loop" in line


def test_data_scan_matches_torchvision_without_loops(tiny_data: Path) -> None:
    from torchvision import datasets

    ours = IndexedImageFolder(tiny_data / "train")
    ref = datasets.ImageFolder(str(tiny_data / "train"))
    assert ours.samples == ref.samples and ours.classes == ref.classes


def test_val_classes_are_matched_by_name(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", per_class=2, classes=3)
    val = tmp_path / "val"
    shutil.copytree(train / "class1", val / "class1")
    shutil.copytree(train / "class2", val / "class2")
    make_image_folder(tmp_path / "extra", per_class=1, classes=1)
    shutil.copytree(tmp_path / "extra" / "class0", val / "zebra")
    tr, ev = IndexedImageFolder(train), IndexedImageFolder(val)
    warning = ev.relabel_like(tr, "val")
    assert ev.targets == [1, 1, 2, 2]  # by name: class1 -> 1, class2 -> 2 (not 0, 1); zebra left out
    assert ev.classes == tr.classes
    assert "zebra" in warning and "class0" in warning


# ---------------------------------------------------------------- signals: SLURM requeue helper
def test_slurm_requeue_calls_scontrol(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert "not running under SLURM" in slurm_requeue(fake_run) and not calls
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert slurm_requeue(fake_run) == "requeued SLURM job 4242"
    assert calls == [["scontrol", "requeue", "4242"]]


def test_second_signal_ends_the_process_at_once(tiny_data: Path, tmp_path: Path) -> None:
    """SIGTERM twice: the first asks for a checkpoint, the second ends the process right away (default action);
    the last checkpoint stays loadable and the next start cleans any temporary file."""
    argv = [sys.executable, str(ROOT / "main_pcl.py"), str(tiny_data), *TINY_ARGS, "--exp-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [*argv, "--epochs", "50", "--save-every-steps", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "checkpoints" / "last.pth"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), err
    assert "Traceback" not in err
    assert torch.load(last, weights_only=False)["epoch"] < 50


# ---------------------------------------------------------------- issue 27: the newest complete checkpoint
def test_a_kill_before_the_copy_to_last_does_not_redo_the_epoch(
    tiny_data: Path, exp_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Defect 9: killed after ``checkpoint_0002.pth`` (the final epoch) and before its copy to ``last.pth``
    (still epoch 1), ``--resume auto`` continues from the newer numbered file: nothing is trained again,
    ``last.pth`` becomes its copy and the run is finished."""
    import pcl.run.checkpointer as ckpt_mod
    from pcl.run.run_dir import RunDir

    copy = ckpt_mod.copy_checkpoint

    def killed_before_the_copy(src: Path, dst: Path) -> None:
        if dst.name == "last.pth":
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after the numbered checkpoint happens
        copy(src, dst)

    monkeypatch.setattr(ckpt_mod, "copy_checkpoint", killed_before_the_copy)
    assert run(tiny_data, exp_copy, "--resume", "auto") == 130
    rd = RunDir(exp_copy)
    assert torch.load(rd.checkpoint(2), weights_only=False)["epoch"] == 2
    assert torch.load(rd.last, weights_only=False)["epoch"] == 1 and not rd.is_finished()
    monkeypatch.setattr(ckpt_mod, "copy_checkpoint", copy)
    capsys.readouterr()
    assert run(tiny_data, exp_copy, "--resume", "auto") == 0
    out = capsys.readouterr().out
    assert f"resumed from {rd.checkpoint(2)}: 2 epochs done" in out and f"restored {rd.last}" in out
    assert "epoch 1:" not in out  # epoch 1 was not trained again
    assert rd.last.read_bytes() == rd.checkpoint(2).read_bytes() and rd.is_finished()
    record = json.loads(rd.metrics.read_text())
    assert record["complete"] and [e["epoch"] for e in record["epochs"]] == [0, 1]
    assert len(scalars(exp_copy)["train/loss"]) == 2 * 48 // 8  # every step logged once
