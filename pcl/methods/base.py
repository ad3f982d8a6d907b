"""The method interface: what a self-supervised method gives the generic engine (:mod:`pcl.train.engine`).

A method is one ``nn.Module`` that owns its whole state (encoders, heads, queue, prototypes) and, per batch:

    out  = method(views, index)              # forward: embeddings only (the engine runs it under autocast, DDP)
    step = method.objective(out, index)      # loss + named terms and counts  -> logged, checked by the guard
    method.after_step(step)                  # momentum update, enqueue ...    -> only when the guard accepts it

and per epoch ``method.on_epoch_start(epoch, ctx)`` (PCL: the E-step; MoCo v2: nothing). Before each step's forward
the engine tells the method where training is (``method.on_step_start(StepClock)``: global step, epoch, steps per
epoch), so per-step and per-epoch schedules (DINO's teacher momentum and temperature, SwAV's frozen prototypes) are
functions of counters the checkpoint holds, and resume bit-identically. The engine logs
every named term of :class:`StepOutput` (``train/<name>`` per step, ``epoch/<name>`` per epoch, ``metrics.json``)
and names the non-finite ones in the guard's message; it knows no method by name.

How to add a method: one file ``pcl/methods/<name>.py`` with a :class:`Method` subclass decorated with
:func:`register_method`, and its import in ``pcl/methods/__init__.py``; ``--method <name>`` then selects it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pcl.estep.estep import EStepConfig
from pcl.losses.config import LossConfig
from pcl.model.bank import FeatureBank
from pcl.model.encoder import ModelConfig
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError
from pcl.utils.plugins import import_plugins
from pcl.utils.timing import NULL_TIMER, PhaseTimer


class MethodSettings(Protocol):
    """The configuration sections a method is built from (``pcl.config.Config`` has them all)."""

    model: ModelConfig
    loss: LossConfig
    estep: EStepConfig
    train: Any  # pcl.train.config.TrainConfig (epochs, batch size)
    data: Any  # pcl.data.datasets.DataConfig (the views of a batch: data.aug.view_spec())


@dataclass
class StepOutput:
    """One batch's result of :meth:`Method.objective`.

    ``loss``: the scalar to backpropagate (logged as ``train/loss``). ``terms``: named scalar losses, logged as
    ``train/<name>`` and sample-weighted into ``epoch/<name>``; those named in ``checked`` (name -> words, e.g.
    ``"loss_inst": "InfoNCE"``) are the ones the non-finite guard tests and names. ``hits``: named counts of correct
    predictions over the batch, logged as ``train/<name>`` = 100 x hits / batch (``epoch/<name>`` likewise).
    ``embedding``: ``(B, d)`` L2-normalised embeddings the health signals are measured on. ``pending``: what
    :meth:`Method.after_step` needs (e.g. the keys to enqueue).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    hits: dict[str, torch.Tensor]
    batch: int
    checked: dict[str, str] = field(default_factory=dict)
    embedding: torch.Tensor | None = None
    pending: Any = None


@dataclass(frozen=True)
class StepClock:
    """Where training is at a step: ``step`` (global, 0-based: the engine's checkpointed counter, skipped steps
    included), its ``epoch`` and the ``steps_per_epoch`` of the training loader."""

    step: int = 0
    epoch: int = 0
    steps_per_epoch: int = 1


@dataclass
class EpochContext:
    """What :meth:`Method.on_epoch_start` may use: the eval view of the training images (``loader``, this rank's
    share of ``num_train``), devices, autocast and the phase timer; ``labels (N,)`` of the training images for
    cluster metrics (rank 0, labelled data, else None); ``bank``: a kNN bank to fill from the same pass (or None);
    ``log_image(tag, image (H, W, 3) uint8)`` / ``gallery``: images for TensorBoard (rank 0, when asked);
    ``save(state)``: keep the epoch's result in the run folder (rank 0; PCL with ``--save-clusters``)."""

    loader: DataLoader
    num_train: int
    info: DistInfo
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    timer: PhaseTimer = NULL_TIMER
    labels: torch.Tensor | None = None
    bank: FeatureBank | None = None
    log_image: Callable[[str, np.ndarray], None] | None = None
    gallery: int = 0
    save: Callable[[dict], None] | None = None


class Method(nn.Module):
    """A self-supervised method: its modules and state, its step and its epoch hook (see the module docstring).

    ``state_dict()`` holds the modules and buffers (the checkpoint's ``model``); :meth:`extra_state` the rest
    (the checkpoint's top-level keys, e.g. PCL's ``cluster_result``).
    """

    name: ClassVar[str] = ""
    find_unused_parameters: bool = False  # DDP: some parameters get no gradient in some steps
    embedding_dim: int = 0  # d of StepOutput.embedding (health signals)
    clock: StepClock = StepClock()  # the current step (on_step_start)
    # checkpoint key prefixes of the backbones ("query": trained, "key": momentum / teacher), for pcl.eval.pretrained
    # and tools/export_backbone.py; a method without a momentum side names its one backbone twice
    backbone_prefixes: ClassVar[dict[str, str]] = {}
    # per-method defaults of flags whose default is None ("section.field": value), filled in by pcl.config.resolve
    # when the command line leaves them unset, e.g. DINO's gradient clipping {"step.clip_grad": 3.0}
    recipe: ClassVar[dict[str, Any]] = {}
    uses_warmup: ClassVar[bool] = False  # --warmup-epochs is its schedule (PCL: InfoNCE-only epochs)
    shuffle_bn: ClassVar[bool] = False  # it uses --bn-splits (MoCo's single-process shuffle BN)

    @classmethod
    def from_config(cls, cfg: MethodSettings, bn_splits: int | None = None) -> Method:
        """The method ``cfg`` describes; ``bn_splits`` overrides ``cfg.model.bn_splits`` (1 under DDP)."""
        raise NotImplementedError

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        """Raise a one-line ``PCLError`` for settings this method cannot use (called before anything is built)."""

    @classmethod
    def validate_data(cls, cfg: MethodSettings, num_train: int) -> None:
        """Raise a one-line ``PCLError`` for settings this method cannot use on ``num_train`` training images
        (called once the data is resolved, before the model is built)."""

    @classmethod
    def notes(cls, cfg: MethodSettings) -> list[str]:
        """One-line notes about how ``cfg`` will train (printed before training, e.g. PCL without an E-step)."""
        return []

    def objective(self, out: Any, index: torch.Tensor) -> StepOutput:
        """Losses of one batch from the forward pass's output ``out`` (outside autocast: float32)."""
        raise NotImplementedError

    def on_step_start(self, clock: StepClock) -> None:
        """Before the forward of the step ``clock`` describes (the engine calls it; schedules read ``self.clock``)."""
        self.clock = clock

    @torch.no_grad()
    def after_step(self, step: StepOutput) -> None:
        """Updates after an applied optimizer step (momentum encoders, queues); never after a skipped one."""

    def merge_pending(self, parts: list[Any]) -> Any:
        """``StepOutput.pending`` of one optimizer step from its micro-batches' (``--accum-steps``), in order; the
        default concatenates tensors along dim 0 (tuples, lists and dicts item by item), so that ``after_step``
        sees the whole batch's keys (:func:`concat_batches`)."""
        return concat_batches(parts)

    def epoch_pass(self, epoch: int) -> bool:
        """True when :meth:`on_epoch_start` of ``epoch`` passes over the eval view of every training image (it can
        then fill a kNN bank, :class:`EpochContext`)."""
        return False

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> dict[str, float]:
        """Work before the epoch's first step (PCL: the E-step); returns scalars logged at step ``epoch``."""
        return {}

    def chance_loss(self) -> tuple[str, float] | None:
        """``(term name, value)``: the term's value for a model that has learnt nothing (collapse detection)."""
        return None

    def summary_terms(self) -> tuple[str, ...]:
        """Per-epoch accuracies (``hits`` names) printed on the epoch line, in order."""
        return ()

    def extra_state(self) -> dict[str, Any]:
        """Checkpoint entries besides ``state_dict()`` (top-level keys)."""
        return {}

    def load_extra_state(self, ckpt: dict[str, Any], device: torch.device) -> None:
        """Restore what :meth:`extra_state` wrote, from a checkpoint dict."""

    def after_save(self) -> None:
        """After a checkpoint is written (every rank): drop what only older checkpoints needed (PCL's bank)."""

    # -------------------------------------------------------------- features for monitors and evaluation
    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The trained (query / student) backbone's features, L2-normalised ``(B, D)``."""
        raise NotImplementedError

    def key_backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The momentum (key / teacher) backbone's features ``(B, D)``; the trained one's for methods without."""
        return self.backbone_features(images)


def concat_batches(parts: list[Any]) -> Any:
    """``parts`` (one per micro-batch) joined: tensors by ``torch.cat`` along dim 0, tuples / lists / dicts /
    dataclasses item by item, ``None`` stays ``None``, other values must be equal and are kept."""
    first = parts[0]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        names = [f.name for f in dataclasses.fields(first)]
        return type(first)(**{n: concat_batches([getattr(p, n) for p in parts]) for n in names})
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, tuple | list):
        return type(first)(concat_batches(list(items)) for items in zip(*parts, strict=True))
    if isinstance(first, dict):
        return {k: concat_batches([p[k] for p in parts]) for k in first}
    if any(p != first for p in parts):
        raise ValueError(f"cannot merge the micro-batches' pending values {parts!r}: override Method.merge_pending")
    return first


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` selectable as ``--method cls.name``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The registered method ``name`` (``$PCL_PLUGINS`` modules imported first when it is not built in); a one-line
    ``PCLError`` with the known names otherwise."""
    if name not in METHODS:
        import_plugins()
    if name not in METHODS:
        raise PCLError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
