"""Two-process torchrun (gloo, CPU) run over tiny data: warmup epoch + PCL epoch, then cross-resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcl import cli
from tests.helpers import ROOT, TINY_ARGS, scalars

STEPS_PER_EPOCH = 48 // 8  # global batch 8 = 2 ranks x 4


def torchrun(out: Path, argv: list[str], restarts: int = 0, **env_extra: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` of ``tests/ddp_worker.py`` (dumps each rank's state into ``out``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        f"--max-restarts={restarts}",
        str(ROOT / "tests" / "ddp_worker.py"),
        str(out),
        "--",
        *argv,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def ddp_run(tiny_data: Path, module_tmp: Path) -> Path:
    exp = module_tmp
    proc = torchrun(exp / "dump", [str(tiny_data), *TINY_ARGS, "--exp-dir", str(exp)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return exp


def test_cluster_result_is_identical_on_both_ranks(ddp_run: Path) -> None:
    r0, r1 = (torch.load(ddp_run / "dump" / f"rank{r}.pth", weights_only=False) for r in (0, 1))
    assert r0["world"] == 2
    for a, b in zip(r0["clusters"]["levels"], r1["clusters"]["levels"], strict=True):
        assert a["im2cluster"].shape == (48,)
        for key in ("im2cluster", "centroids", "density"):
            assert torch.equal(a[key], b[key]), key
        assert a["stats"] == b["stats"]
        assert int(a["im2cluster"].max()) < a["k"] and int(a["im2cluster"].min()) >= 0


def test_queue_holds_keys_from_both_ranks(ddp_run: Path) -> None:
    r0, r1 = (torch.load(ddp_run / "dump" / f"rank{r}.pth", weights_only=False) for r in (0, 1))
    assert torch.equal(r0["queue"], r1["queue"])
    steps = r0["global_step"]
    assert steps == 2 * STEPS_PER_EPOCH
    # every step enqueued the global batch (4 keys from each rank), so the pointer moved 8 per step
    assert r0["queue_ptr"] == (steps * 8) % 16
    torch.testing.assert_close(r0["queue"].norm(dim=0), torch.ones(16))


def test_losses_finite_and_tensorboard_written_once(ddp_run: Path) -> None:
    assert len(list((ddp_run / "tb").glob("events.out.tfevents.*"))) == 1
    tags = scalars(ddp_run)
    assert len(tags["train/loss"]) == 2 * STEPS_PER_EPOCH
    assert all(v == v and abs(v) < 1e4 for _, v in tags["train/loss"] + tags["train/loss_proto"])
    assert tags["train/skipped_steps"][-1][1] == 0


def test_distributed_checkpoint_resumes_in_one_process_and_back(
    ddp_run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    single = tmp_path / "single"
    (single / "checkpoints").mkdir(parents=True)
    (single / "checkpoints" / "last.pth").write_bytes((ddp_run / "checkpoints" / "last.pth").read_bytes())
    argv = [str(tiny_data), *TINY_ARGS, "--exp-dir", str(single), "--epochs", "3", "--resume", "auto"]
    assert cli.main(argv) == 0
    assert "2 epochs done" in capsys.readouterr().out
    assert torch.load(single / "checkpoints" / "last.pth", weights_only=False)["epoch"] == 3
    # ... and that single-process checkpoint continues under torchrun
    argv = [str(tiny_data), *TINY_ARGS, "--exp-dir", str(single), "--epochs", "4", "--resume", "auto"]
    proc = torchrun(tmp_path / "dump", argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 epochs done" in proc.stdout
    assert torch.load(tmp_path / "dump" / "rank1.pth", weights_only=False)["global_step"] == 4 * STEPS_PER_EPOCH


def test_dead_rank_is_restarted_and_the_job_continues(tiny_data: Path, tmp_path: Path) -> None:
    argv = [str(tiny_data), *TINY_ARGS, "--exp-dir", str(tmp_path), "--resume", "auto"]
    proc = torchrun(tmp_path / "dump", argv, restarts=1, PCL_TEST_KILL_RANK1="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 epochs done" in proc.stdout  # the restarted group resumed from epoch 1's last.pth
    for r in (0, 1):
        dump = torch.load(tmp_path / "dump" / f"rank{r}.pth", weights_only=False)
        assert dump["restart_count"] == 1 and dump["global_step"] == 2 * STEPS_PER_EPOCH
    assert torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)["epoch"] == 2
