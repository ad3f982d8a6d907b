"""The suite runner at scale: sweeps, --jobs N (CPU shares, GPU slices, torchrun), one runner per run, the exit
status, and the submitit launcher (local executor) with --status."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcl.run.lock import is_locked
from pcl.run.run_dir import RunDir
from pcl.utils.errors import PCLError
from tests.helpers import ROOT, load_experiments, tool_env, write_suite

runner = load_experiments()
import launch  # noqa: E402 - experiments/ is on the path now
from suite import load_suite  # noqa: E402

TWO_RUNS = '[[runs]]\nname = "moco"\nflags = { warmup-epochs = 2 }\n[[runs]]\nname = "pcl"\n'


def wait_for(condition: object, seconds: float = 600, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------- sweeps
def test_a_2x2_sweep_expands_to_4_named_runs_with_their_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = '[[sweeps]]\nname = "grid"\nlr = [0.03, 0.06]\nnum-cluster = ["3,5", "5,10"]\nflags = { epochs = 3 }\n'
    suite = write_suite(tmp_path / "sw.toml", body)
    names = [r.name for r in load_suite(str(suite)).runs]
    assert names == ["grid-lr0.03-num-cluster3_5", "grid-lr0.03-num-cluster5_10",
                     "grid-lr0.06-num-cluster3_5", "grid-lr0.06-num-cluster5_10"]  # fmt: skip
    assert runner.main([str(suite), "DATA", "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    grid = [("0.03", "3,5"), ("0.03", "5,10"), ("0.06", "3,5"), ("0.06", "5,10")]
    for line, (lr, k) in zip(lines, grid, strict=True):
        assert "--epochs 3 " in line and f"--lr {lr} " in line and f"--num-cluster {k} " in line
        assert line.count("--epochs") == 1 and line.count("--num-cluster") == 1  # the sweep overrides the base
        assert f"/grid-lr{lr}-num-cluster{k.replace(',', '_')}/seed0 " in line
    assert not (tmp_path / "out").exists()


def test_a_config_file_in_base_is_found_next_to_the_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "suites").mkdir()
    suite = tmp_path / "suites" / "c.toml"
    suite.write_text('[base]\nconfig = "cfg/run.toml"\n[[runs]]\nname = "a"\n')
    (tmp_path / "suites" / "cfg").mkdir()
    (tmp_path / "suites" / "cfg" / "run.toml").write_text("[optim]\nlr = 0.01\n")
    assert runner.main([str(suite), "DATA", "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert f"--config {tmp_path / 'suites' / 'cfg' / 'run.toml'} --seed 0" in capsys.readouterr().out


def test_bad_sweeps_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {
        "noname.toml": "[[sweeps]]\nlr = [1, 2]\n",
        "nolist.toml": '[[sweeps]]\nname = "s"\nlr = 0.1\n',
        "empty.toml": '[[sweeps]]\nname = "s"\nlr = []\n',
        "nothing.toml": '[[sweeps]]\nname = "s"\n',
        "seed.toml": '[[sweeps]]\nname = "s"\nseed = [1, 2]\n',
        "clash.toml": '[[runs]]\nname = "s-lr1"\n[[sweeps]]\nname = "s"\nlr = [1, 2]\n',
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(PCLError):
            load_suite(str(tmp_path / name))
        assert runner.main([str(tmp_path / name), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (name, err)


# ---------------------------------------------------------------------------------------------- --jobs
def test_shares_of_the_machine_and_the_training_command() -> None:
    assert launch.slots(4, 0, 16, []) == [launch.Slot(threads=4)] * 4
    assert launch.slots(3, 0, 2, []) == [launch.Slot(threads=1)] * 3  # never 0 threads
    two = launch.slots(2, 2, 0, ["0", "1", "2", "3", "4"])
    assert two == [launch.Slot(gpus=("0", "1")), launch.Slot(gpus=("2", "3"))]
    with pytest.raises(PCLError, match="needs 8 GPUs, this machine shows 1"):
        launch.slots(8, 1, 0, ["0"])
    cmd, env = launch.train_command(["d", "--epochs", "2"], launch.Slot(threads=3), python="py")
    assert cmd == ["py", "-m", "pcl", "d", "--epochs", "2"] and env["OMP_NUM_THREADS"] == "3"
    cmd, env = launch.train_command(["d"], launch.Slot(gpus=("5",)), python="py")
    assert cmd == ["py", "-m", "pcl", "d"] and env["CUDA_VISIBLE_DEVICES"] == "5"
    cmd, env = launch.train_command(["d"], two[1], python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "pcl", "d"]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert str(Path(launch.pcl.__file__).parents[1]) in env["PYTHONPATH"].split(os.pathsep)


def test_gpus_per_run_without_gpus_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    suite = write_suite(tmp_path / "g.toml", TWO_RUNS)
    assert (
        runner.main([str(suite), str(tmp_path), "--out", str(tmp_path / "o"), "--jobs", "8", "--gpus-per-run", "1"])
        == 2
    )
    assert capsys.readouterr().err.strip() == "error: --jobs 8 --gpus-per-run 1 needs 8 GPUs, this machine shows 0"


def _max_overlap(suite_dir: Path) -> int:
    """Most runs training at once, from the start/end times each run's status.json records."""
    events = []
    for st in suite_dir.glob("*/seed*/status.json"):
        doc = json.loads(st.read_text())
        events += [(doc["started"], 1), (doc["ended"], -1)]
    now = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        now += step
        peak = max(peak, now)
    return peak


def test_jobs_2_gives_the_table_of_jobs_1_with_at_most_2_runs_at_once(tiny_data: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "par.toml", TWO_RUNS, seeds=2)
    tables = []
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        argv = [str(suite), str(tiny_data), "--out", str(out), "--jobs", jobs, "--threads-per-run", "1"]
        assert runner.main(argv) == 0
        rows = list(csv.DictReader((out / "par" / "results_seeds.csv").read_text().splitlines()))
        for r in rows:  # timing and memory differ between any two runs; every result must not
            del r["sec_per_epoch"], r["peak_rss_mib"]
        tables.append(rows)
        assert [(r["run"], r["status"]) for r in rows] == [("moco", "done")] * 2 + [("pcl", "done")] * 2
        assert _max_overlap(out / "par") == int(jobs)
        threads = {json.loads(p.read_text())["threads"] for p in (out / "par").glob("*/seed*/status.json")}
        assert threads == {1}
    assert tables[0] == tables[1]


# ---------------------------------------------------------------------------------------------- two runners, failures
def test_two_runners_together_train_each_run_once(tiny_data: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "two.toml", TWO_RUNS)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), str(suite), str(tiny_data), "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for name in ("moco", "pcl"):
        log = RunDir(out / "two" / name / "seed0").train_log.read_text()
        assert log.count("$ ") == 1, log  # started once, by one of the two runners
    printed = "".join(outputs)
    assert printed.count("training in") == 2
    assert printed.count("held by another runner") + printed.count("finished, skipped") >= 2


def test_a_suite_whose_every_run_fails_exits_non_zero_with_the_count(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "bad.toml", '[[runs]]\nname = "too-many"\nflags = { num-cluster = "1000" }\n', 2)
    assert runner.main([str(suite), str(tiny_data), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("2 of 2 runs failed")


# ---------------------------------------------------------------------------------------------- submitit
def _status(suite: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    capsys.readouterr()
    assert runner.main([str(suite), "--out", str(out), "--status"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return {ln.split()[0]: ln.split(maxsplit=4)[1:] for ln in lines[1:-1]}


def test_local_submitit_finishes_resumes_a_killed_job_and_reports_states(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    body = '[[runs]]\nname = "a"\nflags = { epochs = 3 }\n[[runs]]\nname = "bad"\nflags = { num-cluster = "1000" }\n'
    suite = write_suite(tmp_path / "sub.toml", body)
    out = tmp_path / "out"
    submit = [str(suite), str(tiny_data), "--out", str(out), "--launcher", "local-submitit", "--gpus-per-node", "0"]
    assert {k: v[0] for k, v in _status(suite, out, capsys).items()} == {"a/seed0": "pending", "bad/seed0": "pending"}
    assert runner.main(submit) == 0  # returns after submitting
    jobs = json.loads((out / "sub" / "jobs.json").read_text())
    assert set(jobs) == {"a/seed0", "bad/seed0"} and all(j["job_id"] for j in jobs.values())
    a, bad = RunDir(out / "sub" / "a" / "seed0"), RunDir(out / "sub" / "bad" / "seed0")
    wait_for(lambda: a.last.is_file(), what="the first checkpoint of run a")
    state = _status(suite, out, capsys)
    assert state["a/seed0"][0] == "running" and state["a/seed0"][2] == jobs["a/seed0"]["job_id"]
    os.kill(json.loads(a.runner_lock.read_text())["pid"], signal.SIGKILL)  # the task trains in-process
    wait_for(lambda: bad.status.is_file(), what="the failing run's status")
    wait_for(lambda: _status(suite, out, capsys)["a/seed0"][0] != "running", 60, "the killed task's lock")
    state = _status(suite, out, capsys)
    assert state["a/seed0"][:2] in (["pending", "1/3"], ["pending", "2/3"])
    assert state["bad/seed0"][0] == "failed" and "error: --num-cluster 1000 exceeds" in state["bad/seed0"][3]
    failed_at = bad.status.stat().st_mtime_ns
    assert runner.main(submit) == 0  # the rerun submits what is not finished (the failed run is retried)
    wait_for(lambda: a.is_finished(), what="the resumed run")
    wait_for(lambda: bad.status.stat().st_mtime_ns != failed_at and not is_locked(bad.runner_lock), 300, "the retry")
    state = _status(suite, out, capsys)
    assert state["a/seed0"][:2] == ["finished", "3/3"] and state["bad/seed0"][0] == "failed"
    assert "resumed from" in a.train_log.read_text()
    assert [e["epoch"] for e in json.loads(a.metrics.read_text())["epochs"]] == [0, 1, 2]


def test_summary_groups_a_sweep_and_plots_the_metric_against_the_swept_value(tmp_path: Path) -> None:
    from PIL import Image
    from summary import summarize

    suite_dir = tmp_path / "sw"
    knn = {(0.03, "3,5"): [40.0, 42.0], (0.03, "5,10"): [41.0, 41.0], (0.06, "3,5"): [30.0, 34.0],
           (0.06, "5,10"): [35.0, 35.0]}  # fmt: skip
    runs = [{"name": "plain", "flags": {}, "sweep": None, "swept": {}}]
    for (lr, k), values in knn.items():
        name = f"grid-lr{lr}-num-cluster{k.replace(',', '_')}"
        runs.append({"name": name, "flags": {"lr": lr, "num-cluster": k}, "sweep": "grid",
                     "swept": {"lr": lr, "num-cluster": k}})  # fmt: skip
        for seed, v in enumerate(values):
            rd = RunDir(suite_dir / name / f"seed{seed}")
            rd.root.mkdir(parents=True)
            rd.metrics.write_text(json.dumps({"complete": True, "epochs": [{"epoch": 0, "eval/knn_top1": v}],
                                              "final": {"knn_top1": v}}))  # fmt: skip
            rd.status.write_text(json.dumps({"status": "done"}))
    info = {"suite": "sw", "runs": runs, "seeds": 2, "base": {}}
    (suite_dir / "suite.json").write_text(json.dumps(info))
    md = summarize(suite_dir).read_text()
    section = md[md.index("## Sweep `grid`") :]
    assert "| lr | num-cluster | seeds | kNN top-1 (%) |" in section
    assert "| 0.03 | 3,5 | 2/2 | 41.00 ± 1.41 |" in section and "| 0.06 | 5,10 | 2/2 | 35.00 ± 0.00 |" in section
    assert "plain" not in section and "![sweep_grid](sweep_grid.png)" in section
    with Image.open(suite_dir / "sweep_grid.png") as im:
        im.verify()
    with pytest.raises(PCLError, match="--metric must be one of"):
        summarize(suite_dir, metric="nope")
