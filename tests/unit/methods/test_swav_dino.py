"""SwAV and DINO as methods on tiny models: one backbone pass per resolution, the weight-normalised last layer,
prototypes normalised and frozen for the first steps, SwAV's queue, DINO's teacher (a frozen copy, momentum
update at the clock's step, centre), the last layer frozen in the first epoch, multi-crop batches of two sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pcl.config import Config
from pcl.data.views import CropGroup, ViewSpec
from pcl.losses.dino import cosine_to_one, dino_loss, teacher_temperature
from pcl.losses.swav import sinkhorn
from pcl.methods.base import StepClock
from pcl.methods.dino import DINO, DINOConfig
from pcl.methods.swav import SwAV, SwAVConfig
from pcl.model.encoder import ModelConfig
from pcl.model.heads import WeightNormLinear
from pcl.model.multicrop import size_runs

MODEL = ModelConfig(arch="resnet18", low_dim=8, bn_splits=1)
TWO = ViewSpec.two_crops(16, 0.2)
MULTI = ViewSpec((CropGroup(2, 16, (0.4, 1.0)), CropGroup(3, 8, (0.05, 0.4), "local")))


def views(spec: ViewSpec, b: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, s, s, generator=g) for s in spec.sizes]


def swav(spec: ViewSpec = TWO, **kw: object) -> SwAV:
    torch.manual_seed(0)
    return SwAV(model=MODEL, swav=SwAVConfig(prototypes=5, **kw), spec=spec)


def dino(spec: ViewSpec = TWO, epochs: int = 2, **kw: object) -> DINO:
    torch.manual_seed(0)
    cfg = DINOConfig(out_dim=12, hidden_dim=16, bottleneck_dim=6, **kw)
    return DINO(model=MODEL, dino=cfg, spec=spec, epochs=epochs)


def test_one_backbone_pass_per_resolution_gives_the_per_view_features() -> None:
    vs = views(MULTI)
    assert size_runs(vs) == [slice(0, 2), slice(2, 5)]
    net = swav(MULTI).encoder.eval()
    calls: list[int] = []
    net.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    together = net(vs)
    assert calls == [8, 12]  # 2 global crops of 4 images, then 3 local ones
    one_by_one = torch.cat([net.head(net.backbone(v)) for v in vs])
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-5)


def test_weight_norm_linear_is_torch_weight_norm_with_unit_gain() -> None:
    layer = WeightNormLinear(6, 4, train_norm=True)
    with torch.no_grad():
        layer.g.copy_(torch.tensor([1.0, 2.0, 0.5, 3.0]))
    ref = torch.nn.Linear(6, 4, bias=False)
    ref.weight.data.copy_(layer.v.data)
    ref = torch.nn.utils.parametrizations.weight_norm(ref)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(layer.g[:, None])
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), ref(x))
    assert not WeightNormLinear(6, 4).g.requires_grad  # DINO's norm_last_layer: the norm stays 1


def swav_step(m: SwAV, clock: StepClock, vs: list[torch.Tensor]) -> object:
    m.on_step_start(clock)
    step = m.objective(m(vs), torch.arange(4))
    m.zero_grad()
    step.loss.backward()
    return step


def test_swav_prototypes_are_unit_rows_and_frozen_for_the_first_steps() -> None:
    m, vs = swav(), views(TWO)
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(5))
    swav_step(m, StepClock(step=2, epoch=0, steps_per_epoch=3), vs)  # default: frozen for the first epoch
    assert m.prototypes.weight.grad is None and m.encoder.head[0].weight.grad is not None
    step = swav_step(m, StepClock(step=3, epoch=1, steps_per_epoch=3), vs)
    assert m.prototypes.weight.grad is not None and torch.count_nonzero(m.prototypes.weight.grad) > 0
    with torch.no_grad():
        m.prototypes.weight.mul_(3.0)  # as an optimizer step would move them off the sphere
    m.after_step(step)
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(5))
    explicit = swav(freeze_prototypes_iters=1)
    swav_step(explicit, StepClock(step=1, epoch=0, steps_per_epoch=3), vs)
    assert explicit.prototypes.weight.grad is not None  # --swav-freeze-prototypes-iters 1: only step 0


def test_swav_codes_are_sinkhorn_of_the_global_crops() -> None:
    m, vs = swav(MULTI), views(MULTI)
    m.on_step_start(StepClock(step=10, epoch=1, steps_per_epoch=3))
    out = m(vs)
    assert out.scores.shape == (5 * 4, 5) and out.z.shape == (20, 8)
    step = m.objective(out, torch.arange(4))
    scores = out.scores.detach().split(4)
    codes = [sinkhorn(scores[i], 0.05, 3) for i in (0, 1)]  # the two global crops; every crop predicts
    logp = [F.log_softmax(s / 0.1, dim=1) for s in scores]
    want = sum(sum(-(codes[i] * logp[v]).sum(1).mean() for v in range(5) if v != i) / 4 for i in (0, 1)) / 2
    assert step.terms["loss_swav"].item() == pytest.approx(want.item(), rel=1e-5)
    assert step.checked == {"loss_swav": "swapped prediction"} and step.embedding.shape == (4, 8)


def test_swav_queue_fills_from_its_epoch_and_joins_sinkhorn_once_full() -> None:
    m, vs = swav(queue_length=8, queue_start_epoch=1), views(TWO)
    assert m.queue.shape == (2, 8, 8)
    step = swav_step(m, StepClock(step=0, epoch=0, steps_per_epoch=3), vs)
    m.after_step(step)
    assert int(m.queue_filled) == 0  # epoch 0 < --swav-queue-start-epoch 1
    for s in (3, 4):  # other images than the last step's: a queue of the same embeddings changes no code
        step = swav_step(m, StepClock(step=s, epoch=1, steps_per_epoch=3), views(TWO, seed=s))
        assert not m.queue_in_use()  # not full before this step's enqueue
        m.after_step(step)
    assert int(m.queue_filled) == 8 and int(m.queue_ptr) == 0 and m.queue_in_use()
    torch.testing.assert_close(m.queue[0, 4:], step.pending[0])  # the last batch's embeddings of crop 0
    torch.testing.assert_close(m.queue[1, 4:], step.pending[1])
    m.on_step_start(StepClock(step=5, epoch=1, steps_per_epoch=3))
    scores = m(vs).scores.detach().split(4)[0]
    past = m.queue[0] @ m.prototypes.weight.detach().T
    with_queue = sinkhorn(torch.cat([past, scores]), 0.05, 3)[-4:]
    torch.testing.assert_close(m.codes(0, scores), with_queue)
    assert not torch.allclose(with_queue, sinkhorn(scores, 0.05, 3))


def test_dino_teacher_starts_as_a_frozen_copy_of_the_student() -> None:
    m = dino()
    s, t = m.student.state_dict(), m.teacher.state_dict()
    assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
    assert not any(p.requires_grad for p in m.teacher.parameters())
    assert not m.student.head.last_layer.g.requires_grad and m.student.head.last_layer.v.requires_grad


def dino_step(m: DINO, clock: StepClock, vs: list[torch.Tensor]) -> object:
    m.on_step_start(clock)
    step = m.objective(m(vs), torch.arange(4))
    m.zero_grad()
    step.loss.backward()
    return step


def test_dino_last_layer_is_frozen_in_the_first_epoch() -> None:
    m, vs = dino(), views(TWO)
    dino_step(m, StepClock(step=2, epoch=0, steps_per_epoch=3), vs)
    assert m.student.head.last_layer.v.grad is None and m.student.head.mlp[0].weight.grad is not None
    dino_step(m, StepClock(step=3, epoch=1, steps_per_epoch=3), vs)
    assert torch.count_nonzero(m.student.head.last_layer.v.grad) > 0


def test_dino_after_step_moves_the_teacher_by_the_clock_momentum_and_the_centre() -> None:
    m, vs = dino(epochs=4), views(TWO)
    clock = StepClock(step=5, epoch=1, steps_per_epoch=3)
    step = dino_step(m, clock, vs)
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(0.1)  # as an optimizer step would
    before = [p.clone() for p in m.teacher.parameters()]
    students = [p.clone() for p in m.student.parameters()]
    mom = cosine_to_one(5, 4 * 3, 0.996)
    assert m.teacher_momentum() == mom and 0.996 < mom < 1
    m.after_step(step)
    for t0, s, t in zip(before, students, m.teacher.parameters(), strict=True):
        torch.testing.assert_close(t, mom * t0 + (1 - mom) * s)
    torch.testing.assert_close(m.centre, 0.1 * step.pending.mean(dim=0, keepdim=True))  # from 0, momentum 0.9


def test_dino_multi_crop_loss_pairs_every_student_crop_with_each_other_global_crop() -> None:
    m, vs = dino(MULTI, warmup_teacher_temp_epochs=3), views(MULTI)
    m.on_step_start(StepClock(step=4, epoch=1, steps_per_epoch=3))
    out = m(vs)
    assert out.student.shape == (20, 12) and out.teacher.shape == (8, 12)  # the teacher sees the 2 global crops
    step = m.objective(out, torch.arange(4))
    temp = teacher_temperature(1, 0.04, 0.07, 3)
    assert temp == pytest.approx(0.055)
    want = dino_loss(out.student.split(4), out.teacher.split(4), m.centre, 0.1, temp)
    assert step.terms["loss_dino"].item() == pytest.approx(want.loss.item(), rel=1e-6)
    assert set(step.terms) == {"loss_dino", "teacher_entropy", "kl_centre"} and set(step.hits) == {"acc_dino"}
    p = [torch.softmax(t / temp, dim=-1) for t in out.teacher.detach().split(4)]
    logp = [F.log_softmax(s / 0.1, dim=-1) for s in out.student.detach().split(4)]
    pairs = [-(p[i] * logp[v]).sum(-1).mean() for i in (0, 1) for v in range(5) if v != i]
    assert len(pairs) == 8 and step.loss.item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-5)


def test_methods_find_their_views_in_the_config() -> None:
    cfg = Config(method="swav", model=MODEL)
    cfg.swav.prototypes, cfg.dino.out_dim = 7, 9
    s, d = SwAV.from_config(cfg), DINO.from_config(cfg)
    assert s.assign == (0, 1) and s.prototypes.weight.shape == (7, 8)
    assert d.num_global == 2 and d.centre.shape == (1, 9) and d.epochs == cfg.train.epochs
    names = set(d.state_dict())
    assert {"student.backbone.conv1.weight", "teacher.backbone.conv1.weight", "centre"} <= names
    assert "encoder.backbone.conv1.weight" in s.state_dict()


def test_one_crop_per_image_is_refused_with_one_line() -> None:
    from pcl.methods.swav import check_crops
    from pcl.utils.errors import PCLError

    one = ViewSpec((CropGroup(1, 16, (0.2, 1.0)),))
    for method in ("swav", "dino"):
        with pytest.raises(PCLError, match=f"--method {method} needs at least two crops per image"):
            check_crops(method, one)
    check_crops("dino", TWO)  # two crops: accepted


def test_the_backbone_prefixes_follow_the_stored_method() -> None:
    from pcl.config import to_dict
    from pcl.eval.pretrained import backbone_prefixes, backbone_state_dict

    for method, query, key in [("dino", "student.", "teacher."), ("swav", "encoder.", "encoder."),
                               ("moco", "encoder_q.", "encoder_k.")]:  # fmt: skip
        model = {f"{query}backbone.conv1.weight": torch.ones(1), f"{key}backbone.conv1.weight": torch.zeros(1),
                 f"{query}head.0.weight": torch.ones(2)}  # fmt: skip
        ckpt = {"config": to_dict(Config(method=method)), "model": model}
        assert backbone_prefixes(ckpt) == {"query": f"{query}backbone.", "key": f"{key}backbone."}
        assert list(backbone_state_dict(ckpt, "query")) == ["conv1.weight"]
        assert backbone_state_dict(ckpt, "key")["conv1.weight"] is not model[f"{key}backbone.conv1.weight"]  # a copy
        assert torch.equal(backbone_state_dict(ckpt, "key")["conv1.weight"], model[f"{key}backbone.conv1.weight"])
        assert torch.equal(backbone_state_dict(ckpt, "query")["conv1.weight"], model[f"{query}backbone.conv1.weight"])
