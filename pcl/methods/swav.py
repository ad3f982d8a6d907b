"""SwAV (``--method swav``; Caron et al., 2020): online prototypes, codes by Sinkhorn-Knopp, swapped prediction.

One encoder (backbone + projection head, L2-normalised embeddings ``z``) and a linear layer of ``K`` prototypes
(``--swav-prototypes``, rows L2-normalised after every applied step). Per batch: the scores ``z . c`` of every crop;
the codes of each global crop by Sinkhorn-Knopp (``--swav-epsilon``, ``--swav-sinkhorn-iters``; the sums over
samples all-reduced under torchrun), optionally on the batch together with a queue of past embeddings
(``--swav-queue-length``, filled from ``--swav-queue-start-epoch``, used once full); the loss predicts each global
crop's code from every other crop at temperature ``--swav-temperature`` (:mod:`pcl.losses.swav`). The prototypes
get no gradient during the first ``--swav-freeze-prototypes-iters`` steps (default: the first epoch). Reference:
facebookresearch/swav ``main_swav.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pcl.data.views import ViewSpec
from pcl.losses.swav import sinkhorn, swapped_hits, swapped_prediction
from pcl.methods.base import Method, MethodSettings, StepOutput, register_method
from pcl.model.backbone import build_backbone
from pcl.model.encoder import ModelConfig
from pcl.model.heads import swav_projection_head
from pcl.model.multicrop import MultiCropNet
from pcl.utils import distributed as pdist
from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, flag


@dataclass
class SwAVConfig:
    """SwAV's settings (``--swav-*``); the defaults are the reference's ImageNet ones where they fit a CPU run."""

    GROUP: ClassVar[str] = "SwAV"

    prototypes: int = flag(3000, "--swav-prototypes", ge=2, help="number of prototypes K (reference: 3000)")
    epsilon: float = flag(0.05, "--swav-epsilon", gt=0, help="Sinkhorn-Knopp entropy regularisation")
    sinkhorn_iters: int = flag(3, "--swav-sinkhorn-iters", gt=0, help="Sinkhorn-Knopp iterations")
    temperature: float = flag(0.1, "--swav-temperature", gt=0, help="softmax temperature of the swapped prediction")
    freeze_prototypes_iters: int | None = flag(
        None,
        "--swav-freeze-prototypes-iters",
        type=int,
        ge=0,
        help="steps from the start in which the prototypes get no gradient (default: the first epoch)",
    )
    queue_length: int = flag(
        0, "--swav-queue-length", ge=0, help="past embeddings added to Sinkhorn's batch (0: none; reference 3840)"
    )
    queue_start_epoch: int = flag(15, "--swav-queue-start-epoch", ge=0, help="epoch the queue starts filling")

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range (K < 2, epsilon <= 0, ...)."""
        check_fields(self)


@dataclass
class SwAVOutput:
    """One forward pass: ``z (V*B, d)`` L2-normalised embeddings of the ``V`` crops in view order, ``scores
    (V*B, K)`` = ``z . c`` against the L2-normalised prototypes, ``batch`` = ``B``."""

    z: torch.Tensor
    scores: torch.Tensor
    batch: int


def check_crops(method: str, spec: ViewSpec) -> None:
    """Raise a one-line ``PCLError`` when ``spec`` has fewer than two crops per image (no crop to predict from)."""
    if spec.num_views < 2:
        raise PCLError(
            f"--method {method} needs at least two crops per image (a crop is never its own target); "
            f"the view spec gives {spec.num_views}"
        )


@register_method
class SwAV(Method):
    """Encoder + prototypes; the global crops of the view spec are the assignment crops, every crop predicts."""

    name = "swav"
    backbone_prefixes: ClassVar[dict[str, str]] = {"query": "encoder.backbone.", "key": "encoder.backbone."}  # one

    def __init__(self, *, model: ModelConfig, swav: SwAVConfig, spec: ViewSpec) -> None:
        super().__init__()
        self.cfg = swav
        backbone, dim = build_backbone(model.backbone(1))  # first: the untrained reference's weights at the seed
        self.encoder = MultiCropNet(backbone, dim, swav_projection_head(dim, model.low_dim))
        self.prototypes = nn.Linear(model.low_dim, swav.prototypes, bias=False)
        self.normalize_prototypes()
        self.assign = spec.global_indices
        self.embedding_dim = model.low_dim
        self.find_unused_parameters = swav.freeze_prototypes_iters != 0  # frozen prototypes get no gradient
        if swav.queue_length:  # identical on every rank: each rank adds its share of it to the Sinkhorn batch
            self.register_buffer("queue", torch.zeros(len(self.assign), swav.queue_length, model.low_dim))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
            self.register_buffer("queue_filled", torch.zeros(1, dtype=torch.long))

    @classmethod
    def from_config(cls, cfg: MethodSettings, bn_splits: int | None = None) -> SwAV:
        """Plain BatchNorm whatever ``--bn-splits`` (MoCo's shuffle-BN emulation does not apply)."""
        return cls(model=cfg.model, swav=cfg.swav, spec=cfg.data.aug.view_spec())

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        check_crops(cls.name, cfg.data.aug.view_spec())
        length, batch = cfg.swav.queue_length, cfg.train.batch_size
        if 0 < length < batch:
            raise PCLError(
                f"--swav-queue-length {length} is shorter than one batch (--batch-size {batch}): "
                "a batch of embeddings would overwrite itself; raise it or use 0 (no queue)"
            )

    @classmethod
    def validate_data(cls, cfg: MethodSettings, num_train: int) -> None:
        if cfg.swav.queue_length > num_train:
            raise PCLError(
                f"--swav-queue-length {cfg.swav.queue_length} is larger than the {num_train} training images: "
                "the queue would hold the same images several times; use a fraction of the data set"
            )

    # -------------------------------------------------------------- schedules (from the engine's step clock)
    def prototypes_frozen(self) -> bool:
        """True while the prototypes get no gradient: the first ``--swav-freeze-prototypes-iters`` global steps."""
        n = self.cfg.freeze_prototypes_iters
        return self.clock.step < (self.clock.steps_per_epoch if n is None else n)

    def queue_in_use(self) -> bool:
        """True once the queue is full (it fills from ``--swav-queue-start-epoch``), as the reference."""
        return self.cfg.queue_length > 0 and int(self.queue_filled) >= self.cfg.queue_length

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Rows of the prototype layer to unit length (at the start and after every applied step)."""
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    # -------------------------------------------------------------- the step
    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> SwAVOutput:
        """``views``: ``V`` crops ``(B, 3, H_v, W_v)`` (global first; one backbone pass per size); embeddings and
        prototype scores only."""
        z = F.normalize(self.encoder(views), dim=1)
        w = self.prototypes.weight.detach() if self.prototypes_frozen() else self.prototypes.weight
        return SwAVOutput(z=z, scores=z @ w.T, batch=views[0].shape[0])

    @torch.no_grad()
    def codes(self, j: int, scores: torch.Tensor) -> torch.Tensor:
        """Sinkhorn codes ``(B, K)`` of assignment crop ``j``'s scores ``(B, K)``, with this rank's share of the
        queue (rows ``rank::world``: the union over ranks is the whole queue) in the problem when it is in use."""
        b = scores.shape[0]
        if self.queue_in_use():
            world = torch.distributed.get_world_size() if pdist.is_distributed() else 1
            past = self.queue[j, pdist.rank() :: world] @ self.prototypes.weight.detach().float().T
            scores = torch.cat([past, scores])
        return sinkhorn(scores, self.cfg.epsilon, self.cfg.sinkhorn_iters)[-b:]

    def objective(self, out: SwAVOutput, index: torch.Tensor) -> StepOutput:
        """The swapped-prediction loss (float32 under autocast); ``acc_swav``: the other crop's top prototype is
        the code's."""
        b = out.batch
        scores = out.scores.float().split(b)
        codes = [self.codes(j, scores[i].detach()) for j, i in enumerate(self.assign)]
        loss = swapped_prediction(scores, codes, self.assign, self.cfg.temperature)
        z = out.z.detach().float()
        return StepOutput(
            loss=loss,
            terms={"loss_swav": loss},
            hits={"acc_swav": swapped_hits(scores, codes, self.assign)},
            batch=b,
            checked={"loss_swav": "swapped prediction"},
            embedding=out.z[:b],
            pending=[z[i * b : (i + 1) * b] for i in self.assign],
        )

    @torch.no_grad()
    def after_step(self, step: StepOutput) -> None:
        """Prototypes back to unit length; from ``--swav-queue-start-epoch`` the global crops' embeddings (every
        rank's) into the queue."""
        self.normalize_prototypes()
        if self.cfg.queue_length and self.clock.epoch >= self.cfg.queue_start_epoch:
            self.enqueue(step.pending)

    @torch.no_grad()
    def enqueue(self, embeddings: list[torch.Tensor]) -> None:
        """Write each assignment crop's ``(B, d)`` embeddings (gathered from all ranks) at the pointer, wrapping."""
        n = 0
        for j, z in enumerate(embeddings):
            z = pdist.concat_all_gather(z)
            n = z.shape[0]
            idx = (int(self.queue_ptr) + torch.arange(n, device=z.device)) % self.cfg.queue_length
            self.queue[j, idx] = z
        self.queue_ptr[0] = (int(self.queue_ptr) + n) % self.cfg.queue_length
        self.queue_filled[0] = min(self.cfg.queue_length, int(self.queue_filled) + n)

    def chance_loss(self) -> tuple[str, float]:
        """The swapped prediction of a model whose predictions are uniform over the ``K`` prototypes: ``log K``."""
        return "loss_swav", math.log(self.cfg.prototypes)

    def summary_terms(self) -> tuple[str, ...]:
        return ("acc_swav",)

    # -------------------------------------------------------------- features
    @torch.no_grad()
    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features for the kNN monitor, L2-normalised ``(B, D)`` (no momentum side: also the key's)."""
        return F.normalize(self.encoder.backbone(images), dim=1)
