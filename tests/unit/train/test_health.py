"""Health signals of the embeddings, the collapse verdicts (not learning / partial, full) and the advice."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from pcl.train.health import (
    ALTERNATIVE,
    FULL_GAP_FRACTION,
    GAP_MIN_FRACTION,
    STD_RATIO_MIN,
    WINDOW,
    HealthMonitor,
    HealthPlan,
    RunRecipe,
    advice,
    embedding_signals,
)
from pcl.train.meters import StepStats
from pcl.train.optim import OPTIMIZER_DEFAULTS, OPTIMIZERS

CHANCE = math.log(17)  # r = 16 negatives


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


def test_signals_of_non_finite_embeddings_do_not_raise() -> None:
    """A NaN step's embeddings (its signals are discarded with the step) must not make the SVD fail."""
    q = torch.full((8, 4), float("nan"))
    q[0, 0] = float("inf")
    assert torch.isfinite(embedding_signals(q)).all()


def test_plan_follows_the_epoch() -> None:
    """Grace and window are one epoch (10..300 / 10..100 steps); WINDOW measurements per window at least."""
    small = HealthPlan.for_schedule(steps_per_epoch=39, print_freq=10)  # the bundled subset at batch 128
    assert (small.grace, small.window, small.every, small.latest) == (39, 39, 7, 78)
    tiny = HealthPlan.for_schedule(steps_per_epoch=6, print_freq=10)
    assert (tiny.grace, tiny.window, tiny.every) == (10, 10, 2)
    big = HealthPlan.for_schedule(steps_per_epoch=5000, print_freq=10)  # ImageNet at batch 256
    assert (big.grace, big.window, big.every) == (300, 100, 10)
    assert [s for s in range(10) if tiny.measures(s)] == [0, 2, 4, 6, 8]


def _stats(loss: float, std_ratio: float | None = None, rank: float = 8.0, acc: float = 1.0) -> StepStats:
    """One applied step of a d = 16, r = 16 run: InfoNCE ``loss``, ``acc`` hits of 8; embedding signals when
    ``std_ratio`` is given."""
    health = [] if std_ratio is None else [std_ratio / 4.0, rank]
    return StepStats(loss, {"loss_inst": loss}, {"acc_inst": acc}, 8.0, 1.0, 1e-3, {"loss_inst": "InfoNCE"}, health)


def _monitor(plan: HealthPlan, recipe: RunRecipe | None = None) -> tuple[HealthMonitor, list[str]]:
    said: list[str] = []
    mon = HealthMonitor(16, plan, "loss_inst", CHANCE, accuracies=("acc_inst",), recipe=recipe, say=said.append)
    return mon, said


PLAN = HealthPlan(steps_per_epoch=20, grace=10, window=10, every=1)


def test_not_learning_is_caught_when_grace_and_window_are_over_and_said_once() -> None:
    """The loss at chance from step 0 with spread embeddings (std ratio 0.5: a partial collapse by the old rule's
    blind spot): warned at step grace + window - 1 exactly, once, with the figures."""
    mon, said = _monitor(PLAN, RunRecipe("adamw", 1e-3, 1.0, 128))
    for step in range(3 * PLAN.latest):
        mon.observe_step(step, _stats(CHANCE - 0.01, std_ratio=0.5, rank=8.0))
        if step < PLAN.latest - 1:
            assert not said, step
    assert len(said) == 1 and mon.collapse and mon.verdict == 1
    line = said[0]
    assert f"at step {PLAN.latest - 1} (epoch 0 " in line
    assert "InfoNCE averaged 2.823 over the last 10 steps, 0.010 below its chance level 2.833 (0.4 %" in line
    assert "acc_inst 12.50 % (a uniform guess among its 17 candidates: 5.88 %)" in line
    assert "effective rank 8.0 (in the first 10 steps: 8.0)" in line and "spread std·√d 0.5 (d = 16;" in line
    assert "not being learnt (the embeddings keep their spread" in line  # the rank did not fall


def test_partial_collapse_names_the_rank_fall_and_a_loss_above_chance() -> None:
    mon, said = _monitor(PLAN)
    for step in range(PLAN.grace):  # learning: the early rank is 12
        mon.observe_step(step, _stats(CHANCE - 1.0, std_ratio=0.6, rank=12.0))
    for step in range(PLAN.grace, PLAN.grace + PLAN.window):  # back to (just above) chance, rank 4
        mon.observe_step(step, _stats(CHANCE + 0.05, std_ratio=0.4, rank=4.0))
    assert len(said) == 1 and mon.verdict == 1
    assert "partial collapse" in said[0] and "fell to 33% of its early value" in said[0]
    assert "0.050 above its chance level" in said[0]
    assert "effective rank 4.0 (in the first 10 steps: 12.0)" in said[0]


def test_onset_after_learning_is_reported_within_one_window() -> None:
    """Learning for 3 epochs, then the loss jumps to chance: reported at most ``window`` steps later."""
    mon, said = _monitor(PLAN)
    onset = 60
    for step in range(onset + PLAN.window):
        mon.observe_step(step, _stats(CHANCE - (1.0 if step < onset else 0.0), std_ratio=0.5))
        if said:
            break
    assert said and onset < step <= onset + PLAN.window


def test_full_collapse_is_caught_after_window_measurements_without_grace() -> None:
    mon, said = _monitor(PLAN)
    for step in range(WINDOW):
        mon.observe_step(step, _stats(CHANCE, std_ratio=0.001, rank=1.0))
    assert len(said) == 1 and mon.verdict == 2 and "full collapse" in said[0] and "at step 4 " in said[0]


def test_each_sign_alone_is_no_collapse_and_a_learning_run_stays_silent() -> None:
    """A small spread with a learning loss (beyond the full-collapse band), a loss at chance within the grace steps,
    or a loss just outside the 2 % band, never warn."""
    mon, said = _monitor(PLAN)
    for step in range(200):
        low_spread = _stats(CHANCE - 1.5 * FULL_GAP_FRACTION * CHANCE, std_ratio=0.0, rank=1.0)
        mon.observe_step(step, low_spread if step % 2 else _stats(CHANCE - 1.1 * GAP_MIN_FRACTION * CHANCE, 0.5))
    assert not said and mon.collapsed_in_a_row == 0
    mon, said = _monitor(PLAN)
    for step in range(PLAN.grace):
        mon.observe_step(step, _stats(CHANCE + 0.5, std_ratio=2 * STD_RATIO_MIN))
    for step in range(PLAN.grace, 200):
        mon.observe_step(step, _stats(CHANCE - 0.5, std_ratio=0.5))
    assert not said and not mon.collapse


def test_a_short_full_collapse_interrupted_does_not_count() -> None:
    mon, said = _monitor(PLAN)
    for _ in range(3):
        for step in range(WINDOW - 1):
            mon.observe_step(step, _stats(CHANCE, std_ratio=0.001, rank=1.0))
        mon.observe_step(WINDOW, _stats(CHANCE, std_ratio=0.5, rank=8.0))
    assert not said and mon.collapsed_in_a_row == 0


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_advice_never_names_the_optimizer_in_use_and_quotes_the_run(optimizer: str) -> None:
    recipe = RunRecipe(optimizer, 0.06, 0.0, 256)
    text = advice(recipe)
    named = re.findall(r"--optimizer (\S+)", text)
    assert named == [ALTERNATIVE[optimizer]] and optimizer not in named
    assert "now lr 0.06, lr warmup 0 epochs, batch 256" in text
    assert "--lr 0.03;" in text and "--lr-warmup-epochs 2;" in text and "--batch-size 512 at the same --lr" in text
    other = ALTERNATIVE[optimizer]
    assert f"--optimizer {other} --lr {OPTIMIZER_DEFAULTS[other].lr * 2:.3g}" in text  # its default, batch 256
    # the whole warning too: the optimizer in use appears nowhere in it
    mon, said = _monitor(PLAN, recipe)
    for step in range(PLAN.latest):
        mon.observe_step(step, _stats(CHANCE, std_ratio=0.5))
    assert len(said) == 1 and f"--optimizer {optimizer}" not in said[0]
    assert re.search(rf"(?<![\w-]){re.escape(optimizer)}(?![\w-])", said[0].replace(f"--optimizer {other}", "")) is None


def test_advice_for_the_issue_runs() -> None:
    """AdamW defaults (lr 1e-3, 1 warmup epoch) and sgd-cos (lr 0.06, none) at batch 128."""
    assert advice(RunRecipe("adamw", 1e-3, 1.0, 128)) == (
        "Remedies for this run (now lr 0.001, lr warmup 1 epoch, batch 128): --lr 0.0005; --lr-warmup-epochs 3; "
        "--optimizer sgd-cos --lr 0.06; or --batch-size 256 at the same --lr"
    )
    assert "--optimizer adamw --lr 0.001;" in advice(RunRecipe("sgd-cos", 0.06, 0.0, 128))


def test_epoch_means_summary_and_a_method_without_chance() -> None:
    mon, _ = _monitor(HealthPlan(4, 10, 10, 1))
    mon.observe_step(0, _stats(2.0, std_ratio=2.0, rank=2.0))
    mon.observe_step(1, _stats(1.0, std_ratio=1.0, rank=4.0))
    out = mon.pop_epoch()
    assert out["health/epoch_std_ratio"] == 1.5 and out["health/epoch_effective_rank"] == 3.0
    assert abs(out["health/epoch_infonce_gap"] - (CHANCE - 1.5)) < 1e-12 and out["health/epoch_collapse"] == 0.0
    assert mon.pop_epoch() == {"health/epoch_collapse": 0.0}
    assert mon.summary().startswith("health: no collapse sign; InfoNCE averaged 1.500 over the last 2 steps")
    silent = HealthMonitor(16, PLAN)  # no watched term: embedding signals only, never a verdict
    assert set(silent.observe_step(0, _stats(CHANCE, std_ratio=0.0))) == {
        "health/embedding_std",
        "health/std_ratio",
        "health/effective_rank",
    }
    assert not silent.collapse and "no loss to watch" in silent.summary()
