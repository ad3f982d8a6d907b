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
    density = torch.tensor([0.5, 1.0, 0.25, 2.0])
    q = F.normalize(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), dim=1)
    positives = torch.tensor([0, 2])
    loss, correct = proto_nce(q, positives, centroids, density, r=10)  # r > free clusters: negatives {1, 3}
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
