"""Optimisation stage: optimizers (torch SGD/AdamW, timm LAMB/LARS) and per-step learning-rate schedules."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, flag, int_list

OPTIMIZERS = ("sgd", "sgd-cos", "adamw", "lamb", "lars")
SCHEDULES = ("cos", "step", "const")


@dataclass(frozen=True)
class OptimizerDefaults:
    """Per-optimizer defaults for flags the user leaves unset (global batch 128, bundled data)."""

    lr: float
    wd: float
    exclude_bn_bias: bool
    lr_warmup_epochs: float


# sgd/sgd-cos: the MoCo CIFAR recipe; adamw/lamb/lars: measured in experiments/results/optimizers (docs/training.md)
OPTIMIZER_DEFAULTS = {
    "sgd": OptimizerDefaults(lr=0.06, wd=5e-4, exclude_bn_bias=False, lr_warmup_epochs=0.0),
    "sgd-cos": OptimizerDefaults(lr=0.06, wd=5e-4, exclude_bn_bias=False, lr_warmup_epochs=0.0),
    "adamw": OptimizerDefaults(lr=1e-3, wd=0.05, exclude_bn_bias=True, lr_warmup_epochs=1.0),
    "lamb": OptimizerDefaults(lr=3e-3, wd=0.05, exclude_bn_bias=True, lr_warmup_epochs=1.0),
    "lars": OptimizerDefaults(lr=0.3, wd=5e-4, exclude_bn_bias=True, lr_warmup_epochs=1.0),
}


# a ViT-like backbone (a patch embedding) with AdamW: MoCo v3's recipe (Chen, Xie, He 2021), lr per 256 images
VIT_ADAMW = OptimizerDefaults(lr=1.5e-4, wd=0.1, exclude_bn_bias=True, lr_warmup_epochs=40 / 300)
VIT_WARMUP_FRACTION = 40 / 300  # MoCo v3: 40 warmup epochs of 300, for every optimizer


def backbone_defaults(optimizer: str, vit: bool, batch_size: int, epochs: int) -> OptimizerDefaults:
    """The defaults of ``optimizer`` for a backbone kind: :data:`OPTIMIZER_DEFAULTS` for CNNs; for a ViT, AdamW gets
    MoCo v3's lr 1.5e-4 x batch / 256, wd 0.1, and every optimizer an lr warmup of 40/300 of the ``epochs``."""
    base = OPTIMIZER_DEFAULTS[optimizer]
    if not vit:
        return base
    warmup = VIT_WARMUP_FRACTION * epochs
    if optimizer == "adamw":
        return replace(VIT_ADAMW, lr=VIT_ADAMW.lr * batch_size / 256, lr_warmup_epochs=warmup)
    return replace(base, lr_warmup_epochs=max(base.lr_warmup_epochs, warmup))


def default_schedule(optimizer: str) -> str:
    """``sgd`` keeps the step schedule (``--schedule`` milestones); every other optimizer decays by cosine."""
    return "step" if optimizer == "sgd" else "cos"


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule; ``None`` fields default per optimizer (gradient clipping is the
    step's: :class:`pcl.train.config.StepConfig`)."""

    GROUP: ClassVar[str] = "optimisation"

    lr: float | None = flag(None, type=float, gt=0, help="base lr for the global batch (default: per optimizer)")
    wd: float | None = flag(None, type=float, ge=0, help="weight decay (default: per optimizer)")
    momentum: float = flag(0.9, ge=0, lt=1, help="SGD / LARS momentum")
    optimizer: str = flag("adamw", choices=OPTIMIZERS)
    lr_schedule: str | None = flag(None, choices=SCHEDULES, help="default: step for sgd, cos otherwise")
    schedule: list[int] = flag(
        default_factory=lambda: [120, 160], type=int_list, ge=0, help="step-schedule milestones (epochs)"
    )
    lr_warmup_epochs: float | None = flag(
        None, type=float, ge=0, help="linear lr warmup, epochs (default: per optimizer)"
    )
    min_lr: float = flag(0.0, ge=0, help="final lr of the cosine schedule")
    exclude_bn_bias: bool | None = flag(
        None,
        action=argparse.BooleanOptionalAction,
        help="no weight decay / LARS adaptation for BN and biases (default: per optimizer)",
    )

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range, or a cosine end above its start
        (call it on the resolved config)."""
        check_fields(self)
        if self.lr is not None and self.min_lr > self.lr:
            raise PCLError(f"--min-lr {self.min_lr} is above --lr {self.lr}: the schedule would raise the lr")

    def resolved(self, vit: bool = False, batch_size: int = 128, epochs: int = 200) -> OptimConfig:
        """This config with every ``None`` replaced by the optimizer's default for the backbone kind (``vit``: a
        ViT-like backbone; :func:`backbone_defaults`; ``OPTIMIZER_DEFAULTS`` otherwise)."""
        defaults = backbone_defaults(self.optimizer, vit, batch_size, epochs)
        filled = {n: getattr(defaults, n) for n in ("lr", "wd", "exclude_bn_bias", "lr_warmup_epochs")}
        out = replace(self, **{n: v for n, v in filled.items() if getattr(self, n) is None})
        if out.lr_schedule is None:
            out.lr_schedule = default_schedule(self.optimizer)
        return out


def no_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters a module of ``model`` asks to keep free of weight decay (timm's
    ``no_weight_decay()``: a ViT's position embedding, class / register / distillation tokens)."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        ask = getattr(module, "no_weight_decay", None)
        if callable(ask):
            out |= {f"{prefix}.{n}" if prefix else n for n in ask()}
    return out


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
    """Trainable parameters in one or two groups; with ``exclude_bn_bias`` no weight decay for 1-d tensors (batch
    and layer norms, biases) and for what a module names in ``no_weight_decay()`` (a ViT's position embedding and
    class token, :func:`no_decay_names`).

    timm's LARS adapts only groups with weight decay, so excluding them from decay excludes them from
    the LARS trust ratio too.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not exclude_bn_bias:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay, "name": "all"}]
    tokens = no_decay_names(model)
    decay = [p for n, p in params if p.ndim > 1 and n not in tokens]
    no_decay = [p for n, p in params if p.ndim <= 1 or n in tokens]
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(
    name: str, groups: Iterable[dict], lr: float, momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Optimizer:
    """``sgd``/``sgd-cos``: torch SGD with momentum; ``adamw``: torch AdamW; ``lamb``/``lars``: timm."""
    groups = list(groups)
    if name in ("sgd", "sgd-cos"):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=lr, betas=betas)
    if name == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a function of the global step: linear warmup, then cosine / step / constant."""

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cos"
    min_lr: float = 0.0
    milestones: Sequence[int] = ()  # in steps, for kind == "step"
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        """Learning rate at global step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "cos":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.kind == "step":
            return self.base_lr * self.gamma ** sum(step >= m for m in self.milestones)
        return self.base_lr


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step ``LambdaLR`` following ``schedule`` (call ``.step()`` once per iteration; resumable)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s) / schedule.base_lr)


@torch.no_grad()
def clip_per_tensor_(grads: Sequence[torch.Tensor], max_norm: float) -> None:
    """Scale each gradient tensor whose norm exceeds ``max_norm`` down to it (DINO's reference clipping: its
    ``clip_coef = max_norm / (norm + 1e-6)``, applied when below 1), in place."""
    for g in grads:
        coef = max_norm / (torch.linalg.vector_norm(g.float()) + 1e-6)
        g.mul_(torch.clamp(coef, max=1.0).to(g.dtype))
