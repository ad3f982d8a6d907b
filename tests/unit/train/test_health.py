"""Health signals of the embeddings and the finite-collapse rule."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pcl.train.health import GAP_MIN_FRACTION, STD_RATIO_MIN, WINDOW, HealthMonitor, embedding_signals


def test_signals_of_spread_and_collapsed_embeddings() -> None:
    torch.manual_seed(0)
    d = 16
    spread = F.normalize(torch.randn(4096, d), dim=1)  # uniform on the sphere
    std, rank = embedding_signals(spread).tolist()
    assert abs(std * math.sqrt(d) - 1.0) < 0.05  # per-dimension std ~ 1/sqrt(d)
    assert rank > 0.95 * d
    same = F.normalize(torch.randn(1, d), dim=1).repeat(64, 1)
    std, rank = embedding_signals(same).tolist()
    assert std < 1e-6 and abs(rank - 1.0) < 1e-3  # one direction: effective rank 1


def test_effective_rank_matches_hand_computation() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # singular values 1 and sqrt(3)
    s = torch.tensor([math.sqrt(3.0), 1.0])
    p = s / s.sum()
    expected = math.exp(-(p * p.log()).sum().item())
    assert abs(embedding_signals(q)[1].item() - expected) < 1e-5


def test_a_sustained_collapse_warns_once_and_a_short_one_does_not() -> None:
    mon = HealthMonitor(dim=16, queue=16)
    chance = math.log(17)
    collapsed = (0.001 / 4, 1.0, chance)  # std ratio 0.001, rank 1, InfoNCE at chance
    healthy = (0.2, 10.0, chance - 1.0)
    for _ in range(WINDOW - 1):
        mon.observe(*collapsed)
    mon.observe(*healthy)  # interrupted: starts over
    assert not mon.collapse
    warnings = []
    for step in range(WINDOW):
        values = mon.observe(*collapsed)
        warnings.append(mon.warning(step, values))
    assert [bool(w) for w in warnings] == [False] * (WINDOW - 1) + [True]
    assert "lower --lr" in warnings[-1] and "sgd-cos" in warnings[-1] and "--lr-warmup-epochs" in warnings[-1]
    assert mon.collapse and not mon.warning(99, mon.observe(*collapsed))  # once per run


def test_each_sign_alone_is_not_a_collapse() -> None:
    """Low spread with a clearly learning InfoNCE, or InfoNCE at chance with spread embeddings (e.g. the first
    steps, while the queue fills), do not count."""
    mon = HealthMonitor(dim=16, queue=16)
    chance = math.log(17)
    for _ in range(3 * WINDOW):
        mon.observe(0.0, 1.0, chance - 2 * GAP_MIN_FRACTION * chance)
        mon.observe(2 * STD_RATIO_MIN / 4, 8.0, chance)
    assert not mon.collapse and mon.collapsed_in_a_row == 0


def test_epoch_means() -> None:
    mon = HealthMonitor(dim=4, queue=3)
    mon.observe(0.5, 2.0, 1.0)
    mon.observe(0.25, 4.0, 0.0)
    out = mon.pop_epoch()
    assert out["health/epoch_embedding_std"] == 0.375 and out["health/epoch_effective_rank"] == 3.0
    assert abs(out["health/epoch_infonce_gap"] - (math.log(4) - 0.5)) < 1e-12
    assert out["health/epoch_std_ratio"] == 0.75 and mon.pop_epoch() == {}


def test_signals_of_non_finite_embeddings_do_not_raise() -> None:
    """A NaN step's embeddings (its signals are discarded with the step) must not make the SVD fail."""
    q = torch.full((8, 4), float("nan"))
    q[0, 0] = float("inf")
    assert torch.isfinite(embedding_signals(q)).all()
