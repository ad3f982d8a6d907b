"""The per-attempt prefix of torchrun's shared store: every rank of an attempt agrees, stale keys never leak."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
import torch.distributed as dist

from pcl.utils.distributed import attempt_token

TIMEOUT = datetime.timedelta(seconds=30)


def agree(store: dist.Store, world: int, delays: dict[int, float]) -> list[str]:
    """Run ``attempt_token`` for every rank in its own thread (rank r starts after ``delays[r]`` s)."""
    tokens: list[str | None] = [None] * world

    def rank_main(r: int) -> None:
        time.sleep(delays.get(r, 0.0))
        tokens[r] = attempt_token(store, r, world, TIMEOUT, poll_s=0.001)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(t is not None for t in tokens)
    return tokens  # type: ignore[return-value]


@pytest.mark.parametrize("delays", [{}, {0: 0.2}, {1: 0.2, 3: 0.1}], ids=["together", "rank0-late", "others-late"])
def test_every_rank_of_an_attempt_gets_the_same_new_token(delays: dict[int, float]) -> None:
    store = dist.HashStore()
    first = agree(store, 4, {})
    assert len(set(first)) == 1
    # the next attempt meets on the same store, which holds all of the first attempt's keys
    second = agree(store, 4, delays)
    assert len(set(second)) == 1 and second[0] != first[0]


def test_a_stale_hello_answered_first_does_not_mislead_the_rank() -> None:
    """Rank 0 of a new attempt may answer rank 1's nonce from a dead attempt before rank 1 starts again."""
    store = dist.HashStore()
    store.set("/pcl/hello/1", "nonce-of-a-dead-attempt")
    store.set("/pcl/welcome/1", "nonce-of-a-dead-attempt old-token")
    store.set("/pcl/ack/1", "old-token")
    tokens = agree(store, 2, {1: 0.3})
    assert tokens[0] == tokens[1] != "old-token"
    assert store.get("/pcl/ack/1").decode() == tokens[0]


def test_a_missing_rank_times_out_with_a_message() -> None:
    with pytest.raises(RuntimeError, match="did not meet"):
        attempt_token(dist.HashStore(), 0, 2, datetime.timedelta(seconds=0.2), poll_s=0.01)
