"""The SLURM launcher on submitit's local executor: one pre-emption (SIGUSR2), requeue, resume, finish."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, TINY_ARGS

pytest.importorskip("submitit")


def load_launcher() -> object:
    spec = importlib.util.spec_from_file_location("submit_slurm", ROOT / "tools" / "submit_slurm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # cloudpickle ships the module's classes by value
    spec.loader.exec_module(mod)
    return mod


def test_resume_auto_is_forced_on_every_start() -> None:
    mod = load_launcher()
    assert mod.with_resume_auto(["d", "--resume", "x.pth", "--epochs", "3"]) == [
        "d",
        "--epochs",
        "3",
        "--resume",
        "auto",
    ]
    assert mod.with_resume_auto(["--overwrite", "--resume=y"]) == ["--resume", "auto"]


def test_local_executor_survives_a_preemption(tiny_data: Path, tmp_path: Path) -> None:
    mod = load_launcher()
    exp = tmp_path / "exp"
    argv = ["--cluster", "local", "--gpus-per-node", "0", "--time", "30", "--job-dir", str(tmp_path / "jobs")]
    main_args = [str(tiny_data), *TINY_ARGS, "--exp-dir", str(exp), "--save-every-steps", "2", "--device", "cpu"]
    job = mod.submit([*argv, "--", *main_args])
    last, deadline = exp / "checkpoints" / "last.pth", time.monotonic() + 400
    while not last.exists() and time.monotonic() < deadline and not job.done():
        time.sleep(0.2)
    assert last.exists(), job.stderr()
    os.kill(json.loads((exp / ".lock").read_text())["pid"], signal.SIGUSR2)  # SLURM's pre-emption warning
    assert job.result() == 0
    out = job.stdout() + (job.stderr() or "")
    assert "stopped by SIGUSR2" in out and "Requeued job" in out
    assert "resumed from" in out  # the requeued start continued with --resume auto
    final = torch.load(last, weights_only=False)
    assert final["epoch"] == 2 and final["global_step"] == 2 * (48 // 8)
    log = (exp / "train.log").read_text()  # both starts appended their lines, each epoch's once
    assert "stopped by SIGUSR2" in log and "resumed from" in log and log.count("epoch 1:") == 1
