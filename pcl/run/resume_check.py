"""Resume safety: is a file a training checkpoint, and does the new config fit the stored one?

Checked before anything is loaded into the model or written to the exp-dir.

- Flags that change tensor shapes or the optimizer state (``SHAPE_FLAGS``) must match: one ``error:`` line names
  every differing flag with both values.
- Optimizer hyper-parameters (``--lr``, ``--wd``, ``--momentum``) may change: the new values are applied from the
  first resumed step (``apply_hyperparams``) and recorded; the lr schedule continues at the checkpoint's step.
- Everything else (``--epochs``, ``--print-freq``, ``--workers``, ...) may change freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pcl.utils.errors import PCLError

# (config section, field, flag): a different value changes tensor shapes, the optimizer state or the method
SHAPE_FLAGS = (
    (None, "method", "--method"),
    ("model", "arch", "--arch"),
    ("model", "stem", "--stem"),
    ("model", "low_dim", "--low-dim"),
    ("model", "pcl_r", "--pcl-r"),
    ("model", "mlp", "--mlp"),
    ("model", "cluster_head", "--cluster-head"),
    ("optim", "optimizer", "--optimizer"),
    ("optim", "exclude_bn_bias", "--exclude-bn-bias"),
    ("swav", "prototypes", "--swav-prototypes"),
    ("swav", "queue_length", "--swav-queue-length"),
    ("dino", "out_dim", "--dino-out-dim"),
    ("dino", "hidden_dim", "--dino-hidden-dim"),
    ("dino", "bottleneck_dim", "--dino-bottleneck-dim"),
    ("dino", "norm_last_layer", "--dino-norm-last-layer"),
)
TRAINING_KEYS = ("model", "optimizer", "scheduler", "epoch")


def check_training_checkpoint(ckpt: object, path: Path) -> dict:
    """``ckpt`` if it is a ``main_pcl.py`` checkpoint; else a clear ``PCLError`` (e.g. an exported backbone)."""
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in TRAINING_KEYS):
        keys = list(ckpt)[:3] if isinstance(ckpt, dict) else type(ckpt).__name__
        hint = (
            " (it looks like a backbone written by tools/export_backbone.py, which holds only weights)"
            if isinstance(ckpt, dict) and any(str(k).startswith(("conv1.", "layer1.")) for k in ckpt)
            else ""
        )
        missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise PCLError(
            f"--resume {path} is not a training checkpoint of main_pcl.py{hint}; it has {keys} but no "
            f"{', '.join(missing)}; resume from <exp-dir>/checkpoints/last.pth or checkpoint_XXXX.pth"
        )
    return ckpt


def _uses_scaler(amp: str) -> bool:
    return amp == "fp16"


def _value(cfg: Any, section: str | None, name: str) -> Any:
    return getattr(cfg if section is None else getattr(cfg, section), name)


def incompatibilities(
    stored: Any, new: Any, ckpt: Mapping, num_train: int | None = None, data_identity: Mapping | None = None
) -> list[str]:
    """Human-readable ``flag stored -> new`` for every difference that the checkpoint cannot follow; ``stored`` and
    ``new`` are resolved configurations (``pcl.config.Config``)."""
    out = []
    for section, name, flag in SHAPE_FLAGS:
        a, b = _value(stored, section, name), _value(new, section, name)
        if a != b:
            out.append(f"{flag} {a} -> {b}")
    if _uses_scaler(stored.step.amp) != _uses_scaler(new.step.amp):
        out.append(f"--amp {stored.step.amp} -> {new.step.amp} (GradScaler state)")
    if ckpt.get("step_in_epoch") and stored.train.batch_size != new.train.batch_size:
        out.append(f"--batch-size {stored.train.batch_size} -> {new.train.batch_size} (checkpoint is mid-epoch)")
    stored_n = ckpt.get("num_train")
    if num_train is not None and stored_n is not None and stored_n != num_train:
        out.append(f"training images {stored_n} -> {num_train}")
    elif data_identity is not None and isinstance(ckpt.get("data_identity"), Mapping):
        old = ckpt["data_identity"]
        if old.get("sha256") != data_identity.get("sha256"):
            out.append(
                f"training data changed: {num_train} images as before but other files or labels "
                f"(file-list hash {str(old.get('sha256'))[:12]} -> {str(data_identity.get('sha256'))[:12]})"
            )
    return out


def check_compatible(
    ckpt: Mapping,
    stored: Any,
    new: Any,
    path: Path,
    num_train: int | None = None,
    data_identity: Mapping | None = None,
) -> None:
    """Raise one ``PCLError`` naming every flag whose change the checkpoint cannot follow, or a changed data set
    (``data_identity``: count and file-list hash, ``sources.ImageSet.identity``). ``stored``: the checkpoint's
    resolved configuration (None for a very old checkpoint without one: nothing to compare)."""
    if stored is None:
        return
    bad = incompatibilities(stored, new, ckpt, num_train, data_identity)
    if bad:
        raise PCLError(
            f"cannot resume {path} with a different configuration: {'; '.join(bad)}; "
            "use the checkpoint's values (see its config.json) or start a new --exp-dir"
        )


HYPER = ("weight_decay", "momentum")


def snapshot_hyperparams(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> tuple[list[dict], list[float]]:
    """The freshly built optimizer's per-group hyper-parameters and the scheduler's base lrs (new config)."""
    groups = [{k: g[k] for k in HYPER if k in g} for g in optimizer.param_groups]
    return groups, list(scheduler.base_lrs)


def apply_hyperparams(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    snapshot: tuple[list[dict], list[float]],
) -> list[str]:
    """After loading the checkpoint's state: put back the new config's lr / wd / momentum; returns changes.

    ``load_state_dict`` restores the stored values, so without this a changed ``--lr`` would be recorded but
    not used. The lr of every group becomes ``new base lr x schedule(step)`` at the checkpoint's step.
    """
    groups, base_lrs = snapshot
    changes: dict[str, str] = {}
    old_base = list(scheduler.base_lrs)
    if old_base != base_lrs:
        changes["--lr"] = f"--lr {old_base[0]:g} -> {base_lrs[0]:g}"
    step = scheduler.last_epoch
    for g, fresh, base, lam in zip(optimizer.param_groups, groups, base_lrs, scheduler.lr_lambdas, strict=True):
        for k, v in fresh.items():
            name = "--wd" if k == "weight_decay" else f"--{k}"
            if g.get(k) != v and name not in changes:
                changes[name] = f"{name} {g.get(k):g} -> {v:g}"
            g[k] = v
        g["initial_lr"] = base
        g["lr"] = base * lam(step)
    scheduler.base_lrs = list(base_lrs)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return list(changes.values())
