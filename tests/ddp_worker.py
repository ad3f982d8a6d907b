"""Run ``main_pcl`` under torchrun, then dump this rank's cluster result and queue for the DDP test.

torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR -- <main_pcl arguments>
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main_pcl
from pcl.config import parse_args

if __name__ == "__main__":
    out, argv = Path(sys.argv[1]), sys.argv[3:]
    trainer = main_pcl.run(parse_args(argv))
    rank = int(os.environ.get("RANK", "0"))
    clusters = trainer.cluster_result.state_dict() if trainer.cluster_result is not None else None
    dump = {
        "clusters": clusters,
        "queue": trainer.raw.queue.cpu(),
        "queue_ptr": int(trainer.raw.queue_ptr),
        "global_step": trainer.state.global_step,
        "world": trainer.info.world,
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(dump, out / f"rank{rank}.pth")
