"""Momentum update, queue ring buffer, shuffle BN and task-specific heads of the PCL builder."""

from __future__ import annotations

import pytest
import torch

from pcl.model.backbone import SplitBatchNorm
from tests.helpers import tiny_model


def test_key_encoder_starts_as_copy_and_is_frozen() -> None:
    m = tiny_model(cluster_head="mlp")
    for pq, pk in zip(m.encoder_q.parameters(), m.encoder_k.parameters(), strict=True):
        assert torch.equal(pq, pk) and not pk.requires_grad
    for pq, pk in zip(m.cluster_q.parameters(), m.cluster_k.parameters(), strict=True):
        assert torch.equal(pq, pk) and not pk.requires_grad


def test_momentum_update_formula() -> None:
    m = tiny_model(cluster_head="mlp")
    with torch.no_grad():
        for p in [*m.encoder_q.parameters(), *m.cluster_q.parameters()]:
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in m.key_parameters()]
    q_params = [*m.encoder_q.parameters(), *m.cluster_q.parameters()]
    m.momentum_update()
    for pk, k0, pq in zip(m.key_parameters(), before_k, q_params, strict=True):
        torch.testing.assert_close(pk, 0.9 * k0 + 0.1 * pq)


def test_queue_wraps_around_for_any_batch_size() -> None:
    m = tiny_model()
    keys = [torch.randn(3, 8) for _ in range(4)]  # 12 keys into a ring of 10
    for k in keys:
        m.enqueue(k)
    flat = torch.cat(keys)
    assert int(m.queue_ptr) == 12 % 10
    expected = torch.empty(8, 10)
    for i, row in enumerate(flat):
        expected[:, i % 10] = row
    torch.testing.assert_close(m.queue, expected)


def test_shuffled_keys_come_back_in_input_order() -> None:
    torch.manual_seed(0)
    m = tiny_model(bn_splits=1).eval()  # eval BN: the key of an image cannot depend on the batch order
    x = torch.randn(6, 3, 32, 32)
    direct = torch.nn.functional.normalize(m.encoder_k(x), dim=1)
    out = m([x, x], with_cluster=False)
    torch.testing.assert_close(out.k, direct, atol=1e-5, rtol=1e-5)


def test_split_batchnorm_normalises_each_split() -> None:
    bn = SplitBatchNorm(2, num_splits=2, affine=False).train()
    x = torch.randn(8, 2, 3, 3)
    x[0::2] += 5.0  # split 0 (even rows) has a different mean than split 1
    y = bn(x)
    for s in range(2):
        part = y[s::2]
        torch.testing.assert_close(part.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["none", "mlp", "report"])
def test_instance_task_never_goes_through_cluster_head(kind: str) -> None:
    torch.manual_seed(0)
    m = tiny_model(cluster_head=kind).eval()
    x = torch.randn(4, 3, 32, 32)
    out = m([x, x], with_cluster=True)
    q_direct = torch.nn.functional.normalize(m.encoder_q(x), dim=1)
    torch.testing.assert_close(out.q, q_direct)
    if kind == "none":
        assert torch.equal(out.q_cluster, out.q)
    else:
        assert not torch.allclose(out.q_cluster, out.q)
    if kind == "report":  # final ReLU: ProtoNCE queries and E-step features live in the positive orthant
        assert (out.q_cluster >= 0).all() and (m.cluster_features(x) >= 0).all()
    assert torch.allclose(out.q_cluster.norm(dim=1), torch.ones(4))


def test_cluster_head_gets_gradient_only_from_cluster_queries() -> None:
    m = tiny_model(cluster_head="mlp")
    x = torch.randn(4, 3, 32, 32)
    out = m([x, x], with_cluster=True)
    out.q.sum().backward()
    assert all(p.grad is None for p in m.cluster_q.parameters())
    out = m([x, x], with_cluster=True)
    out.q_cluster.sum().backward()
    assert all(p.grad is not None for p in m.cluster_q.parameters())
