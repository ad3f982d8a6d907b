"""The objective: InfoNCE + proto_weight x mean ProtoNCE, and the choice of phi."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from pcl.losses import LossConfig, info_nce, pcl_objective, proto_nce, prototype_concentrations, total_loss


def test_total_loss_weights_the_proto_term() -> None:
    inst, protos = torch.tensor(2.0), [torch.tensor(1.0), torch.tensor(3.0)]
    assert total_loss(inst, protos).item() == 4.0  # official: InfoNCE + mean over granularities
    assert total_loss(inst, protos, 0.5).item() == 3.0
    assert total_loss(inst, protos, 0.0).item() == 2.0
    assert total_loss(inst, []).item() == 2.0


def test_fixed_concentration_uses_temperature_for_every_prototype() -> None:
    torch.manual_seed(0)
    q = F.normalize(torch.randn(6, 8), dim=1)
    c = F.normalize(torch.randn(10, 8), dim=1)
    concentration = torch.rand(10) + 0.1
    pos = torch.tensor([0, 1, 1, 2, 3, 3])
    phi = prototype_concentrations(concentration, 0.2, fixed=True)
    assert torch.equal(phi, torch.full((10,), 0.2))
    torch.manual_seed(1)
    loss, _ = proto_nce(q, pos, c, phi, r=10)
    ids = torch.cat([pos, torch.tensor([4, 5, 6, 7, 8, 9])])  # r >= free clusters: all negatives, in order
    assert loss.item() == pytest.approx(F.cross_entropy(q @ c[ids].T / 0.2, torch.arange(6)).item(), rel=1e-6)
    assert prototype_concentrations(concentration, 0.2, fixed=False) is concentration


@pytest.mark.parametrize("fixed", [False, True])
def test_objective_is_infonce_plus_mean_protonce_bit_for_bit(fixed: bool) -> None:
    """The same operations in the same order (RNG draws of the negative sampling included) as calling the
    two losses by hand, so the engine's results are unchanged by going through the objective."""
    torch.manual_seed(0)
    b, d, n = 4, 8, 20
    q, k, qc = (F.normalize(torch.randn(b, d), dim=1) for _ in range(3))
    queue = F.normalize(torch.randn(d, 16), dim=0)
    index = torch.tensor([0, 5, 7, 19])
    levels = []
    for kk in (3, 12):
        levels.append(
            types.SimpleNamespace(
                im2cluster=torch.randint(0, kk, (n,)),
                centroids=F.normalize(torch.randn(kk, d), dim=1),
                concentration=torch.rand(kk) + 0.1,
            )
        )
    torch.manual_seed(7)
    cfg = LossConfig(temperature=0.2, fixed_concentration=fixed, proto_weight=0.5)
    obj = pcl_objective(q, k, queue, qc, index, levels, cfg, 5)
    torch.manual_seed(7)
    inst, logits = info_nce(q, k, queue, 0.2)
    protos = [
        proto_nce(
            qc, g.im2cluster[index], g.centroids, torch.full_like(g.concentration, 0.2) if fixed else g.concentration, 5
        )
        for g in levels
    ]
    assert torch.equal(obj.inst, inst) and torch.equal(obj.logits, logits)
    assert all(torch.equal(a[0], b_[0]) and torch.equal(a[1], b_[1]) for a, b_ in zip(obj.protos, protos, strict=True))
    assert torch.equal(obj.total, inst + 0.5 * torch.stack([p[0] for p in protos]).mean())
    warmup = pcl_objective(q, k, queue, qc, index, [], LossConfig(temperature=0.2), 5)
    assert torch.equal(warmup.total, inst)  # warmup: InfoNCE only
