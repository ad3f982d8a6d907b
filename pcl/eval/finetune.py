"""Semi-supervised fine-tuning that can rank encoders: the whole backbone plus a linear head on p % of the labels.

For each percentage p and each of ``--finetune-draws`` draws d (seeded by ``(seed, draw)`` only, so every encoder
sees the same images):

1. a **validation split** (:func:`validation_split`): ``--finetune-val-per-class`` train images of every class.
   It is never labelled for training and never the test split; every choice is made on it.
2. the **labelled subset** (:func:`balanced_subset`): ``round(p / 100 * N / C)`` images of every class from the
   other train images (100 %: all of them). :func:`check_splits` refuses a subset or validation image that is
   also a test image (same file) or a validation image that is labelled.
3. a **frozen linear probe** on the labelled images' frozen features (eval view), its L2 strength chosen on the
   validation split: a reference row (a fine-tune result below it means the recipe, not the encoder, failed) and,
   with ``--finetune-init lp`` (linear probe, then fine-tune), the head's starting point.
4. for every point of the small grid ``--finetune-lr`` x ``--finetune-head-lr``: a copy of the backbone and the
   head trained for a fixed ``--finetune-steps`` SGD steps (momentum 0.9, cosine schedule; not passes over the
   subset, so 1 % and 10 % get the same optimisation budget) on augmented views consistent with pretraining
   (RandomResizedCrop at the pretraining's crop scale, flip unless ``--no-finetune-flip``); BatchNorm either
   **frozen** (eval mode: the encoder's statistics, affine parameters trained) or in train mode and then
   **recalibrated** on the eval view of the train images before it is scored (``--finetune-bn``); scored on the
   validation split.
5. the grid point with the best validation top-1 (ties: the first in grid order) is scored on the test split. A
   fit whose loss became non-finite is a diverged grid point (recorded, never chosen); all diverged is an error.

Reported: test top-1 / top-5 and the linear reference's, mean +- std over the draws; per draw the labelled and
validation index files, the choice and every validation score. ``--finetune-preset swav`` is SwAV's published
ImageNet semi-supervised recipe (batch 256, 20 passes, lr 0.02 backbone / 5 head for 1 %, 0.01 / 0.2 for 10 %,
random head, BatchNorm trained, crop scale 0.08-1 + flip), kept for GPU runs on large data.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from torchvision import transforms

from pcl.data.datasets import IMAGENET_MEAN, IMAGENET_STD, IndexedImages, eval_loader
from pcl.eval.linear_probe import DEFAULT_WDS, fit_logistic, topk_accuracy
from pcl.model.bn import recalibrate_bn
from pcl.model.features import extract
from pcl.utils.atomic import write_atomic
from pcl.utils.errors import PCLError
from pcl.utils.flags import flag, float_list
from pcl.utils.logs import progress

PRESETS = ("cpu", "swav")
INITS = ("lp", "random")
BN_MODES = ("frozen", "recalibrate")
SWAV_LRS = {1.0: (0.02, 5.0), 10.0: (0.01, 0.2)}  # percent -> (backbone lr, head lr), SwAV's eval_semisup.py
SWAV_PASSES, SWAV_BATCH, SWAV_CROP_MIN = 20, 256, 0.08


@dataclass(frozen=True)
class FinetuneConfig:
    """Label fractions, draws, the validation split and the recipe (module docstring); CPU defaults."""

    percents: tuple[float, ...] = flag(
        (1.0, 10.0), "--finetune", type=float_list, gt=0, le=100, help="percent of the labels; turns it on"
    )
    preset: str = flag("cpu", "--finetune-preset", choices=PRESETS, help="cpu: the flags below; swav: SwAV's recipe")
    steps: int = flag(100, "--finetune-steps", gt=0, help="optimizer steps of every fit (not passes over the subset)")
    batch_size: int = flag(32, "--finetune-batch-size", gt=0)
    lrs: tuple[float, ...] = flag(
        (0.003, 0.03), "--finetune-lr", type=float_list, gt=0, help="backbone lrs of the grid (cosine schedule)"
    )
    head_lrs: tuple[float, ...] = flag(
        (0.03,), "--finetune-head-lr", type=float_list, gt=0, help="head lrs of the grid"
    )
    init: str = flag("lp", "--finetune-init", choices=INITS, help="head start: lp = the linear probe's solution")
    bn: str = flag("frozen", "--finetune-bn", choices=BN_MODES, help="frozen (eval mode) or recalibrate after training")
    crop_min: float | None = flag(
        None, "--finetune-crop-min", type=float, gt=0, le=1, help="crop scale minimum (default: the run's --crop-min)"
    )
    flip: bool = flag(True, "--finetune-flip", action=argparse.BooleanOptionalAction, help="horizontal flips")
    draws: int = flag(3, "--finetune-draws", gt=0, help="seeded draws of subset and validation split (mean +- std)")
    val_per_class: int = flag(50, "--finetune-val-per-class", gt=0, help="validation images of every class")
    weight_decay: float = flag(0.0, "--finetune-wd", ge=0, help="weight decay")
    momentum: float = 0.9
    seed: int = 0  # the evaluation's --seed


@dataclass(frozen=True)
class Recipe:
    """One percentage's effective recipe: the grid of ``(backbone lr, head lr)``, steps, batch, head start,
    BatchNorm handling, crop scale minimum and flip, weight decay and momentum."""

    grid: tuple[tuple[float, float], ...]
    steps: int
    batch_size: int
    init: str
    bn: str
    crop_min: float
    flip: bool
    weight_decay: float = 0.0
    momentum: float = 0.9


def recipe(cfg: FinetuneConfig, percent: float, n_labelled: int, crop_min: float) -> Recipe:
    """The recipe of ``percent`` (``n_labelled`` images): the flags, or SwAV's preset (its 1 % and 10 % settings;
    steps = 20 passes over the subset at batch 256); ``crop_min``: the pretraining's, unless the flag gives one."""
    if cfg.preset == "swav":
        if percent not in SWAV_LRS:
            raise PCLError(f"--finetune-preset swav has settings for 1 and 10 percent only, not {percent:g}")
        steps = math.ceil(SWAV_PASSES * n_labelled / SWAV_BATCH)
        return Recipe((SWAV_LRS[percent],), steps, SWAV_BATCH, "random", "recalibrate", SWAV_CROP_MIN, True,
                      cfg.weight_decay, cfg.momentum)  # fmt: skip
    grid = tuple((lr, head) for lr in cfg.lrs for head in cfg.head_lrs)
    crop = cfg.crop_min if cfg.crop_min is not None else crop_min
    return Recipe(grid, cfg.steps, cfg.batch_size, cfg.init, cfg.bn, crop, cfg.flip, cfg.weight_decay, cfg.momentum)


def train_transform(image_size: int, crop_min: float, flip: bool) -> transforms.Compose:
    """The fine-tuning view: RandomResizedCrop at scale ``(crop_min, 1)`` (+ horizontal flip), normalised."""
    ops: list = [transforms.RandomResizedCrop(image_size, scale=(crop_min, 1.0))]
    ops += [transforms.RandomHorizontalFlip()] if flip else []
    return transforms.Compose([*ops, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def percent_key(p: float) -> str:
    """``1.0 -> "1"``, ``0.5 -> "0.5"``: the key of a percentage in ``eval.json`` and in file names."""
    return f"{p:g}"


# ---------------------------------------------------------------------- the splits


def validation_split(labels: np.ndarray, per_class: int, seed: int = 0, draw: int = 0) -> np.ndarray:
    """Sorted indices of ``per_class`` images of every class of ``labels (N,)``, seeded by ``(seed, draw)`` only;
    a class needs more images than that (the rest is for the labelled subset)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if per_class >= counts.min():
        smallest = classes[counts.argmin()]
        raise PCLError(f"--finetune-val-per-class {per_class} leaves no image of class {smallest} ({counts.min()} "
                       "images) to label: lower it")  # fmt: skip
    rng = np.random.default_rng([seed, 7919, draw])
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(picks))


def balanced_subset(
    labels: np.ndarray, percent: float, seed: int = 0, draw: int = 0, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Sorted indices of a class-balanced seeded ``percent`` % of ``labels (N,)``: ``round(percent / 100 * N / C)``
    (at least 1) images of every class, drawn without replacement from the indices not in ``exclude`` (the
    validation split); 100 % is every such index.

    Seeded by ``(seed, percent, draw)`` only (draw 0 without ``exclude``: the subset of earlier versions). Raises
    ``PCLError`` when a class has too few images."""
    labels = np.asarray(labels)
    if not 0 < percent <= 100:
        raise PCLError(f"--finetune percentages must lie in (0, 100], got {percent:g}")
    free = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        free[np.asarray(exclude, dtype=int)] = False
    if percent == 100:
        return np.flatnonzero(free)
    classes = np.unique(labels)
    per_class = max(1, round(percent / 100 * len(labels) / len(classes)))
    pools = [np.flatnonzero((labels == c) & free) for c in classes]
    short = min(range(len(classes)), key=lambda i: len(pools[i]))
    if per_class > len(pools[short]):
        where = " outside the validation split" if exclude is not None else ""
        raise PCLError(f"--finetune {percent:g}% needs {per_class} images per class but class {classes[short]} has "
                       f"{len(pools[short])}{where}")  # fmt: skip
    rng = np.random.default_rng([seed, round(percent * 1000), *([draw] if draw else [])])
    return np.sort(np.concatenate([rng.choice(pool, size=per_class, replace=False) for pool in pools]))


def check_splits(train_files: Sequence[str], test_files: set[str], labelled: np.ndarray, val: np.ndarray) -> None:
    """Refuse a leak: a validation image that is labelled, an index outside the train split, or a labelled or
    validation image that is also a test image (the same file, ``test_files`` = their real paths)."""
    n = len(train_files)
    both = np.concatenate([labelled, val])
    if both.size and (both.min() < 0 or both.max() >= n):
        raise PCLError(f"fine-tuning split leak: an index outside the {n} train images")
    shared = np.intersect1d(labelled, val)
    if shared.size:
        raise PCLError(f"fine-tuning split leak: {shared.size} validation image(s) are also labelled, e.g. "
                       f"{train_files[int(shared[0])]}")  # fmt: skip
    leaked = [train_files[int(i)] for i in both if os.path.realpath(train_files[int(i)]) in test_files]
    if leaked:
        raise PCLError(f"fine-tuning split leak: {len(leaked)} labelled / validation image(s) are test images, e.g. "
                       f"{leaked[0]}")  # fmt: skip


def write_subset(path: os.PathLike, indices: np.ndarray, dataset: IndexedImages) -> None:
    """One line per image of the subset: ``INDEX<TAB>class/file`` (the path relative to the split's root)."""
    root = dataset.root
    lines = [f"{int(i)}\t{os.path.relpath(dataset.samples[int(i)][0], root)}\n" for i in indices]
    text = "".join(lines).encode()
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    write_atomic(path, lambda f: f.write(text), "fine-tuning subset")


def read_subset(path: os.PathLike) -> np.ndarray:
    """The indices of an index file written by :func:`write_subset`."""
    with open(path) as f:
        return np.array([int(line.split("\t", 1)[0]) for line in f.read().splitlines() if line])


# ---------------------------------------------------------------------- the model and its training


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed buffers ``(D,)``: the linear probe's feature scaling inside the head."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D)
        return (x - self.mean) / self.std


@dataclass
class Probe:
    """The frozen linear probe of one draw: its head ``Standardize -> Linear`` (D -> C), the chosen L2 strength,
    the validation top-1 of every strength and the probe's test top-1 / top-5."""

    head: nn.Sequential
    wd: float
    val_top1: dict[float, float]
    top1: float
    top5: float


def linear_head(feats: torch.Tensor, y: torch.Tensor, val: torch.Tensor, val_y: torch.Tensor, test: torch.Tensor,
                test_y: torch.Tensor, num_classes: int, max_iter: int = 200) -> Probe:  # fmt: skip
    """Multinomial logistic regression on frozen features of the labelled images ``feats (n, D)``, its L2
    strength chosen on the validation features ``val (v, D)`` (ties: the stronger), scored on ``test (m, D)``."""
    feats = feats.float()
    mean = feats.mean(0)
    std = feats.std(0) if feats.shape[0] > 1 else torch.ones_like(mean)
    std = std.clamp_min(max(1e-6, 0.1 * float(std.mean())))  # a feature constant on these images (a dead unit)
    # must not be scaled up a million times: fine-tuning moves it
    xs, xv, xt = ((x.float() - mean) / std for x in (feats, val, test))
    scores: dict[float, float] = {}
    fits: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    init = None
    for wd in sorted(DEFAULT_WDS, reverse=True):  # strong to weak, each warm-started from the previous solution
        fits[wd] = init = fit_logistic(xs, y, num_classes, wd, max_iter, init)
        scores[wd] = topk_accuracy(xv @ init[0] + init[1], val_y, 1)
    best = max(sorted(scores, reverse=True), key=lambda wd: scores[wd])
    w, b = fits[best]
    fc = nn.Linear(feats.shape[1], num_classes)
    with torch.no_grad():
        fc.weight.copy_(w.T)
        fc.bias.copy_(b)
    logits = xt @ w + b
    head = nn.Sequential(Standardize(mean, std), fc)
    return Probe(head, best, scores, topk_accuracy(logits, test_y, 1), topk_accuracy(logits, test_y, 5))


def cosine_lr(base: float, step: int, total: int) -> float:
    """``base * (1 + cos(pi * step / total)) / 2``: from ``base`` at step 0 towards 0 at ``total``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


def _loader(train_aug: Dataset, indices: np.ndarray, r: Recipe, seed: int, workers: int) -> DataLoader:
    """Exactly ``r.steps`` batches of ``r.batch_size`` augmented labelled images (permutation after permutation)."""
    subset = Subset(train_aug, [int(i) for i in indices])
    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(subset, replacement=False, num_samples=r.steps * r.batch_size, generator=g)
    return DataLoader(subset, batch_size=r.batch_size, sampler=sampler, num_workers=workers, drop_last=True)


def train(backbone: nn.Module, head: nn.Module, train_aug: Dataset, targets: torch.Tensor, indices: np.ndarray,
          r: Recipe, lrs: tuple[float, float], device: torch.device, seed: int = 0, workers: int = 2,
          show: bool = True) -> tuple[nn.Sequential, list[float]]:  # fmt: skip
    """A copy of ``backbone`` ``(B, 3, H, W) -> (B, D)`` and of ``head`` (D -> C) trained for ``r.steps`` steps on
    the ``indices`` of ``train_aug`` (items ``(view, index)``; ``targets (N,)``) at ``lrs`` = (backbone, head);
    returns ``nn.Sequential(backbone, head)`` and the loss of every step. The originals are left untouched. A
    non-finite loss ends the fit at once (its last loss is then not finite: :func:`diverged`)."""
    torch.manual_seed(seed)
    net, head = copy.deepcopy(backbone), copy.deepcopy(head)
    for p in [*net.parameters(), *head.parameters()]:
        p.requires_grad = True
    model = nn.Sequential(net, head).to(device)
    groups = [{"params": list(net.parameters()), "base_lr": lrs[0]},
              {"params": list(head.parameters()), "base_lr": lrs[1]}]  # fmt: skip
    opt = torch.optim.SGD(groups, lr=lrs[0], momentum=r.momentum, weight_decay=r.weight_decay)
    model.train(r.bn != "frozen")  # frozen: BatchNorm keeps the encoder's statistics (eval mode), still trained
    losses = []
    batches = progress(_loader(train_aug, indices, r, seed, workers), "fine-tune", r.steps, show)
    for step, (images, index) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(group["base_lr"], step, r.steps)
        loss = F.cross_entropy(model(images.to(device, non_blocking=True)), targets[index].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    return model.eval(), losses


def diverged(losses: list[float]) -> bool:
    """True when a fit of :func:`train` stopped on a non-finite loss."""
    return bool(losses) and not math.isfinite(losses[-1])


def recalibrate(model: nn.Sequential, images: Dataset, device: torch.device, workers: int = 2) -> None:
    """Recompute the BatchNorm statistics of ``model``'s backbone on ``images`` (eval view, items ``(image, i)``)."""
    recalibrate_bn(model[0], (x for x, _ in eval_loader(images, 256, workers)), device)


@torch.no_grad()
def predict(model: nn.Module, images: Dataset, device: torch.device, workers: int = 2) -> torch.Tensor:
    """Logits ``(n, C)`` of ``model`` (eval mode) on every item ``(image, i)`` of ``images``, in order (CPU)."""
    model.eval()
    return extract(model, eval_loader(images, 256, workers), device, show=False).cpu()
