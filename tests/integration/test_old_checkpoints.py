"""Checkpoints written by the code before the method interface (commit 576526f: the last main before it) resume
with today's code and continue bit-identically: same weights, queue and clusters as the old code's own
uninterrupted run. The old tree is taken from git (``git archive``), so the test needs the repository's history;
it is skipped in a copy without it."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from pcl import cli
from tests.helpers import ROOT, TINY_ARGS

OLD = "576526f3502252183c33ba40dc48061c881c63b8"  # main before the method interface (issue 25)


def old_tree(dest: Path) -> Path:
    """The package and entry point at commit ``OLD`` in ``dest`` (skips the test without the git history)."""
    try:
        blob = subprocess.run(
            ["git", "-C", str(ROOT), "archive", OLD, "pcl", "main_pcl.py"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"commit {OLD[:7]} is not in this checkout's history")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


# runs the old main_pcl.py; right after the old engine writes its mid-epoch checkpoint at step 2 of epoch 1 (the
# first E-step epoch), a copy of it is kept as sys.argv[1] (no polling: the copy is made in the old process)
KEEP_MID_EPOCH = """
import shutil, sys
from pathlib import Path
import pcl.train.engine as engine
keep = Path(sys.argv.pop(1))
save_mid = engine.Trainer._maybe_save_mid_epoch
def maybe_save(self, done, meter):
    save_mid(self, done, meter)
    if self.state.epoch == 1 and done == 2:
        shutil.copyfile(self.run_dir.last, keep)
engine.Trainer._maybe_save_mid_epoch = maybe_save
from pcl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_mid_epoch_checkpoint_of_the_old_code_resumes_bit_identically(tiny_data: Path, tmp_path: Path) -> None:
    code = old_tree(tmp_path / "old_code")
    old_run, new_run = tmp_path / "old", tmp_path / "new"
    mid = new_run / "checkpoints" / "last.pth"
    mid.parent.mkdir(parents=True)
    flags = [str(tiny_data), *TINY_ARGS, "--save-every-steps", "2", "--cluster-head", "mlp"]
    old = subprocess.run(
        [sys.executable, "-c", KEEP_MID_EPOCH, str(mid), *flags, "--exp-dir", str(old_run)],
        cwd=code, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert old.returncode == 0, old.stderr[-2000:]
    saved = torch.load(mid, weights_only=False)
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)
    assert "temperature" in saved["config"]["model"] and "loss" not in saved["config"]  # the old layout
    assert set(saved["epoch_meter"]) == {"seen", "loss_sum", "proto_sum", "hits_inst", "hits_proto", "good", "skipped"}
    # today's code continues it
    assert cli.main([*flags, "--exp-dir", str(new_run), "--resume", "auto"]) == 0
    a = torch.load(old_run / "checkpoints" / "last.pth", weights_only=False)
    b = torch.load(mid, weights_only=False)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 12)
    assert a["model"].keys() == b["model"].keys()
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name  # queue, pointer, both encoders and both cluster heads
    for la, lb in zip(a["cluster_result"]["levels"], b["cluster_result"]["levels"], strict=True):
        assert torch.equal(la["im2cluster"], lb["im2cluster"]) and torch.equal(la["centroids"], lb["centroids"])
    # the resumed epoch's averages (the old meter's fields carried over) are the old run's
    old_epoch, new_epoch = (
        next(r for r in json.loads((d / "metrics.json").read_text())["epochs"] if r["epoch"] == 1)
        for d in (old_run, new_run)
    )
    for key in ("epoch/loss", "epoch/acc_inst", "epoch/loss_proto", "epoch/acc_proto"):
        assert new_epoch[key] == pytest.approx(old_epoch[key], abs=1e-4), key
    shutil.rmtree(code)
