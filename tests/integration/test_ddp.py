"""Two-process torchrun (gloo, CPU) run over tiny data: warmup epoch + PCL epoch, then cross-resume; a rank
killed and restarted; two simulated nodes, one killed and replaced, ending like the one-node run."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
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
    log = (ddp_run / "train.log").read_text()  # rank 0's output, each epoch line once
    assert re.findall(r"^epoch (\d+):", log, flags=re.M) == ["0", "1"] and log.count("summary: epoch 1") == 1


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


def assert_same_final_state(exp: Path, dump: Path, ref_exp: Path) -> None:
    """The run in ``exp`` (rank dumps in ``dump``) ended bit-identical to the one in ``ref_exp``: model (queue and
    BN statistics included), cluster result of every rank, step counters."""
    ref_ckpt = torch.load(ref_exp / "checkpoints" / "last.pth", weights_only=False)
    ckpt = torch.load(exp / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["epoch"] == ref_ckpt["epoch"] == 2 and ckpt["global_step"] == ref_ckpt["global_step"]
    for key, value in ref_ckpt["model"].items():
        assert torch.equal(ckpt["model"][key], value), key
    for r in (0, 1):
        ref, got = (torch.load(d / f"rank{r}.pth", weights_only=False) for d in (ref_exp / "dump", dump))
        assert got["world"] == 2 and got["global_step"] == ref["global_step"] == 2 * STEPS_PER_EPOCH
        assert torch.equal(got["queue"], ref["queue"]) and got["queue_ptr"] == ref["queue_ptr"]
        for a, b in zip(got["clusters"]["levels"], ref["clusters"]["levels"], strict=True):
            for key in ("im2cluster", "centroids", "density"):
                assert torch.equal(a[key], b[key]), key


def test_dead_rank_is_restarted_and_the_job_ends_like_an_uninterrupted_one(
    ddp_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    argv = [str(tiny_data), *TINY_ARGS, "--exp-dir", str(tmp_path), "--resume", "auto"]
    proc = torchrun(tmp_path / "dump", argv, restarts=1, PCL_TEST_KILL_RANK1="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 epochs done" in proc.stdout  # the restarted group resumed from epoch 1's last.pth
    for r in (0, 1):
        dump = torch.load(tmp_path / "dump" / f"rank{r}.pth", weights_only=False)
        assert dump["restart_count"] == 1
    # the E-step epoch after the resume saw rank 0's BN statistics on both ranks, as the uninterrupted run does
    assert_same_final_state(tmp_path, tmp_path / "dump", ddp_run)


def free_port() -> int:
    """A TCP port that nothing on this machine listens on now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch_node(out: Path, argv: list[str], port: int, log: Path, **env_extra: str) -> subprocess.Popen:
    """One simulated node: ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d`` on ``localhost:port``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=localhost:{port}",
        "--rdzv-id=pcl-two-node-test",
        "--max-restarts=1",
        str(ROOT / "tests" / "ddp_worker.py"),
        str(out),
        "--",
        *argv,
    ]
    with log.open("ab") as f:  # own session: the test can kill the agent and its workers together
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_listener(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the first node's agent serves the rendezvous store on ``port`` (so that it, not the node that is
    killed later, hosts it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"no rendezvous store on port {port} (node 0 exit code {proc.poll()})")


# torch 2.14's agents share one TCPStore server of the first round's rank-0 node with the workers; a node that joins
# a later round waits for that round's MASTER_ADDR key, which that rank-0 node never writes again (timeout after
# 60 s). Without the shared server each round gets a fresh one, so a replacement node can join.
NEW_STORE_EACH_ROUND = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["rank", "node"])
def test_two_nodes_one_killed_and_restarted_end_like_one_node(
    failure: str, ddp_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """Two simulated nodes (``--nnodes 2 --nproc-per-node 1``, c10d rendezvous on localhost). After epoch 0's
    checkpoint, ``rank``: node 1's worker dies and both agents restart their workers (``--max-restarts``);
    ``node``: node 1's worker and torchrun agent are SIGKILLed, node 0's agent restarts its worker, and a new node
    1 joins the next rendezvous round. The job resumes from ``last.pth``, runs the E-step epoch, and ends
    bit-identical to the uninterrupted single-node 2-process run (``ddp_run``)."""
    exp, out, port = tmp_path / "exp", tmp_path / "dump", free_port()
    argv = [str(tiny_data), *TINY_ARGS, "--exp-dir", str(exp), "--resume", "auto"]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    env = NEW_STORE_EACH_ROUND if failure == "node" else {}
    kill = {"PCL_TEST_KILL_NODE": "1"} if failure == "node" else {"PCL_TEST_KILL_RANK1": "1"}
    nodes = [launch_node(out, argv, port, logs[0], **env)]
    try:
        wait_for_listener(port, nodes[0])
        nodes.append(launch_node(out, argv, port, logs[1], **env, **kill))
        if failure == "node":
            assert nodes[1].wait(timeout=600) == -signal.SIGKILL, logs[1].read_text()[-3000:]
            assert torch.load(exp / "checkpoints" / "last.pth", weights_only=False)["epoch"] == 1
            nodes[1] = launch_node(out, argv, port, logs[1], **env)  # the replacement node
        for node, log in zip(reversed(nodes), reversed(logs), strict=True):
            assert node.wait(timeout=600) == 0, log.read_text()[-5000:]
    finally:  # a failed or hung run leaves no agent or worker behind (a worker outlives a SIGKILLed agent)
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    assert "1 epochs done" in logs[0].read_text() + logs[1].read_text()  # resumed from epoch 0's checkpoint
    assert_same_final_state(exp, out, ddp_run)
    # torchrun's restart counts are per agent: the replacement node starts again at 0
    counts = [torch.load(out / f"rank{r}.pth", weights_only=False)["restart_count"] for r in (0, 1)]
    assert counts == [1, 0] if failure == "node" else 1 in counts


def test_bank_estep_under_torchrun_is_identical_on_both_ranks_and_survives_a_dead_rank(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``--estep-features bank`` with 2 ranks: each writes its own batches' keys (24 images per rank per epoch),
    the E-step of epoch 1 clusters the warmup epoch's bank of both (the same result on both ranks, every image
    once); rank 1 killed after epoch 0's checkpoint (both ranks' open writers in it), the restarted group ends
    bit-identical to the uninterrupted run, and no store is left on disk."""
    flags = [*TINY_ARGS, "--estep-features", "bank", "--feature-shard-rows", "10"]
    ref = tmp_path / "ref"
    proc = torchrun(ref / "dump", [str(tiny_data), *flags, "--exp-dir", str(ref)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(ref / "dump" / f"rank{r}.pth", weights_only=False) for r in (0, 1))
    for a, b in zip(r0["clusters"]["levels"], r1["clusters"]["levels"], strict=True):
        assert a["im2cluster"].shape == (48,) and a["stats"] == b["stats"]
        for key in ("im2cluster", "centroids", "density"):
            assert torch.equal(a[key], b[key]), key
    cut = tmp_path / "cut"
    argv = [str(tiny_data), *flags, "--exp-dir", str(cut), "--resume", "auto"]
    proc = torchrun(cut / "dump", argv, restarts=1, PCL_TEST_KILL_RANK1="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 epochs done" in proc.stdout
    assert_same_final_state(cut, cut / "dump", ref)
    for exp in (ref, cut):
        assert not [p for p in (exp / "features").rglob("*") if p.is_file()]
