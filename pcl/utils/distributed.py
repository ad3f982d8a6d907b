"""Distributed stage: torchrun/DDP set-up and the few collectives the loop needs.

Every helper also works in a single process (``world == 1``), where it is the identity.
"""

from __future__ import annotations

import datetime
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """More than one process (torchrun)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes files."""
        return self.rank == 0


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto`` = this process's CUDA device if there is one, else CPU."""
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from pcl.utils.errors import PCLError

        raise PCLError("--device cuda was asked for but no CUDA device is available")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device_pref: str = "auto", backend: str = "auto", timeout_min: int = 30) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` > 1), else single process.

    Backend ``auto``: NCCL for CUDA devices, gloo for CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        timeout = datetime.timedelta(minutes=timeout_min)
        store = elastic_store(rank, world, timeout)
        if store is not None:
            kw.update(store=store, rank=rank, world_size=world)
        dist.init_process_group(backend, timeout=timeout, **kw)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def elastic_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun: the rendezvous store with a key prefix of this attempt's own (None otherwise: ``env://``).

    torchrun's agent keeps ONE TCPStore for all restarts (its rendezvous store is shared with the workers) and
    ``env://`` adds no per-attempt prefix, so after ``--max-restarts`` a fast rank could read the dead previous
    attempt's gloo address of a slower peer from the store and fail with "connectFullMesh ... Connection
    refused" (the restart test failed about 1 in 3 on a loaded machine). The prefix cannot be
    ``TORCHELASTIC_RESTART_COUNT``: that counts one agent's failures, so on several nodes it differs between
    ranks of one attempt (a node restarted for a peer's membership change keeps its count; a replacement node
    starts at 0), and the ranks would wait for each other under different prefixes. :func:`attempt_token`
    gives a prefix that all ranks of the attempt share and no earlier attempt used.
    """
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent_hosts and rank == 0,
        timeout=timeout,
        multi_tenant=not agent_hosts,
    )
    return dist.PrefixStore(f"/pcl/attempt_{attempt_token(base, rank, world, timeout)}/", base)


def attempt_token(store: dist.Store, rank: int, world: int, timeout: datetime.timedelta, poll_s: float = 0.02) -> str:
    """A token that every rank of this attempt receives and that no earlier attempt on ``store`` used.

    The store may hold any keys of earlier attempts. Rank 0 draws a fresh token. Every other rank r writes a
    fresh nonce to ``hello/r`` and takes the token from rank 0's answer to exactly that nonce (``welcome/r``),
    which no earlier attempt can have written; rank 0 answers each new ``hello/r`` (a stale one may be answered
    first) until every rank has acknowledged this token in ``ack/r``.
    """
    me = uuid.uuid4().hex
    deadline = time.monotonic() + timeout.total_seconds()

    def read(key: str) -> str | None:
        return store.get(key).decode() if store.check([key]) else None

    def wait() -> None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"torchrun ranks did not meet within {timeout} (rank {rank} of {world})")
        time.sleep(poll_s)

    if rank == 0:
        answered: dict[int, str] = {}
        pending = set(range(1, world))
        while pending:
            for r in sorted(pending):
                nonce = read(f"/pcl/hello/{r}")
                if nonce is not None and answered.get(r) != nonce:
                    store.set(f"/pcl/welcome/{r}", f"{nonce} {me}")
                    answered[r] = nonce
                if read(f"/pcl/ack/{r}") == me:
                    pending.discard(r)
            if pending:
                wait()
        return me
    store.set(f"/pcl/hello/{rank}", me)
    while True:
        nonce, _, token = (read(f"/pcl/welcome/{rank}") or "").partition(" ")
        if nonce == me:
            store.set(f"/pcl/ack/{rank}", token)
            return token
        wait()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks; returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` per rank -> ``(world*B, ...)`` in rank order (no gradient)."""
    if not is_distributed():
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, 0)


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to all ranks."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list[object]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank ``src``'s buffers (BatchNorm statistics, the queue), in place; no-op in one process.

    DDP broadcasts rank 0's buffers only at the start of each forward pass, so after an epoch's last step every
    rank holds BatchNorm statistics of its own batches until the next one; what runs in between (the E-step,
    the kNN monitor) would use them, while a checkpoint stores rank 0's: a resumed run would then differ.
    """
    if is_distributed():
        for b in module.buffers():
            dist.broadcast(b, src)


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast of a tensor from ``src``; returns ``t``."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


def gather_rows_to_main(rows: np.ndarray, device: torch.device) -> np.ndarray | None:
    """Collect every rank's ``(n_r, d)`` float32 rows on rank 0 (``None`` elsewhere), in rank order.

    Sizes may differ per rank; rows travel through torch.distributed, so no shared file system is needed.
    """
    if not is_distributed():
        return rows
    world = dist.get_world_size()
    n = torch.tensor([rows.shape[0]], device=device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    pad = torch.zeros(max(sizes_i), rows.shape[1], dtype=torch.float32, device=device)
    pad[: rows.shape[0]] = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device)
    bufs = [torch.empty_like(pad) for _ in range(world)] if dist.get_rank() == 0 else None
    dist.gather(pad, bufs, dst=0)
    if dist.get_rank() != 0:
        return None
    return torch.cat([b[:s] for b, s in zip(bufs, sizes_i, strict=True)]).cpu().numpy()
