"""Multi-crop in MoCo / PCL: the embeddings of every crop, the loss over query x key crops against hand-computed
InfoNCE / ProtoNCE, and the zero-local-crop case, whose operations are exactly the two-crop ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pcl.config import Config
from pcl.data.datasets import AugConfig, DataConfig
from pcl.losses.config import LossConfig
from pcl.losses.infonce import info_nce
from pcl.losses.objective import pcl_objective
from pcl.methods.moco import MoCo
from pcl.model.encoder import ModelConfig


def vit_moco(global_crops: int = 2, local_crops: int = 0) -> MoCo:
    torch.manual_seed(0)
    model = ModelConfig(arch="test_vit", patch_size=4, low_dim=8, pcl_r=16, bn_splits=1)
    aug = AugConfig(image_size=16, global_crops=global_crops, local_crops=local_crops, local_crop_size=8)
    return MoCo.from_config(Config(model=model, data=DataConfig(aug=aug)))


def views(b: int, sizes: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, s, s, generator=g) for s in sizes]


def test_every_crop_gets_an_embedding_of_its_image() -> None:
    m = vit_moco(global_crops=3, local_crops=2)
    out = m(views(4, [16, 16, 16, 8, 8]), torch.arange(4))
    assert out.q.shape == out.k.shape == (4, 8)
    assert [t.shape for t in out.k_extra] == [(4, 8)]  # the third global crop: one more key view
    assert [t.shape for t in out.q_local] == [(4, 8), (4, 8)] and len(out.q_cluster_local) == 2
    for t in (out.q, out.k, *out.k_extra, *out.q_local):
        torch.testing.assert_close(t.norm(dim=1), torch.ones(4))
    # the local crops' queries are the query encoder's, one forward for both: the same as one crop at a time
    v = views(4, [16, 16, 16, 8, 8])
    alone = F.normalize(m.encoder_q(v[4]), dim=1)
    torch.testing.assert_close(out.q_local[1], alone, rtol=1e-5, atol=1e-6)
    step = m.objective(out, torch.arange(4))
    assert {"loss_inst", "loss_inst_local"} <= set(step.terms) and {"acc_inst", "acc_inst_local"} <= set(step.hits)
    assert step.pending.shape == (4, 8)  # the first key view's keys are enqueued


def test_multicrop_loss_is_the_mean_over_query_and_key_crops() -> None:
    g = torch.Generator().manual_seed(0)
    n = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    q, k, k2, ql1, ql2 = (n(4, 8) for _ in range(5))
    queue = n(16, 8).T.contiguous()
    cfg = LossConfig()
    obj = pcl_objective(q, k, queue, q, torch.arange(4), [], cfg, 16, [ql1, ql2], [ql1, ql2], [k2])
    pairs = [info_nce(a, b, queue, cfg.temperature)[0] for a in (q, ql1, ql2) for b in (k, k2)]
    torch.testing.assert_close(obj.inst, torch.stack(pairs).mean())
    torch.testing.assert_close(obj.total, obj.inst)
    torch.testing.assert_close(obj.local_terms["loss_inst_local"], torch.stack(pairs[2:]).mean())
    torch.testing.assert_close(obj.logits, info_nce(q, k, queue, cfg.temperature)[1])


def test_zero_local_crops_is_the_two_crop_computation_bit_for_bit() -> None:
    """The multi-crop formula with one query and one key crop gives the two-crop values exactly; and a two-crop
    MoCo built through the view spec embeds exactly as the encoders alone do (no extra forward, no shuffle change)."""
    g = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(6, 8, generator=g), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(8, 16, generator=g), dim=0)
    cfg = LossConfig()
    plain_inst, plain_logits = info_nce(q, k, queue, cfg.temperature)  # the two-crop computation
    multi = pcl_objective(q, k, queue, q, torch.arange(6), [], cfg, 16, [], [], [])
    assert torch.equal(plain_inst, multi.inst) and torch.equal(plain_logits, multi.logits)
    assert multi.local_terms == {} and multi.local_hits == {}
    m = vit_moco()
    v = views(4, [16, 16])
    out = m(v, torch.arange(4))
    assert out.q_local == () and out.k_extra == ()
    assert torch.equal(out.q, F.normalize(m.encoder_q(v[0]), dim=1))
    with torch.no_grad():
        assert torch.equal(out.k, F.normalize(m.encoder_k(v[1]), dim=1))  # no batch norm: keys unshuffled


def test_micro_batches_pending_dataclasses_are_joined_field_by_field() -> None:
    """``--accum-steps`` with ``--estep-features bank``: PCL's pending :class:`BankKeys` of the micro-batches
    become one, each tensor concatenated in order and ``None`` kept."""
    from pcl.methods.base import concat_batches
    from pcl.methods.pcl import BankKeys

    a = BankKeys(torch.ones(2, 3), None, torch.tensor([4, 5]))
    b = BankKeys(torch.zeros(1, 3), None, torch.tensor([7]))
    joined = concat_batches([a, b])
    assert isinstance(joined, BankKeys) and joined.raw is None
    assert torch.equal(joined.keys, torch.cat([a.keys, b.keys])) and joined.index.tolist() == [4, 5, 7]
