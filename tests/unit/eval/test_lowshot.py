"""Low-shot SVM protocol: separable features, shuffled labels, draws shared across calls and encoders, bad k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcl.eval.lowshot import LowShotConfig, choose_cost, lowshot_draw, lowshot_svm, mean_ap
from pcl.utils.errors import PCLError


def _blobs(per_class: int, classes: int, dim: int, seed: int, spread: float = 0.3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(7))
    y = torch.arange(classes).repeat_interleave(per_class)
    return means[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_separable_features_reach_100_at_k16_and_shuffled_labels_stay_at_chance() -> None:
    x, y = _blobs(40, 5, 32, seed=0)
    xt, yt = _blobs(40, 5, 32, seed=1)
    res = lowshot_svm(x, y, xt, yt, LowShotConfig(ks=(1, 16), draws=3, costs=(0.1, 0.5)))
    assert res["16"]["top1"] == pytest.approx(100.0) and res["16"]["map"] == pytest.approx(100.0)
    assert res["16"]["cost_selection"] == "cv" and res["1"]["cost_selection"] == "fixed"
    assert [d["cost"] for d in res["1"]["draws"]] == [0.5, 0.5, 0.5]  # k = 1: the official fixed cost
    assert len(res["16"]["draws"]) == 3 and res["16"]["top1_std"] == pytest.approx(0.0)
    g = torch.Generator().manual_seed(3)
    shuffled, shuffled_t = y[torch.randperm(len(y), generator=g)], yt[torch.randperm(len(yt), generator=g)]
    chance = lowshot_svm(x, shuffled, xt, shuffled_t, LowShotConfig(ks=(16,), draws=5, costs=(0.5,)))
    assert abs(chance["16"]["top1"] - 20.0) < 6.0  # labels unrelated to the features: 20 %, std 2.8 % per draw
    assert abs(chance["16"]["map"] - 20.0) < 6.0


def test_draws_depend_only_on_labels_seed_k_and_draw() -> None:
    y = np.repeat(np.arange(4), 10)
    a = lowshot_draw(y, 4, 2)
    assert np.array_equal(a, lowshot_draw(y, 4, 2))  # two calls
    assert np.bincount(y[a]).tolist() == [4, 4, 4, 4] and len(set(a.tolist())) == 16
    assert not np.array_equal(a, lowshot_draw(y, 4, 3)) and not np.array_equal(a, lowshot_draw(y, 4, 2, seed=1))
    # two encoders (different features, same labels): the SVMs see the same images, so identical features for
    # those images give identical results whatever the other images' features are
    x1, yt = _blobs(10, 4, 8, seed=0)
    x2 = x1.clone()
    draws = {int(i) for d in range(2) for i in lowshot_draw(yt.numpy(), 2, d)}
    others = [i for i in range(len(yt)) if i not in draws]
    x2[others] = torch.randn(len(others), 8)
    xt, ytt = _blobs(5, 4, 8, seed=1)
    cfg = LowShotConfig(ks=(2,), draws=2, costs=(0.1, 1.0))
    assert lowshot_svm(x1, yt, xt, ytt, cfg) == lowshot_svm(x2, yt, xt, ytt, cfg)


def test_k_larger_than_the_smallest_class_is_refused() -> None:
    y = torch.tensor([0] * 5 + [1] * 3)
    x = torch.randn(8, 4)
    with pytest.raises(PCLError, match=r"k = 4 needs 1 <= k <= 3 \(the train images of class 1\)"):
        lowshot_svm(x, y, x, y, LowShotConfig(ks=(1, 4)))


def test_cost_chosen_on_the_sample_and_mean_ap_by_hand() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.3]])
    y = np.array([0, 1, 1, 0])
    # class 0: ranking 0.9 (pos), 0.6 (neg), 0.2 (neg), 0.1 (pos): AP = (1/1 + 2/4) / 2 = 0.75
    # class 1: ranking 0.8 (pos), 0.4 (pos), 0.3 (neg), 0.1 (neg): AP = 1
    assert mean_ap(scores, y, np.array([0, 1])) == pytest.approx(87.5)
    x, yy = _blobs(4, 3, 8, seed=0)
    cost, how = choose_cost(x.numpy(), yy.numpy(), np.arange(3), 4, (0.1, 0.5, 2.0), seed=0)
    assert how == "cv" and cost == 0.5  # separable: every cost is perfect, the tie goes to the official 0.5
    assert choose_cost(x.numpy(), yy.numpy(), np.arange(3), 1, (0.1, 2.0), seed=0) == (0.5, "fixed")
