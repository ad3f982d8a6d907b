"""Step and epoch meters of the M-step: one step's reduced values, sample-weighted epoch averages."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class StepResult:
    """One step's values, averaged (losses, grad norm) or summed (hits, batch) over ranks."""

    inst: float
    protos: list[float]
    grad_norm: float
    hits_inst: float
    hits_proto: list[float]
    batch: float
    lr: float
    bad: list[str] = field(default_factory=list)  # names of the non-finite terms; empty for a good step
    proto_weight: float = 1.0  # --proto-weight
    health: list[float] = field(default_factory=list)  # [embedding std, effective rank] when measured (health.py)

    @property
    def proto(self) -> float:
        """ProtoNCE averaged over the granularities (0 without prototypes)."""
        return sum(self.protos) / len(self.protos) if self.protos else 0.0

    @property
    def loss(self) -> float:
        """Total loss: InfoNCE + proto_weight x mean ProtoNCE."""
        return self.inst + self.proto_weight * self.proto

    @staticmethod
    def pack(
        inst: torch.Tensor,
        protos: list[tuple[torch.Tensor, torch.Tensor]],
        grad_norm: torch.Tensor,
        hits_inst: torch.Tensor,
        batch: int,
        health: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step's logged values as one ``(4 + 2M [+ H],)`` tensor (M granularities, ``protos`` = (loss, hits),
        ``health`` ``(H,)`` when measured), so that one all-reduce and one host sync carry them all."""
        return torch.cat(
            [
                torch.stack(
                    [
                        inst.detach(),
                        *[p[0].detach() for p in protos],
                        grad_norm.float(),
                        hits_inst.float(),
                        *[p[1].float() for p in protos],
                        torch.tensor(float(batch), device=inst.device),
                    ]
                ),
                *([] if health is None else [health.float()]),
            ]
        )

    @classmethod
    def unpack(cls, v: list[float], levels: int, world: int, lr: float, proto_weight: float) -> StepResult:
        """Inverse of :meth:`pack` (``levels`` granularities) after summing over ``world`` ranks: losses, grad
        norm and health signals averaged, hits and batch summed."""
        n = levels
        return cls(
            inst=v[0] / world,
            protos=[x / world for x in v[1 : 1 + n]],
            grad_norm=v[1 + n] / world,
            hits_inst=v[2 + n],
            hits_proto=v[3 + n : 3 + 2 * n],
            batch=v[3 + 2 * n],
            lr=lr,
            proto_weight=proto_weight,
            health=[x / world for x in v[4 + 2 * n :]],
        )

    def scalars(self) -> dict[str, float]:
        """TensorBoard ``train/*`` scalars of an applied step: losses, accuracies (%), grad norm."""
        out = {
            "train/loss": self.loss,
            "train/loss_inst": self.inst,
            "train/acc_inst": 100.0 * self.hits_inst / self.batch,
            "train/grad_norm": self.grad_norm,
        }
        if self.protos:
            out["train/loss_proto"] = self.proto
            out["train/acc_proto"] = 100.0 * sum(self.hits_proto) / (self.batch * len(self.protos))
        return out


@dataclass
class EpochStats:
    """One epoch's averages over its applied steps (NaN proto fields for an InfoNCE-only epoch)."""

    loss: float = 0.0
    loss_proto: float = math.nan
    acc_inst: float = 0.0
    acc_proto: float = math.nan
    good_steps: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def scalars(self, proto: bool) -> dict[str, float]:
        """TensorBoard ``epoch/*`` scalars and ``time/epoch_seconds``; ``proto``: the epoch had ProtoNCE."""
        out = {
            "epoch/acc_inst": self.acc_inst,
            "epoch/loss": self.loss,
            "epoch/skipped_steps": float(self.skipped),
            "time/epoch_seconds": self.seconds,
        }
        if proto:
            out.update({"epoch/acc_proto": self.acc_proto, "epoch/loss_proto": self.loss_proto})
        return out

    def line(self, epoch: int, proto: bool, knn: float | None) -> str:
        """The one-line epoch summary printed after each epoch."""
        msg = f"epoch {epoch}: loss {self.loss:.4f} acc_inst {self.acc_inst:.1f}"
        if proto:
            msg += f" acc_proto {self.acc_proto:.1f}"
        if knn is not None:
            msg += f" knn_top1 {knn:.2f}"
        return msg + f" skipped {self.skipped} ({self.seconds:.0f}s)"


@dataclass
class EpochMeter:
    """Sample-weighted epoch averages over the applied (finite) steps only."""

    seen: float = 0.0
    loss_sum: float = 0.0
    proto_sum: float = 0.0
    hits_inst: float = 0.0
    hits_proto: float = 0.0
    good: int = 0
    skipped: int = 0

    def add(self, step: StepResult) -> None:
        """Count a skipped step, or add an applied one's values weighted by its batch size."""
        if step.bad:
            self.skipped += 1
            return
        self.good += 1
        self.seen += step.batch
        self.loss_sum += step.loss * step.batch
        self.proto_sum += step.proto * step.batch
        self.hits_inst += step.hits_inst
        self.hits_proto += sum(step.hits_proto) / max(1, len(step.hits_proto))

    @property
    def loss(self) -> float:
        """Sample-weighted mean total loss over the applied steps."""
        return self.loss_sum / max(self.seen, 1.0)

    @property
    def acc_inst(self) -> float:
        """Instance accuracy (%) over the applied steps' samples."""
        return 100.0 * self.hits_inst / max(self.seen, 1.0)

    def stats(self, seconds: float, proto: bool) -> EpochStats:
        """The epoch's averages; ``proto``: the epoch had ProtoNCE terms."""
        out = EpochStats(good_steps=self.good, skipped=self.skipped, seconds=seconds)
        if self.seen:
            out.loss, out.acc_inst = self.loss, self.acc_inst
            if proto:
                out.loss_proto = self.proto_sum / self.seen
                out.acc_proto = 100.0 * self.hits_proto / self.seen
        return out
