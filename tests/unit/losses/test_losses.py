"""InfoNCE and ProtoNCE against hand-computed values; negative-prototype sampling invariants."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pcl.losses import info_nce, proto_nce, sample_negative_prototypes


def test_info_nce_matches_hand_computation() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # (d=2, r=3): columns e1, e2, -e1
    t = 0.5
    loss, logits = info_nce(q, k, queue, t)
    # row 0: pos 0.6, negs [1, 0, -1]; row 1: pos 1, negs [0, 1, 0]; all divided by t
    row0 = [1.2, 2.0, 0.0, -2.0]
    row1 = [2.0, 0.0, 2.0, 0.0]
    expected = [
        -row0[0] + math.log(sum(math.exp(v) for v in row0)),
        -row1[0] + math.log(sum(math.exp(v) for v in row1)),
    ]
    torch.testing.assert_close(logits, torch.tensor([row0, row1]))
    assert abs(loss.item() - sum(expected) / 2) < 1e-6


def test_proto_nce_matches_hand_computation_when_all_negatives_fit() -> None:
    centroids = torch.eye(4)  # k=4 prototypes e1..e4
    concentration = torch.tensor([0.5, 1.0, 0.25, 2.0])
    q = F.normalize(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), dim=1)
    positives = torch.tensor([0, 2])
    loss, correct = proto_nce(q, positives, centroids, concentration, r=10)  # r > free clusters: negatives {1, 3}
    s = 1 / math.sqrt(2)
    # columns: [c0, c2, c1, c3]
    row0 = [s / 0.5, 0.0, s / 1.0, 0.0]
    row1 = [0.0, 1 / 0.25, 0.0, 0.0]
    ce0 = -row0[0] + math.log(sum(math.exp(v) for v in row0))
    ce1 = -row1[1] + math.log(sum(math.exp(v) for v in row1))
    assert abs(loss.item() - (ce0 + ce1) / 2) < 1e-5
    assert int(correct) == 2


def test_proto_nce_counts_duplicate_positives_as_correct() -> None:
    centroids = torch.eye(3)
    q = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    _, correct = proto_nce(q, torch.tensor([0, 0]), centroids, torch.ones(3), r=5)
    assert int(correct) == 2  # row 1's arg-max is column 0, a copy of its own prototype


def test_sampling_never_returns_a_positive_and_is_distinct() -> None:
    torch.manual_seed(0)
    for _ in range(50):
        k = int(torch.randint(5, 200, ()))
        pos = torch.randint(0, k, (int(torch.randint(1, 64, ())),))
        r = int(torch.randint(1, 100, ()))
        neg = sample_negative_prototypes(pos, k, r)
        free = k - pos.unique().numel()
        assert neg.numel() == min(r, free)
        assert neg.unique().numel() == neg.numel()
        assert not torch.isin(neg, pos).any()
        assert ((neg >= 0) & (neg < k)).all()


def test_sampling_returns_all_free_clusters_when_fewer_than_r() -> None:
    neg = sample_negative_prototypes(torch.tensor([1, 1, 3]), 6, r=100)
    assert sorted(neg.tolist()) == [0, 2, 4, 5]


def test_sampling_is_roughly_uniform() -> None:
    torch.manual_seed(1)
    counts = torch.zeros(20)
    for _ in range(2000):
        counts[sample_negative_prototypes(torch.tensor([0]), 20, 5)] += 1
    assert counts[0] == 0
    expected = 2000 * 5 / 19
    assert ((counts[1:] - expected).abs() < 0.15 * expected).all()


def _proto_nce_reference(
    q: torch.Tensor, positives: torch.Tensor, centroids: torch.Tensor, concentration: torch.Tensor, neg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula as first written: gather, ``q @ c.T``, divide the logits by phi, cross-entropy."""
    ids = torch.cat([positives, neg])
    logits = (q @ centroids[ids].T) / concentration[ids]
    loss = F.cross_entropy(logits, torch.arange(q.shape[0]))
    return loss, (ids[logits.argmax(dim=1)] == positives).sum()


def _random_problem(b: int, k: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g), dim=1)
    centroids = F.normalize(torch.randn(k, d, generator=g), dim=1)
    concentration = 0.1 + 0.3 * torch.rand(k, generator=g)
    positives = torch.randint(0, k, (b,), generator=g)
    positives[1] = positives[0]  # a shared positive
    return q, positives, centroids, concentration


def test_proto_nce_masked_path_equals_reference_loss_and_gradient() -> None:
    """k <= r: all free clusters are negatives; the masked fixed-shape logits give the same loss and grad."""
    q, positives, centroids, concentration = _random_problem(b=12, k=30)
    free = torch.ones(30, dtype=torch.bool)
    free[positives] = False
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    loss, correct = proto_nce(q1, positives, centroids, concentration, r=64)
    ref, ref_correct = _proto_nce_reference(q2, positives, centroids, concentration, free.nonzero().squeeze(1))
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-5, atol=1e-7)
    assert int(correct) == int(ref_correct)


def test_proto_nce_sampled_path_equals_reference_for_the_same_negatives() -> None:
    """k - B >= r: with the same RNG state the negatives and therefore loss, grad and hits are the reference's."""
    q, positives, centroids, concentration = _random_problem(b=12, k=200, seed=3)
    torch.manual_seed(7)
    neg = sample_negative_prototypes(positives, 200, 50)
    torch.manual_seed(7)
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    loss, correct = proto_nce(q1, positives, centroids, concentration, r=50)
    ref, ref_correct = _proto_nce_reference(q2, positives, centroids, concentration, neg)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-5, atol=1e-7)
    assert int(correct) == int(ref_correct)


def test_sampling_without_host_sync_is_uniform_over_free_clusters() -> None:
    """The top-k-of-uniform-scores path (k - B >= r): positives never drawn, free clusters equally often
    (chi-square at p = 0.001), and pairs of free clusters equally often together (pair inclusion rate)."""
    from scipy.stats import chi2

    torch.manual_seed(2)
    k, r, draws = 40, 12, 4000
    pos = torch.tensor([0, 5, 5, 9, 17, 33])
    counts, pair = torch.zeros(k), 0
    for _ in range(draws):
        neg = sample_negative_prototypes(pos, k, r)
        assert neg.numel() == r and neg.unique().numel() == r
        counts[neg] += 1
        pair += int(torch.isin(torch.tensor([1, 2]), neg).all())
    free = torch.ones(k, dtype=torch.bool)
    free[pos] = False
    assert counts[~free].sum() == 0
    n_free = int(free.sum())
    expected = draws * r / n_free
    stat = float(((counts[free] - expected) ** 2 / expected).sum())
    assert stat < chi2.ppf(0.999, n_free - 1)
    p_pair = r * (r - 1) / (n_free * (n_free - 1))  # P(both of two given free clusters are drawn)
    assert abs(pair / draws - p_pair) < 4 * math.sqrt(p_pair * (1 - p_pair) / draws)
