"""Collapse detection: health signals of the embeddings, a verdict when the method's task is not being learnt,
and advice that fits the run.

The non-finite guard (:mod:`pcl.train.guard`) catches NaN/Inf; the failures met more often are finite. The method
names the term to watch and its chance level (:meth:`pcl.methods.base.Method.chance_loss`; MoCo / PCL: InfoNCE
``loss_inst`` and ``log(1 + r)``) and the embeddings to measure (``StepOutput.embedding``, ``(B, d)``
L2-normalised); nothing here knows a method by name. Two failures:

- **Not learning / partial collapse**: the watched loss sits at its chance level (the positive key is no easier
  to find than the ``r`` negatives) while the embeddings keep a spread (``std_ratio`` well above 0.05). Watched
  on the loss of **every** step (a host value the step has anyway): the mean over the last ``window`` steps
  within ``GAP_MIN_FRACTION`` of chance, or above it. The first ``grace`` steps of each start are not judged
  (the queue still holds random keys, the loss starts near chance in a healthy run too). It is a *partial
  collapse* when the effective rank also fell to at most ``RANK_FALL`` x its value in the grace steps.
- **Full collapse**: every embedding (nearly) the same point: ``std_ratio < STD_RATIO_MIN`` and the loss within
  ``FULL_GAP_FRACTION`` of chance for ``WINDOW`` embedding measurements in a row (no grace: a healthy run is far
  from it from step 0). In so small a cone the logits hardly differ: the loss sits a few % below chance even when
  the arg-max still finds the positive (``acc_inst`` can read 100 %: the queue's keys are older encoders').

:class:`HealthPlan` sizes ``grace`` and ``window`` to the epoch (one epoch each, 10 to 300 / 100 steps), so a
collapse is reported about one epoch after it starts (at the earliest at step ``grace + window``), and measures
the embeddings every ``print_freq`` steps or often enough for ``WINDOW`` measurements per window. Logged
(TensorBoard, and per epoch ``health/epoch_*`` in ``metrics.json``):

- ``health/embedding_std``: mean over dimensions of the per-dimension std (about ``1/sqrt(d)`` spread, -> 0
  collapsed); ``health/std_ratio`` = std x sqrt(d) (about 1 spread, 0 collapsed);
- ``health/effective_rank``: ``exp(entropy(s / sum(s)))`` of the singular values ``s`` of the batch's
  embeddings (Roy & Vetterli 2007): 1 when every embedding has the same direction, up to ``min(B, d)``;
- ``health/infonce_gap``: chance - the watched loss of the measured step (about 0, or below, at chance);
  ``health/chance_gap_mean``: chance - its mean over the last ``window`` steps (every step);
- per epoch ``health/epoch_collapse``: 0 none, 1 not learning / partial collapse, 2 full collapse (so far).

One warning (stderr, once per start) states the figures: the mean loss and which way and how far it is from
chance, the measured accuracies, the effective rank against its early value, the spread, and remedies built
from the run's own lr, warmup and batch size, never naming the optimizer in use. ``--stop-on-collapse`` then
stops the run with a checkpoint (exit code :data:`COLLAPSE_EXIT`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pcl.train.optim import OPTIMIZER_DEFAULTS

STD_RATIO_MIN = 0.05  # healthy runs stay above ~0.2 even at initialisation; a full collapse ends below 1e-3
GAP_MIN_FRACTION = 0.02  # the watched loss within 2 % of chance (or above it): not learning
FULL_GAP_FRACTION = 0.2  # with a spread below STD_RATIO_MIN: the loss within 20 % of chance (a full collapse)
RANK_FALL = 0.5  # effective rank at most half its early value: the embeddings lost most of their directions
WINDOW = 5  # embedding measurements: in a row for a full collapse; at least this many per loss window
GRACE_STEPS = (10, 300)  # steps of each start not judged for "not learning": one epoch, within these bounds
WINDOW_STEPS = (10, 100)  # steps the watched loss is averaged over: one epoch, within these bounds
COLLAPSE_EXIT = 3  # exit code of --stop-on-collapse
# the optimizer a warning suggests instead of the one in use (never the same one)
ALTERNATIVE = {"adamw": "sgd-cos", "sgd": "adamw", "sgd-cos": "adamw", "lamb": "adamw", "lars": "adamw"}
VERDICTS = {0: "", 1: "not learning", 2: "full collapse"}


@torch.no_grad()
def embedding_signals(q: torch.Tensor) -> torch.Tensor:
    """``(2,)`` float32 on ``q``'s device: mean per-dimension std and effective rank of ``q (B, d)``; no sync.

    Non-finite entries count as 0 (such a step is skipped by the guard and its signals are not used; the SVD
    would otherwise fail).
    """
    q = torch.nan_to_num(q.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    std = q.std(dim=0).mean() if q.shape[0] > 1 else q.new_zeros(())
    s = torch.linalg.svdvals(q)
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return torch.stack([std, entropy.exp()])


class CollapseStop(Exception):
    """``--stop-on-collapse``: raised once the mid-epoch checkpoint ``checkpoint`` is written (exit code 3)."""

    code = COLLAPSE_EXIT

    def __init__(self, checkpoint: str) -> None:
        super().__init__(f"finite collapse (--stop-on-collapse): checkpoint written: {checkpoint}")
        self.checkpoint = checkpoint


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return min(max(value, bounds[0]), bounds[1])


@dataclass(frozen=True)
class HealthPlan:
    """When the detector measures and judges, from the schedule (steps per epoch, ``--print-freq``).

    ``grace``: the first steps of each start, not judged for "not learning" (their ranks are the early value);
    ``window``: steps the watched loss is averaged over; ``every``: steps between embedding measurements.
    """

    steps_per_epoch: int
    grace: int
    window: int
    every: int

    @classmethod
    def for_schedule(cls, steps_per_epoch: int, print_freq: int) -> HealthPlan:
        window = _clamp(steps_per_epoch, WINDOW_STEPS)
        every = max(1, min(print_freq, window // WINDOW))
        return cls(max(steps_per_epoch, 1), _clamp(steps_per_epoch, GRACE_STEPS), window, every)

    def measures(self, step: int) -> bool:
        """True when global step ``step`` measures the embeddings (std, effective rank)."""
        return step % self.every == 0

    @property
    def latest(self) -> int:
        """Steps after which a start whose loss sits at chance from its first step has been reported."""
        return self.grace + self.window


@dataclass(frozen=True)
class RunRecipe:
    """What the advice quotes and changes: the optimizer in use (never suggested), its base lr, lr warmup
    (epochs) and the global batch size."""

    optimizer: str
    lr: float
    warmup_epochs: float
    batch_size: int


def advice(recipe: RunRecipe | None) -> str:
    """Remedies that fit ``recipe``: half its lr, a longer lr warmup, another optimizer at its default lr for this
    batch (linear scaling from 128), or a larger batch at the same lr; never the optimizer in use."""
    if recipe is None:
        return "Remedies: a lower --lr, a longer --lr-warmup-epochs or another --optimizer"
    lr, w, b = recipe.lr, recipe.warmup_epochs, recipe.batch_size
    other = ALTERNATIVE.get(recipe.optimizer, "adamw" if recipe.optimizer != "adamw" else "sgd-cos")
    other_lr = OPTIMIZER_DEFAULTS[other].lr * b / 128 if other in OPTIMIZER_DEFAULTS else lr
    warm = max(w + 2, 2 * w)
    return (
        f"Remedies for this run (now lr {lr:g}, lr warmup {w:g} epoch{'s' if w != 1 else ''}, batch {b}): "
        f"--lr {lr / 2:g}; --lr-warmup-epochs {warm:g}; --optimizer {other} --lr {other_lr:.3g}; "
        f"or --batch-size {2 * b} at the same --lr"
    )


def _mean(values: object) -> float:
    values = list(values)  # type: ignore[call-overload]
    return sum(values) / len(values) if values else math.nan


@dataclass
class HealthMonitor:
    """Watches one method's run (see the module docstring); :meth:`observe_step` once per applied step.

    ``term`` / ``chance``: the watched loss and its chance level (None: the method has none, only the embedding
    signals are logged); ``words``: how the warning names it (e.g. ``InfoNCE``); ``accuracies``: hits quoted in
    the warning; ``say``: where the one warning goes.
    """

    dim: int
    plan: HealthPlan
    term: str | None = None
    chance: float | None = None
    words: str = ""
    accuracies: tuple[str, ...] = ()
    recipe: RunRecipe | None = None
    say: Callable[[str], None] = lambda line: None
    seen: int = 0
    losses: deque = field(default_factory=deque)  # the watched loss of the last ``window`` steps
    hits: dict[str, deque] = field(default_factory=dict)  # accuracy (%) of the last ``window`` steps, by name
    measured: deque = field(default_factory=deque)  # (std_ratio, rank) of the measurements in the loss window
    early_ranks: list[float] = field(default_factory=list)  # effective ranks measured in the grace steps
    collapsed_in_a_row: int = 0
    verdict: int = 0  # VERDICTS
    message: str = ""
    epoch_values: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def for_method(
        cls, method: object, plan: HealthPlan, recipe: RunRecipe | None, say: Callable[[str], None]
    ) -> HealthMonitor:
        """The monitor of a :class:`~pcl.methods.base.Method` (its ``chance_loss``, ``embedding_dim``, summary
        accuracies)."""
        chance = method.chance_loss()  # type: ignore[attr-defined]
        accs = tuple(method.summary_terms())  # type: ignore[attr-defined]
        term, value = chance if chance is not None else (None, None)
        return cls(method.embedding_dim, plan, term, value, accuracies=accs, recipe=recipe, say=say)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ one step
    def observe_step(self, step: int, stats: object) -> dict[str, float]:
        """Record applied step ``step`` (a :class:`~pcl.train.meters.StepStats`); returns its ``health/*``
        scalars and gives the one warning (through ``say``) when the run first shows a collapse."""
        out: dict[str, float] = {}
        loss = stats.terms.get(self.term) if self.term is not None else None  # type: ignore[attr-defined]
        if stats.health:  # type: ignore[attr-defined]
            out.update(self._measure(*stats.health[:2], loss))  # type: ignore[attr-defined]
        if loss is None or self.chance is None:
            return out
        self.seen += 1
        self.words = self.words or stats.checked.get(self.term, self.term)  # type: ignore[attr-defined]
        self.losses.append(loss)
        for name in self.accuracies:
            if name in stats.hits:  # type: ignore[attr-defined]
                self.hits.setdefault(name, deque()).append(100.0 * stats.hits[name] / max(stats.batch, 1.0))  # type: ignore[attr-defined]
        for q in (self.losses, *self.hits.values()):
            while len(q) > self.plan.window:
                q.popleft()
        out["health/chance_gap_mean"] = self.chance - _mean(self.losses)
        self._judge(step)
        return out

    def _measure(self, std: float, rank: float, loss: float | None) -> dict[str, float]:
        """One embedding measurement: its scalars; counts a full-collapse sign."""
        values = {
            "health/embedding_std": std,
            "health/std_ratio": std * math.sqrt(self.dim),
            "health/effective_rank": rank,
        }
        near_chance = loss is not None and self.chance is not None and self._at_chance(loss, FULL_GAP_FRACTION)
        if loss is not None and self.chance is not None:
            values["health/infonce_gap"] = self.chance - loss
        for k, v in values.items():
            self.epoch_values.setdefault(k, []).append(v)
        collapsed = values["health/std_ratio"] < STD_RATIO_MIN and near_chance
        self.collapsed_in_a_row = self.collapsed_in_a_row + 1 if collapsed else 0
        if self.seen < self.plan.grace:
            self.early_ranks.append(rank)
        self.measured.append((values["health/std_ratio"], rank))
        while len(self.measured) > max(WINDOW, math.ceil(self.plan.window / self.plan.every)):
            self.measured.popleft()
        return values

    def _at_chance(self, loss: float, fraction: float = GAP_MIN_FRACTION) -> bool:
        """``loss`` within ``fraction`` of chance, or above it."""
        assert self.chance is not None
        return self.chance - loss < fraction * self.chance

    def _judge(self, step: int) -> None:
        """Set the verdict (and warn once) when a full collapse or a sustained at-chance loss shows."""
        if self.verdict:
            return
        if self.collapsed_in_a_row >= WINDOW:
            self.verdict = 2
        elif self.seen >= self.plan.latest and self._at_chance(_mean(self.losses)):
            self.verdict = 2 if _mean(s for s, _ in self.measured) < STD_RATIO_MIN else 1
        if self.verdict:
            self.message = self._warning(step)
            self.say(self.message)

    @property
    def collapse(self) -> bool:
        """The run showed a collapse (either kind); ``--stop-on-collapse`` stops on it."""
        return self.verdict > 0

    # ------------------------------------------------------------------ what is said
    def figures(self) -> str:
        """The loss window's figures in words: mean watched loss and its way from chance, accuracies, rank, spread."""
        assert self.chance is not None
        mean = _mean(self.losses)
        gap = self.chance - mean
        way = f"{abs(gap):.3f} {'below' if gap >= 0 else 'above'} its chance level {self.chance:.3f}"
        text = f"{self.words} averaged {mean:.3f} over the last {len(self.losses)} steps, {way}"
        text += f" ({100 * abs(gap) / self.chance:.1f} %; a learning run sits > {100 * GAP_MIN_FRACTION:g} % below)"
        for i, (name, q) in enumerate(self.hits.items()):
            text += f"; {name} {_mean(q):.2f} %"
            if i == 0:  # the watched task's accuracy: chance = 1 / the number of candidates, exp(chance loss)
                guess = 100 * math.exp(-self.chance)
                text += f" (a uniform guess among its {math.exp(self.chance):.0f} candidates: {guess:.2f} %)"
        if self.measured:
            rank, ratio = _mean(r for _, r in self.measured), _mean(s for s, _ in self.measured)
            text += f"; effective rank {rank:.1f}"
            if self.early_ranks:
                text += f" (in the first {self.plan.grace} steps: {_mean(self.early_ranks):.1f})"
            text += f"; spread std·√d {ratio:.3g} (d = {self.dim}; about 1 spread out, < {STD_RATIO_MIN:g} one point)"
        return text

    def diagnosis(self) -> str:
        """The verdict in words: full collapse, partial collapse (rank fell) or not learning."""
        if self.verdict == 2:
            return "the embeddings collapsed to one point (full collapse)"
        early, rank = _mean(self.early_ranks), _mean(r for _, r in self.measured)
        if self.early_ranks and self.measured and rank <= RANK_FALL * early:
            fell = f"the effective rank fell to {rank / early:.0%} of its early value"
            return f"partial collapse: the task is not being learnt and {fell}"
        return "the task is not being learnt (the embeddings keep their spread and directions)"

    def _warning(self, step: int) -> str:
        epoch = step // self.plan.steps_per_epoch
        return (
            f"warning: {self.diagnosis()} at step {step} (epoch {epoch} of this schedule): {self.figures()}. "
            f"{advice(self.recipe)}; --stop-on-collapse stops such a run with a checkpoint"
        )

    def summary(self) -> str:
        """One line for the end of a run: the verdict (or none) and the last figures."""
        if self.chance is None:
            return "health: the method names no loss to watch (embedding signals only)"
        if not self.losses:
            return "health: no step trained in this start"
        head = f"{self.diagnosis()} (warned once)" if self.verdict else "no collapse sign"
        return f"health: {head}; {self.figures()}"

    def pop_epoch(self) -> dict[str, float]:
        """This epoch's means ``health/epoch_*`` and the verdict so far ``health/epoch_collapse``; start over."""
        out = {k.replace("health/", "health/epoch_"): sum(v) / len(v) for k, v in self.epoch_values.items() if v}
        if self.chance is not None:
            out["health/epoch_collapse"] = float(self.verdict)
        self.epoch_values = {}
        return out
