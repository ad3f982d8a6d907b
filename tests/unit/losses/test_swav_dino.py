"""SwAV's and DINO's losses: Sinkhorn-Knopp against a hand-written reference (rows sum to 1, columns to B/K), the
distributed Sinkhorn and centre on 2 gloo processes against one process on the concatenated batch, the swapped
prediction and DINO's loss against hand-computed values, a crop never its own target, the centre update and the
teacher temperature and momentum schedules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pcl.losses.dino import cosine_to_one, dino_loss, teacher_temperature, updated_centre
from pcl.losses.swav import sinkhorn, swapped_hits, swapped_prediction


def reference_sinkhorn(scores: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """The paper's algorithm in plain Python floats (float64): Q = exp(S / eps)^T (K x B), total mass 1, then
    ``iters`` times rows to 1/K and columns to 1/B; returned as B x K, scaled by B."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[j][i] / eps) for j in range(b)] for i in range(k)]  # K x B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        q = [[v / sum(row) / k for v in row] for row in q]
        cols = [sum(q[i][j] for i in range(k)) for j in range(b)]
        q = [[q[i][j] / cols[j] / b for j in range(b)] for i in range(k)]
    return [[q[i][j] * b for i in range(k)] for j in range(b)]


def random_scores(b: int, k: int, seed: int = 0) -> torch.Tensor:
    """Cosine similarities of random unit embeddings and prototypes, ``(b, k)`` in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, 8, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 8, generator=g), dim=1)
    return z @ c.T


def test_sinkhorn_equals_the_hand_written_reference() -> None:
    scores = random_scores(12, 5)
    got = sinkhorn(scores, 0.05, 3)
    want = torch.tensor(reference_sinkhorn(scores.double().tolist(), 0.05, 3), dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert got.dtype == torch.float32 and got.shape == (12, 5)


@pytest.mark.parametrize(("b", "k"), [(12, 5), (64, 16), (8, 30)])
def test_sinkhorn_rows_sum_to_one_and_columns_to_b_over_k(b: int, k: int) -> None:
    scores = random_scores(b, k, seed=b)
    q = sinkhorn(scores, 0.05, 3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b))  # every sample's code is a distribution
    assert (q >= 0).all()
    converged = sinkhorn(scores, 0.05, 300)  # the equipartition constraint, reached by iterating
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(b))
    torch.testing.assert_close(converged.sum(dim=0), torch.full((k,), b / k), rtol=1e-3, atol=1e-3)
    # after 3 iterations already much closer to equipartition than the softmax of the scores
    soft = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert (q.sum(dim=0) - b / k).abs().max() < 0.5 * (soft - b / k).abs().max()


def test_sinkhorn_survives_a_small_epsilon() -> None:
    """exp(1 / 0.01) overflows float32 (the reference's exp(scores / eps) is inf there); the global maximum is
    subtracted first, a constant factor the normalisation removes exactly, so the codes equal the float64
    reference."""
    scores = 0.7 + 0.3 * random_scores(6, 4) / random_scores(6, 4).abs().max()  # in [0.4, 1], max 1
    assert not torch.isfinite(torch.exp(scores.max() / 0.01))
    q = sinkhorn(scores, 0.01, 3)
    want = torch.tensor(reference_sinkhorn(scores.double().tolist(), 0.01, 3))
    torch.testing.assert_close(q, want.float(), rtol=1e-4, atol=1e-6)


def test_swapped_prediction_matches_hand_computation() -> None:
    # B = 1, K = 2, two crops, tau = 0.5; codes given: q0 = [1, 0], q1 = [0.25, 0.75]
    s0, s1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    q0, q1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.25, 0.75]])
    loss = swapped_prediction([s0, s1], [q0, q1], [0, 1], 0.5)
    big_l = math.log(1 + math.e**2)  # log-sum-exp of [2, 0]
    # crop 1 predicts q0: -log softmax([0, 2])_0 = L; crop 0 predicts q1: -(0.25 (2 - L) + 0.75 (-L)) = L - 0.5
    assert loss.item() == pytest.approx(0.5 * (big_l + (big_l - 0.5)), abs=1e-6)
    assert swapped_hits([s0, s1], [q0, q1], [0, 1]).item() == 0.0  # argmax s1 = 1 != 0; argmax s0 = 0 != 1


def test_a_crop_never_predicts_its_own_code() -> None:
    """One assignment crop (0) among three: the loss is the mean over crops 1 and 2, and crop 0's own scores get
    no gradient."""
    scores = [random_scores(4, 3, seed=s).requires_grad_() for s in range(3)]
    q0 = sinkhorn(scores[0].detach(), 0.05, 3)
    loss = swapped_prediction(scores, [q0], [0], 0.1)
    parts = [-(q0 * torch.log_softmax(scores[v] / 0.1, dim=1)).sum(1).mean() for v in (1, 2)]
    assert loss.item() == pytest.approx(((parts[0] + parts[1]) / 2).item(), rel=1e-6)
    loss.backward()
    assert scores[0].grad is None or torch.count_nonzero(scores[0].grad) == 0
    assert torch.count_nonzero(scores[1].grad) > 0 and torch.count_nonzero(scores[2].grad) > 0


def test_dino_loss_matches_hand_computation() -> None:
    # B = 1, K = 2; two crops seen by both networks; centre [0.5, 0]; tau_s = 0.1, tau_t = 0.05
    student = [torch.tensor([[0.1, 0.0]]), torch.tensor([[0.0, 0.1]])]
    teacher = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    centre = torch.tensor([[0.5, 0.0]])
    r = dino_loss(student, teacher, centre, 0.1, 0.05)
    # P_t0 = softmax([10, 0]), P_t1 = softmax([-10, 20]); log P_s0 = log softmax([1, 0]), log P_s1 = its mirror.
    # pairs (t0, s1) and (t1, s0): H = l + P_t0[0] and l + P_t1[1], with l = log(1 + e^-1)
    ell = math.log(1 + math.exp(-1))
    p00, p11 = 1 / (1 + math.exp(-10)), 1 / (1 + math.exp(-30))
    assert r.loss.item() == pytest.approx(ell + (p00 + p11) / 2, abs=1e-6)

    def h(p: float) -> float:
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    assert r.teacher_entropy.item() == pytest.approx((h(p00) + h(p11)) / 2, abs=1e-6)
    # KL(softmax(t / 0.05) || softmax(c / 0.05)): t0 / tau = [20, 0], t1 / tau = [0, 20], c / tau = [10, 0]
    log_c = [10 - math.log(math.exp(10) + 1), -math.log(math.exp(10) + 1)]
    p = 1 / (1 + math.exp(-20))
    kl0 = p * (math.log(p) - log_c[0]) + (1 - p) * (math.log(1 - p) - log_c[1])
    kl1 = (1 - p) * (math.log(1 - p) - log_c[0]) + p * (math.log(p) - log_c[1])
    assert r.kl_centre.item() == pytest.approx((kl0 + kl1) / 2, rel=1e-5)
    assert r.hits.item() == 0.0  # student crop 1 peaks at 1, teacher crop 0 at 0; and the reverse


def test_dino_never_pairs_a_crop_with_itself() -> None:
    """One teacher crop, three student crops: the loss averages student crops 1 and 2 only; crop 0 (the teacher's
    own view) gets no gradient."""
    student = [random_scores(4, 6, seed=s).requires_grad_() for s in range(3)]
    teacher = [random_scores(4, 6, seed=9)]
    centre = torch.zeros(1, 6)
    r = dino_loss(student, teacher, centre, 0.1, 0.04)
    p = torch.softmax(teacher[0] / 0.04, dim=-1)
    parts = [-(p * torch.log_softmax(student[v] / 0.1, dim=-1)).sum(-1).mean() for v in (1, 2)]
    assert r.loss.item() == pytest.approx(((parts[0] + parts[1]) / 2).item(), rel=1e-6)
    r.loss.backward()
    assert student[0].grad is None or torch.count_nonzero(student[0].grad) == 0
    with pytest.raises(ValueError, match="at least two crops"):
        dino_loss(student[:1], teacher, centre, 0.1, 0.04)


def test_a_collapsed_teacher_shows_in_its_signals() -> None:
    """Outputs that no longer depend on the image (every row the centre) have KL 0 to the centre and, centred,
    a uniform teacher (entropy log K); outputs dominated by one dimension have entropy near 0."""
    centre = torch.tensor([[0.3, -0.2, 0.9, 0.1]])
    same = [centre.expand(5, 4).clone(), centre.expand(5, 4).clone()]
    r = dino_loss(same, same, centre, 0.1, 0.04)
    assert r.kl_centre.item() == pytest.approx(0.0, abs=1e-6)
    assert r.teacher_entropy.item() == pytest.approx(math.log(4), abs=1e-6)
    peaked = [torch.tensor([[5.0, 0.0, 0.0, 0.0]]).expand(5, 4).clone() for _ in range(2)]
    r = dino_loss(peaked, peaked, torch.zeros(1, 4), 0.1, 0.04)
    assert r.teacher_entropy.item() < 1e-6


def test_centre_update_is_an_ema_of_the_batch_mean() -> None:
    centre = torch.tensor([[0.5, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # batch mean [0.5, 0.5]
    torch.testing.assert_close(updated_centre(centre, teacher, 0.9), torch.tensor([[0.5, 0.05]]))
    torch.testing.assert_close(updated_centre(centre, teacher, 0.0), torch.tensor([[0.5, 0.5]]))


def test_teacher_temperature_warms_up_like_the_reference() -> None:
    """The reference's ``np.linspace(0.04, 0.07, warmup)`` per epoch, then 0.07."""
    warmup = np.linspace(0.04, 0.07, 30)
    got = [teacher_temperature(e, 0.04, 0.07, 30) for e in range(40)]
    np.testing.assert_allclose(got[:30], warmup, rtol=1e-12)
    assert got[30:] == [0.07] * 10 and got[0] == 0.04 and got[29] == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.07, 1) == 0.04 and teacher_temperature(1, 0.04, 0.07, 1) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07  # no warmup


def test_teacher_momentum_rises_from_its_base_to_one_along_a_cosine() -> None:
    total = 100
    assert cosine_to_one(0, total, 0.996) == pytest.approx(0.996)
    assert cosine_to_one(50, total, 0.996) == pytest.approx(0.998)
    assert cosine_to_one(total, total, 0.996) == pytest.approx(1.0)
    assert cosine_to_one(2 * total, total, 0.996) == pytest.approx(1.0)
    # the reference's schedule: final + 0.5 (base - final) (1 + cos(pi i / total))
    ref = 1 + 0.5 * (0.996 - 1) * (1 + np.cos(np.pi * np.arange(total) / total))
    np.testing.assert_allclose([cosine_to_one(i, total, 0.996) for i in range(total)], ref, rtol=1e-12)


def _rank(rank: int, world: int, init: str, scores: torch.Tensor, teacher: torch.Tensor, out: str) -> None:
    """One gloo rank: its share of the rows through Sinkhorn and the centre update."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        codes = sinkhorn(scores.chunk(world)[rank], 0.05, 3)
        centre = updated_centre(torch.zeros(1, teacher.shape[1]), teacher.chunk(world)[rank], 0.9)
        torch.save({"codes": codes, "centre": centre}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_sinkhorn_and_centre_equal_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    scores, teacher = random_scores(16, 6, seed=3), random_scores(16, 10, seed=4)
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_rank, args=(2, init, scores, teacher, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    torch.testing.assert_close(torch.cat([p["codes"] for p in parts]), sinkhorn(scores, 0.05, 3), rtol=1e-5, atol=1e-7)
    for p in parts:
        torch.testing.assert_close(p["centre"], updated_centre(torch.zeros(1, 10), teacher, 0.9))
