"""The suite runner's own process and disk (issue 27, defects 6, 7 and 9): a full disk while writing results or
the run lock, a runner killed alone (SIGKILL) with its training process detached or not, whole report lines
under --jobs N, and summarize.py on a path that is no suite folder."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest

from pcl.run.lock import LOCK_NAME, ExpDirLock, is_locked
from pcl.run.run_dir import RunDir
from pcl.utils.errors import PCLError
from tests.helpers import ROOT, load_experiments, tool_env, write_suite

runner = load_experiments()
import launch  # noqa: E402 - experiments/ is on the path now
import summarize as summarize_tool  # noqa: E402
from suite import Job, RunSpec  # noqa: E402


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------------- a full disk
class NoSpaceFile:
    """A file on a disk with ``budget[0]`` bytes left: a write past them writes what fits, then ENOSPC."""

    def __init__(self, f: io.IOBase, budget: list[int]) -> None:
        self._f, self._budget = f, budget

    def write(self, data: bytes | str) -> int:
        if len(data) > self._budget[0]:
            self._f.write(data[: self._budget[0]])
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)

    def __enter__(self) -> NoSpaceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def full_disk(monkeypatch: pytest.MonkeyPatch, folder: Path, budget: int = 64) -> None:
    """Files opened for writing under ``folder`` share ``budget`` bytes, then fail with ENOSPC."""
    real_open, left, root = builtins.open, [budget], folder.resolve()

    def fake_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        f = real_open(file, mode, *args, **kwargs)
        writing = isinstance(file, str | os.PathLike) and any(c in mode for c in "wax+")
        if writing and Path(file).resolve().is_relative_to(root):
            return NoSpaceFile(f, left)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # pathlib's


def fake_suite(suite_dir: Path, knn: float) -> Path:
    """A suite folder as the runner leaves it (one run, one finished seed), without training."""
    rd = RunDir(suite_dir / "pcl" / "seed0")
    rd.root.mkdir(parents=True, exist_ok=True)
    rd.metrics.write_text(json.dumps({"complete": True, "epochs": [{"epoch": 0, "eval/knn_top1": knn}],
                                      "final": {"knn_top1": knn}}))  # fmt: skip
    rd.status.write_text(json.dumps({"status": "done"}))
    info = {"suite": suite_dir.name, "runs": [{"name": "pcl", "flags": {}}], "seeds": 1, "base": {}}
    (suite_dir / "suite.json").write_text(json.dumps(info))
    return suite_dir


def test_summarize_to_a_full_disk_keeps_the_old_results_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite_dir, dest = fake_suite(tmp_path / "s", knn=40.0), tmp_path / "full"
    assert summarize_tool.main([str(suite_dir), "--dest", str(dest)]) == 0
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    assert "40.00" in before["results.md"].decode()
    fake_suite(suite_dir, knn=55.0)
    capsys.readouterr()
    full_disk(monkeypatch, dest)
    assert summarize_tool.main([str(suite_dir), "--dest", str(dest)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and f"the disk holding {dest} is full" in line
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before  # whole old files, no .tmp left


def test_run_results_to_a_full_disk_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "s.toml", '[[runs]]\nname = "pcl"\n')
    out, full = tmp_path / "out", tmp_path / "full"
    fake_suite(out / "s", knn=40.0)
    full.mkdir()
    (full / "results.csv").write_text("old,results\n")
    full_disk(monkeypatch, full, budget=128)  # the folder probe and part of results.csv fit
    assert runner.main([str(suite), "--out", str(out), "--summary-only", "--results", str(full)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(full) in line
    monkeypatch.undo()
    assert (full / "results.csv").read_text() == "old,results\n" and not list(full.glob("*.tmp"))
    assert (out / "s" / "results.csv").is_file()  # the suite folder itself was summarized


def test_a_run_lock_on_a_full_disk_is_one_error_line_not_held(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_space(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", no_space)
        with pytest.raises(PCLError, match=r"could not write the lock file .*No space left on device \(the disk"):
            ExpDirLock(tmp_path).acquire()
    ExpDirLock(tmp_path).acquire().release()  # nothing is held after the failure
    suite = write_suite(tmp_path / "s.toml", '[[runs]]\nname = "pcl"\n')
    monkeypatch.setattr(os, "pwrite", no_space)
    assert runner.main([str(suite), str(tiny_data), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ".runner.lock: No space left on device" in line
    assert not RunDir(tmp_path / "out" / "s" / "pcl" / "seed0").train_log.exists()  # nothing started


def test_out_on_a_full_disk_is_one_error_line(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "s.toml", '[[runs]]\nname = "pcl"\n')
    out = tmp_path / "out"
    out.mkdir()
    full_disk(monkeypatch, out, budget=0)
    assert runner.main([str(suite), str(tiny_data), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out / 's'} is not usable: No space left on device (the disk holding")


# ---------------------------------------------------------------------------------------------- wrong paths
def test_summarize_a_path_that_is_no_suite_folder_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    assert summarize_tool.main([str(missing)]) == 2
    assert "has no suite.json" in one_error_line(capsys.readouterr().err) and not (tmp_path / "no").exists()
    assert summarize_tool.main([str(missing), "--dest", str(tmp_path / "dest")]) == 2
    capsys.readouterr()
    assert not (tmp_path / "dest").exists()
    run = fake_suite(tmp_path / "s", 40.0) / "pcl" / "seed0"
    assert summarize_tool.main([str(run)]) == 2
    assert f"one run's folder, not a suite folder: give OUT/SUITE, e.g. {tmp_path / 's'}" in capsys.readouterr().err
    assert summarize_tool.main([str(run / "metrics.json")]) == 2
    assert "is a file, not a suite folder" in one_error_line(capsys.readouterr().err)
    assert summarize_tool.main([str(tmp_path / "s"), "--dest", str(run / "metrics.json")]) == 2
    assert "--dest" in one_error_line(capsys.readouterr().err)
    (tmp_path / "s" / "suite.json").write_text('{"suite": "s"}')
    assert summarize_tool.main([str(tmp_path / "s")]) == 2
    assert "is not a suite record" in one_error_line(capsys.readouterr().err)


def test_run_paths_of_the_wrong_kind_are_one_error_line_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "s.toml", '[[runs]]\nname = "pcl"\n')
    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "out")
    cases = [
        ([str(suite), "--out", str(tmp_path / "file")], "--out"),
        ([str(suite), "--out", out, "--results", str(tmp_path / "file")], "--results"),
        ([str(suite), str(tmp_path / "file"), "--out", out], "is a file but not a .txt or .csv file list"),
        ([str(suite), str(tmp_path / "gone"), "--out", out], "does not exist"),
        ([str(tmp_path), "--out", out], "is a folder: give a suite file"),
    ]
    for argv, needle in cases:
        assert runner.main(argv) == 2
        assert needle in one_error_line(capsys.readouterr().err), argv
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- whole lines
class SlowStdout(io.StringIO):
    """A terminal that yields to other threads inside every write call."""

    def write(self, s: str) -> int:
        time.sleep(0.002)
        n = super().write(s)
        time.sleep(0.002)
        return n


def test_report_lines_of_concurrent_jobs_are_never_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 8
    start = threading.Barrier(n)

    def fake_run_local(jobs: list, shares: list, report: object, **kw: object) -> list[dict]:
        def one(i: int) -> None:
            start.wait()
            for _ in range(5):
                report(i, f"training in {jobs[i][0]} ...")  # type: ignore[operator]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [{"status": "done"} for _ in jobs]

    jobs = [Job(RunSpec(f"r{i}"), 0, tmp_path / f"r{i}", []) for i in range(n)]
    out = SlowStdout()
    monkeypatch.setattr(runner, "run_local", fake_run_local)
    monkeypatch.setattr(sys, "stdout", out)
    args = Namespace(gpus_per_run=0, threads_per_run=1, jobs=n, eval=False, detach=False)
    assert runner._run_here(jobs, args) == (0, 0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 * n
    assert all(ln.count("training in") == 1 and ln.endswith(" ...") for ln in lines), lines


# ---------------------------------------------------------------------------------------------- a killed runner
def start_runner(suite: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``setsid python experiments/run.py SUITE DATA --out OUT ...`` in the background."""
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), str(suite), str(data), "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=tool_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def wait_for(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def kill_the_runner_once_training(proc: subprocess.Popen, rd: RunDir) -> int:
    """SIGKILL the runner alone (not its process group) once its run holds the trainer's lock and has written
    a checkpoint; returns the training process's pid."""
    try:
        wait_for(lambda: rd.last.is_file() or proc.poll() is not None, 600, "the first checkpoint")
        assert proc.poll() is None, "the runner ended before it could be killed"
        pid = int(json.loads((rd.root / LOCK_NAME).read_text())["pid"])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return pid


def test_a_rerun_waits_for_the_detached_orphan_of_a_killed_runner_and_trains_each_run_once(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--detach``: the training process outlives the SIGKILLed runner; the rerun reports that run as running,
    waits for it, records it done, trains the other run and exits 0 (it said ``in use by another run`` and
    ``1 of 2 runs failed``, exit 1)."""
    runs = '[[runs]]\nname = "a"\nflags = { knn-freq = 0 }\n'
    runs += '[[runs]]\nname = "b"\nflags = { epochs = 1, knn-freq = 0 }\n'
    suite = write_suite(tmp_path / "k.toml", runs)
    out = tmp_path / "out"
    a, b = RunDir(out / "k" / "a" / "seed0"), RunDir(out / "k" / "b" / "seed0")
    pid = kill_the_runner_once_training(start_runner(suite, tiny_data, out, "--detach"), a)
    try:
        assert is_locked(a.root / LOCK_NAME) and not a.is_finished()  # the orphan trains on
        capsys.readouterr()
        assert runner.main([str(suite), str(tiny_data), "--out", str(out)]) == 0
    finally:
        if is_locked(a.root / LOCK_NAME):
            os.kill(pid, signal.SIGKILL)
    printed = capsys.readouterr().out
    assert f"a seed0: running in pid {pid}" in printed and "waiting for it to end" in printed
    assert f"a seed0: done: trained by pid {pid}" in printed and "failed" not in printed
    for rd in (a, b):
        assert rd.is_finished() and rd.train_log.read_text().count("$ ") == 1  # each run started once
        assert json.loads(rd.status.read_text())["status"] == "done"
    assert [e["epoch"] for e in json.loads(a.metrics.read_text())["epochs"]] == [0, 1]


def test_a_runners_training_process_dies_with_it_and_the_rerun_resumes(tmp_path: Path, tiny_data: Path) -> None:
    """Without ``--detach`` the training process gets SIGTERM when its runner is SIGKILLed: it checkpoints and
    stops (no orphan trains on unowned), and the rerun continues that run from its checkpoint."""
    suite = write_suite(tmp_path / "kill.toml", '[[runs]]\nname = "pcl"\nflags = { knn-freq = 0 }\n', seeds=1)
    out = tmp_path / "out"
    rd = RunDir(out / "kill" / "pcl" / "seed0")
    pid = kill_the_runner_once_training(start_runner(suite, tiny_data, out), rd)
    try:
        wait_for(lambda: not is_locked(rd.root / LOCK_NAME), 120, "the training process to stop")
    finally:
        if is_locked(rd.root / LOCK_NAME):
            os.kill(pid, signal.SIGKILL)
    killed = json.loads(rd.metrics.read_text())
    assert not killed["complete"] and [e["epoch"] for e in killed["epochs"]] == [0]
    assert "stopped by SIGTERM" in rd.train_log.read_text()
    assert runner.main([str(suite), str(tiny_data), "--out", str(out)]) == 0
    done = json.loads(rd.metrics.read_text())
    assert done["complete"] and [e["epoch"] for e in done["epochs"]] == [0, 1]
    assert "resumed from" in rd.train_log.read_text()


def test_die_with_runner_wraps_the_command_on_linux() -> None:
    cmd = launch.die_with_runner(["py", "-m", "pcl", "d"], python="python3")
    if not sys.platform.startswith("linux"):
        assert cmd == ["py", "-m", "pcl", "d"]
        return
    assert cmd[:2] == ["python3", "-c"] and cmd[3:] == [str(os.getpid()), "py", "-m", "pcl", "d"]
    out = subprocess.run(launch.die_with_runner([sys.executable, "-c", "print('ran')"]), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "ran\n"


def test_summary_only_covers_the_runs_and_seeds_asked_for_not_those_of_the_last_start(tmp_path: Path) -> None:
    """A suite trained in two starts (``--runs pcl``, then ``--runs moco``) is summarised whole by a later
    ``--summary-only``: the record of the last start named one run only (the recipes suite lost 7 rows so)."""
    suite = write_suite(tmp_path / "s.toml", '[[runs]]\nname = "pcl"\n[[runs]]\nname = "moco"\n')
    out = tmp_path / "out"
    fake_suite(out / "s", knn=40.0)  # its suite.json: the start that trained "pcl" only
    moco = RunDir(out / "s" / "moco" / "seed0")
    moco.root.mkdir(parents=True)
    moco.metrics.write_text(json.dumps({"complete": True, "epochs": [{"epoch": 0, "eval/knn_top1": 30.0}],
                                        "final": {"knn_top1": 30.0}}))  # fmt: skip
    moco.status.write_text(json.dumps({"status": "done"}))
    assert runner.main([str(suite), "--out", str(out), "--summary-only"]) == 0
    md = (out / "s" / "results.md").read_text()
    assert "| pcl | 1/1 | 40.00" in md and "| moco | 1/1 | 30.00" in md
    assert [r["name"] for r in json.loads((out / "s" / "suite.json").read_text())["runs"]] == ["pcl", "moco"]
