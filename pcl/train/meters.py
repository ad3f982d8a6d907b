"""Step and epoch meters of the M-step, by name: whatever terms and counts a method's step reports.

A step's values travel as one tensor through one all-reduce and one host sync (:func:`pack_step` /
:func:`unpack_step`, keyed by the names of the method's :class:`~pcl.methods.base.StepOutput`); the epoch meter
keeps sample-weighted sums per name. Logged names: ``train/loss`` (the total), ``train/<term>`` for every loss
term, ``train/<hits>`` = 100 x hits / batch for every count, ``train/grad_norm``; per epoch the same under
``epoch/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pcl.methods.base import StepOutput


@dataclass
class StepStats:
    """One step's values after the reduction over ranks: the total and terms (averaged), hits and batch (summed),
    the gradient norm (averaged), the health signals (averaged, when measured)."""

    loss: float
    terms: dict[str, float]
    hits: dict[str, float]
    batch: float
    grad_norm: float
    lr: float
    checked: dict[str, str] = field(default_factory=dict)  # term -> words, for the guard
    health: list[float] = field(default_factory=list)  # [embedding std, effective rank] when measured (health.py)
    bad: list[str] = field(default_factory=list)  # names of the non-finite terms; empty for a good step
    stop: str = ""  # a skipped step past --max-bad-steps: the message the run stops with

    def scalars(self) -> dict[str, float]:
        """TensorBoard ``train/*`` scalars of an applied step: total and terms, accuracies (%), grad norm."""
        out = {"train/loss": self.loss, **{f"train/{k}": v for k, v in self.terms.items()}}
        out.update({f"train/{k}": 100.0 * v / self.batch for k, v in self.hits.items()})
        out["train/grad_norm"] = self.grad_norm
        return out


def pack_step(step: StepOutput, grad_norm: torch.Tensor, health: torch.Tensor | None) -> torch.Tensor:
    """``[loss, *terms, grad_norm, *hits, batch, *health]`` as one float tensor on the step's device."""
    values = [step.loss.detach(), *[t.detach() for t in step.terms.values()], grad_norm.float()]
    values += [h.float() for h in step.hits.values()]
    values.append(torch.tensor(float(step.batch), device=step.loss.device))
    packed = torch.stack([v.float().reshape(()) for v in values])
    return packed if health is None else torch.cat([packed, health.float()])


def unpack_step(v: list[float], step: StepOutput, world: int, lr: float) -> StepStats:
    """Inverse of :func:`pack_step` after summing over ``world`` ranks: losses, grad norm and health averaged,
    hits and batch summed."""
    n_terms, n_hits = len(step.terms), len(step.hits)
    terms = dict(zip(step.terms, [x / world for x in v[1 : 1 + n_terms]], strict=True))
    at = 1 + n_terms
    grad_norm = v[at] / world
    hits = dict(zip(step.hits, v[at + 1 : at + 1 + n_hits], strict=True))
    at += 1 + n_hits
    return StepStats(
        loss=v[0] / world,
        terms=terms,
        hits=hits,
        batch=v[at],
        grad_norm=grad_norm,
        lr=lr,
        checked=dict(step.checked),
        health=[x / world for x in v[at + 1 :]],
    )


@dataclass
class EpochStats:
    """One epoch's sample-weighted averages over its applied steps, by name (``loss`` is the total)."""

    values: dict[str, float] = field(default_factory=dict)  # loss and terms: means; hits: percent
    skipped: int = 0
    seconds: float = 0.0

    def scalars(self) -> dict[str, float]:
        """TensorBoard ``epoch/*`` scalars (every term and accuracy), skipped steps and ``time/epoch_seconds``."""
        out = {f"epoch/{k}": v for k, v in self.values.items()}
        out["epoch/skipped_steps"] = float(self.skipped)
        out["time/epoch_seconds"] = self.seconds
        return out

    def line(self, epoch: int, names: tuple[str, ...], knn: float | None) -> str:
        """The one-line epoch summary printed after each epoch: loss, the accuracies ``names`` it has, kNN."""
        msg = f"epoch {epoch}: loss {self.values.get('loss', math.nan):.4f}"
        msg += "".join(f" {n} {self.values[n]:.1f}" for n in names if n in self.values)
        if knn is not None:
            msg += f" knn_top1 {knn:.2f}"
        return msg + f" skipped {self.skipped} ({self.seconds:.0f}s)"


@dataclass
class EpochMeter:
    """Sample-weighted sums over the applied (finite) steps only, by name; its fields are checkpointed
    (``vars(meter)``) for a mid-epoch resume."""

    seen: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)  # loss and terms: sum of value x batch
    hits: dict[str, float] = field(default_factory=dict)  # sum of hits
    good: int = 0
    skipped: int = 0

    @classmethod
    def restore(cls, state: dict | None) -> EpochMeter:
        """A meter from its checkpointed fields; also the fixed fields of older checkpoints (``loss_sum``,
        ``proto_sum``, ``hits_inst``, ``hits_proto``, InfoNCE and ProtoNCE with weight ``proto_weight`` = 1)."""
        if not state:
            return cls()
        if "sums" in state:
            return cls(**state)
        sums = {"loss": state["loss_sum"], "loss_inst": state["loss_sum"] - state["proto_sum"]}
        hits = {"acc_inst": state["hits_inst"]}
        if state["proto_sum"] or state["hits_proto"]:
            sums["loss_proto"], hits["acc_proto"] = state["proto_sum"], state["hits_proto"]
        return cls(state["seen"], sums, hits, state["good"], state["skipped"])

    def add(self, step: StepStats) -> None:
        """Count a skipped step, or add an applied one's values weighted by its batch size."""
        if step.bad:
            self.skipped += 1
            return
        self.good += 1
        self.seen += step.batch
        for name, value in {"loss": step.loss, **step.terms}.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * step.batch
        for name, value in step.hits.items():
            self.hits[name] = self.hits.get(name, 0.0) + value

    def mean(self, name: str) -> float:
        """Sample-weighted mean of ``name`` (a term, or ``loss``; an accuracy in percent)."""
        if name in self.hits:
            return 100.0 * self.hits[name] / max(self.seen, 1.0)
        return self.sums.get(name, 0.0) / max(self.seen, 1.0)

    def stats(self, seconds: float) -> EpochStats:
        """The epoch's averages (every name seen in an applied step)."""
        values = {n: self.mean(n) for n in (*self.sums, *self.hits)} if self.seen else {}
        return EpochStats(values, self.skipped, seconds)
