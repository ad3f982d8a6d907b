"""Run ``main_pcl`` under torchrun, then dump this rank's cluster result and queue for the DDP test.

torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR -- <main_pcl arguments>

Fault injection (first torchrun attempt only): ``PCL_TEST_KILL_RANK1=1`` makes rank 1 exit after the first
checkpoint; ``PCL_TEST_KILL_NODE=1`` makes rank 1 SIGKILL its torchrun agent too (a simulated node failure).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcl import cli
from pcl.config import parse_config


def die_once_after_first_checkpoint(kill_agent: bool = False) -> None:
    """Fault injection for the restart tests: on torchrun's first attempt, rank 1 dies after epoch 1's save.

    ``kill_agent``: the whole simulated node dies: rank 1 SIGKILLs its torchrun agent (its parent) first.
    """
    from pcl.train.engine import Trainer

    save = Trainer.save

    def save_then_die(self: Trainer) -> None:
        save(self)
        if kill_agent:
            os.kill(os.getppid(), signal.SIGKILL)
        os._exit(3)

    Trainer.save = save_then_die


if __name__ == "__main__":
    out, argv = Path(sys.argv[1]), sys.argv[3:]
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if os.environ.get("PCL_TEST_KILL_RANK1") and first_attempt and os.environ.get("RANK") == "1":
        die_once_after_first_checkpoint()
    if os.environ.get("PCL_TEST_KILL_NODE") and first_attempt and os.environ.get("RANK") == "1":
        die_once_after_first_checkpoint(kill_agent=True)
    trainer = cli.run(parse_config(argv))
    rank = int(os.environ.get("RANK", "0"))
    clusters = trainer.method.cluster_result.state_dict() if trainer.method.cluster_result is not None else None
    dump = {
        "clusters": clusters,
        "queue": trainer.method.queue.cpu(),
        "queue_ptr": int(trainer.method.queue_ptr),
        "global_step": trainer.state.global_step,
        "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "world": trainer.info.world,
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(dump, out / f"rank{rank}.pth")
