"""Optimizers lower a tiny loss; learning rates at known steps, including after a resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pcl.train.optim import OPTIMIZERS, LRSchedule, build_optimizer, build_scheduler, param_groups

LRS = {"sgd": 0.1, "sgd-cos": 0.1, "adamw": 0.01, "lamb": 0.05, "lars": 0.1}


def tiny_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(64, 4)
    return model, x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_lowers_a_tiny_loss(name: str) -> None:
    model, x, y = tiny_problem()
    opt = build_optimizer(name, param_groups(model, 1e-4, exclude_bn_bias=True), LRS[name])
    first = None
    for _ in range(60):
        loss = nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_lamb_and_lars_come_from_timm() -> None:
    model, _, _ = tiny_problem()
    assert type(build_optimizer("lamb", param_groups(model, 0, False), 0.1)).__module__.startswith("timm.")
    assert type(build_optimizer("lars", param_groups(model, 0, False), 0.1)).__module__.startswith("timm.")


def test_exclude_bn_bias_from_weight_decay() -> None:
    model, _, _ = tiny_problem()
    decay, no_decay = param_groups(model, 0.05, exclude_bn_bias=True)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_cosine_with_linear_warmup_at_known_steps() -> None:
    s = LRSchedule(base_lr=1.0, total_steps=110, warmup_steps=10, kind="cos", min_lr=0.1)
    assert s(0) == pytest.approx(0.1) and s(4) == pytest.approx(0.5) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)


def test_step_schedule_and_constant() -> None:
    s = LRSchedule(base_lr=0.3, total_steps=100, kind="step", milestones=[50, 80])
    assert [s(0), s(49), s(50), s(79), s(80), s(99)] == pytest.approx([0.3, 0.3, 0.03, 0.03, 0.003, 0.003])
    assert LRSchedule(base_lr=0.3, total_steps=100, kind="const")(77) == 0.3


def test_scheduler_follows_schedule_and_resumes() -> None:
    model, _, _ = tiny_problem()
    sched_def = LRSchedule(base_lr=0.5, total_steps=40, warmup_steps=5, kind="cos")
    opt = build_optimizer("sgd-cos", param_groups(model, 0.0, True), 0.5)
    sched = build_scheduler(opt, sched_def)
    seen = []
    for _ in range(17):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([sched_def(i) for i in range(17)])
    assert all(g["lr"] == pytest.approx(sched_def(17)) for g in opt.param_groups)

    opt2 = build_optimizer("sgd-cos", param_groups(model, 0.0, True), 0.5)
    sched2 = build_scheduler(opt2, sched_def)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(sched_def(17))
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(sched_def(18))
    assert not math.isnan(opt2.param_groups[1]["lr"])


def test_per_optimizer_defaults_fill_only_unset_flags() -> None:
    from pcl.config import parse_config

    a = parse_config([]).optim
    assert (a.optimizer, a.lr, a.wd, a.exclude_bn_bias, a.lr_warmup_epochs, a.lr_schedule) == (
        "adamw",
        1e-3,
        0.05,
        True,
        1.0,
        "cos",
    )
    s = parse_config(["--optimizer", "sgd"]).optim
    assert (s.lr, s.wd, s.exclude_bn_bias, s.lr_warmup_epochs, s.lr_schedule) == (0.06, 5e-4, False, 0.0, "step")
    o = parse_config(["--optimizer", "lamb", "--lr", "0.5", "--no-exclude-bn-bias", "--lr-warmup-epochs", "0"]).optim
    assert (o.lr, o.wd, o.exclude_bn_bias, o.lr_warmup_epochs) == (0.5, 0.05, False, 0.0)


def test_vit_groups_keep_position_embedding_class_token_norms_and_biases_free_of_decay() -> None:
    from pcl.model.backbone import BackboneSpec, build_backbone

    vit, _ = build_backbone(BackboneSpec("test_vit", "imagenet", 16, 1, patch_size=4))
    decay, no_decay = param_groups(vit, 0.1, exclude_bn_bias=True)
    names = {id(p): n for n, p in vit.named_parameters()}
    free = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= free
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])  # linear / conv weights
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(vit.parameters()))
    # a CNN's groups are unchanged by the no_weight_decay() lookup: every tensor of more than one dimension decays
    cnn, _ = build_backbone(BackboneSpec("resnet18", "imagenet", 32, 1))
    decay, _ = param_groups(cnn, 0.1, exclude_bn_bias=True)
    assert len(decay["params"]) == sum(p.ndim > 1 for p in cnn.parameters())


def test_vit_defaults_follow_moco_v3_and_cnn_defaults_stay() -> None:
    from pcl.config import parse_config

    v = parse_config(["--arch", "test_vit", "--batch-size", "512", "--epochs", "300"]).optim
    assert (v.optimizer, v.wd, v.exclude_bn_bias, v.lr_schedule) == ("adamw", 0.1, True, "cos")
    assert v.lr == pytest.approx(1.5e-4 * 512 / 256) and v.lr_warmup_epochs == pytest.approx(40.0)
    s = parse_config(["--arch", "test_vit", "--optimizer", "sgd", "--epochs", "30"]).optim
    assert (s.lr, s.wd, s.lr_warmup_epochs) == (0.06, 5e-4, pytest.approx(4.0))  # SGD's own, + the warmup share
    r = parse_config(["--arch", "test_vit", "--lr", "0.01", "--lr-warmup-epochs", "0"]).optim
    assert (r.lr, r.lr_warmup_epochs) == (0.01, 0.0)  # given flags win
    assert parse_config(["--epochs", "300"]).optim.lr_warmup_epochs == 1.0  # resnet18: the adamw defaults as ever
