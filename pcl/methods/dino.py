"""DINO (``--method dino``; Caron et al., 2021): a student and its momentum teacher, self-distillation across crops.

Student and teacher are the same network (backbone + :class:`~pcl.model.heads.DINOHead`: a 3-layer MLP to a
256-d bottleneck, L2-normalised, and a weight-normalised last layer of ``K`` outputs, ``--dino-out-dim``); the
teacher starts as a copy and follows the student by momentum, ``--dino-momentum`` 0.996 rising to 1 along a cosine
over the whole run. The teacher sees the global crops only; its outputs are centred (an EMA of its batch means,
``--dino-center-momentum`` 0.9) and sharpened (``--dino-teacher-temp``, warmed up from
``--dino-warmup-teacher-temp`` over ``--dino-warmup-teacher-temp-epochs``); every student crop (temperature
``--dino-student-temp``) predicts every teacher crop but its own (:mod:`pcl.losses.dino`). The last layer gets no
gradient in the first ``--dino-freeze-last-layer`` epochs. Gradient clipping: the per-method default of
``--clip-grad`` is 3.0 per parameter tensor (``--clip-mode tensor``), as the reference clips. Every schedule is a
function of the engine's step and epoch (:class:`~pcl.methods.base.StepClock`), so a resumed run is bit-identical.
Reference: facebookresearch/dino ``main_dino.py``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from pcl.data.views import ViewSpec
from pcl.losses.dino import cosine_to_one, dino_loss, teacher_temperature, updated_centre
from pcl.methods.base import Method, MethodSettings, StepOutput, register_method
from pcl.methods.swav import check_crops
from pcl.model.backbone import build_backbone
from pcl.model.encoder import ModelConfig
from pcl.model.heads import DINOHead
from pcl.model.momentum import frozen_copy, update_momentum
from pcl.model.multicrop import MultiCropNet
from pcl.utils.flags import check_fields, flag


@dataclass
class DINOConfig:
    """DINO's settings (``--dino-*``); the reference's defaults but the head's size (65536 outputs there)."""

    GROUP: ClassVar[str] = "DINO"

    out_dim: int = flag(4096, "--dino-out-dim", ge=2, help="K outputs of the head (reference: 65536)")
    hidden_dim: int = flag(2048, "--dino-hidden-dim", gt=0, help="hidden width of the head's MLP")
    bottleneck_dim: int = flag(256, "--dino-bottleneck-dim", gt=0, help="the head's bottleneck before the last layer")
    norm_last_layer: bool = flag(
        True,
        "--dino-norm-last-layer",
        action=argparse.BooleanOptionalAction,
        help="fix the norm of the last layer's weights at 1",
    )
    momentum: float = flag(0.996, "--dino-momentum", ge=0, le=1, help="teacher momentum at the start (cosine to 1)")
    warmup_teacher_temp: float = flag(0.04, "--dino-warmup-teacher-temp", gt=0, help="teacher temperature at epoch 0")
    teacher_temp: float = flag(0.07, "--dino-teacher-temp", gt=0, help="teacher temperature after the warmup")
    warmup_teacher_temp_epochs: int = flag(
        30, "--dino-warmup-teacher-temp-epochs", ge=0, help="epochs of the linear teacher-temperature warmup"
    )
    student_temp: float = flag(0.1, "--dino-student-temp", gt=0, help="student temperature")
    center_momentum: float = flag(0.9, "--dino-center-momentum", ge=0, lt=1, help="EMA of the teacher's centre")
    freeze_last_layer: int = flag(1, "--dino-freeze-last-layer", ge=0, help="epochs without updates of the last layer")

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range (K < 2, a temperature <= 0, ...)."""
        check_fields(self)


@dataclass
class DINOOutput:
    """One forward pass: ``student (V*B, K)`` outputs of every crop, ``teacher (G*B, K)`` of the global crops (no
    gradient), ``embedding (B, b)`` the student's L2-normalised bottleneck of the first crop, ``batch`` = ``B``."""

    student: torch.Tensor
    teacher: torch.Tensor
    embedding: torch.Tensor
    batch: int


@register_method
class DINO(Method):
    """Student (trained) and teacher (momentum); the global crops of the view spec are the teacher's."""

    name = "dino"
    backbone_prefixes: ClassVar[dict[str, str]] = {"query": "student.backbone.", "key": "teacher.backbone."}
    recipe: ClassVar[dict[str, object]] = {"step.clip_grad": 3.0, "step.clip_mode": "tensor"}  # as the reference

    def __init__(self, *, model: ModelConfig, dino: DINOConfig, spec: ViewSpec, epochs: int) -> None:
        super().__init__()
        self.cfg, self.epochs = dino, epochs
        backbone, dim = build_backbone(model.backbone(1))  # first: the untrained reference's weights at the seed
        head = DINOHead(dim, dino.out_dim, dino.hidden_dim, dino.bottleneck_dim, norm_last=dino.norm_last_layer)
        self.student = MultiCropNet(backbone, dim, head)
        self.teacher = frozen_copy(self.student)
        self.register_buffer("centre", torch.zeros(1, dino.out_dim))
        self.num_global = spec.num_global
        self.embedding_dim = dino.bottleneck_dim
        self.find_unused_parameters = dino.freeze_last_layer > 0  # the frozen last layer gets no gradient

    @classmethod
    def from_config(cls, cfg: MethodSettings, bn_splits: int | None = None) -> DINO:
        """Plain BatchNorm whatever ``--bn-splits`` (MoCo's shuffle-BN emulation does not apply)."""
        return cls(model=cfg.model, dino=cfg.dino, spec=cfg.data.aug.view_spec(), epochs=cfg.train.epochs)

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        check_crops(cls.name, cfg.data.aug.view_spec())

    # -------------------------------------------------------------- schedules (from the engine's step clock)
    def last_layer_frozen(self) -> bool:
        """True in the first ``--dino-freeze-last-layer`` epochs."""
        return self.clock.epoch < self.cfg.freeze_last_layer

    def teacher_temp(self) -> float:
        """The teacher temperature of the current epoch."""
        c = self.cfg
        epoch = self.clock.epoch
        return teacher_temperature(epoch, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs)

    def teacher_momentum(self) -> float:
        """The teacher momentum of the current step: cosine from ``--dino-momentum`` to 1 over the run's steps."""
        return cosine_to_one(self.clock.step, self.epochs * self.clock.steps_per_epoch, self.cfg.momentum)

    # -------------------------------------------------------------- the step
    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> DINOOutput:
        """``views``: ``V`` crops ``(B, 3, H_v, W_v)`` (global first); the student's outputs of all of them, the
        teacher's of the global ones."""
        z, student = self.student(views, frozen_last=self.last_layer_frozen())
        with torch.no_grad():
            _, teacher = self.teacher(views[: self.num_global])
        b = views[0].shape[0]
        return DINOOutput(student=student, teacher=teacher, embedding=z[:b], batch=b)

    def objective(self, out: DINOOutput, index: torch.Tensor) -> StepOutput:
        """DINO's loss (float32 under autocast) and its collapse signals: ``teacher_entropy`` (``log K``: uniform,
        0: one-hot) and ``kl_centre`` (0: the teacher's outputs no longer depend on the image)."""
        b = out.batch
        teacher = out.teacher.float()
        r = dino_loss(out.student.float().split(b), teacher.split(b), self.centre, self.cfg.student_temp,
                      self.teacher_temp())  # fmt: skip
        return StepOutput(
            loss=r.loss,
            terms={"loss_dino": r.loss, "teacher_entropy": r.teacher_entropy, "kl_centre": r.kl_centre},
            hits={"acc_dino": r.hits},
            batch=b,
            checked={"loss_dino": "DINO loss"},
            embedding=out.embedding,
            pending=teacher.detach(),
        )

    @torch.no_grad()
    def after_step(self, step: StepOutput) -> None:
        """The teacher follows the student (this step's momentum), then the centre follows the teacher's outputs."""
        update_momentum(self.student, self.teacher, self.teacher_momentum())
        self.centre.copy_(updated_centre(self.centre, step.pending, self.cfg.center_momentum))

    def chance_loss(self) -> tuple[str, float]:
        """The loss of a student whose outputs are uniform over the ``K`` dimensions: ``log K``."""
        return "loss_dino", math.log(self.cfg.out_dim)

    def summary_terms(self) -> tuple[str, ...]:
        return ("acc_dino",)

    # -------------------------------------------------------------- features
    @torch.no_grad()
    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The student backbone's features for the kNN monitor, L2-normalised ``(B, D)``."""
        return F.normalize(self.student.backbone(images), dim=1)

    @torch.no_grad()
    def key_backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher backbone's features (``--knn-encoder key``), L2-normalised ``(B, D)``."""
        return F.normalize(self.teacher.backbone(images), dim=1)
