"""The evaluation of a trained encoder: every chosen protocol of the registry on one shared context -> ``eval.json``.

``evaluate_run(source, EvalConfig(...))`` measures a run directory, a checkpoint file or a backbone without a run
(``pcl.eval.pretrained``) with the protocols of ``cfg.protocols`` (``pcl.eval.registry``; the built-in ones are
in ``pcl/eval/protocols/``), in registry order. The frozen features are extracted once, on first use, and shared.
It writes ``RUN_DIR/eval.json``::

    {"knn_top1": float|null, "linear_top1": float|null, "linear_top5": float|null,
     "cluster": {"<K>": {"nmi": float, "ami": float, "purity": float}, ...},
     "kmeans": {"<K>": {"acc", "acc_std", "nmi", "nmi_std", "ari", ..., "ami", ..., "purity", ..., "runs"}, ...},
     "lowshot": {"<k>": {"top1", "top1_std", "map", "map_std", "cost_selection", "draws"}, ...},     (when run)
     "finetune": {"<percent>": {"top1", "top5", "n_train", "subset_file", "epoch_loss"}, ...},      (when run)
     "settings": {...}}

The keys of a protocol that did not run keep its ``empty`` value (``null`` / ``{}``) or are absent. ``cluster``
scores the run's own last E-step clusters (PCL runs only, and only on the data the run was trained on);
``kmeans`` clusters the frozen backbone features of the train split with the E-step's faiss settings (k = the
number of classes, plus any ``--kmeans K``), so that any checkpoint, MoCo v2's included, gets comparable figures.
Accuracies are in percent; ACC / NMI / ARI / AMI / purity in [0, 1] (ARI and AMI can dip slightly below 0).
``settings.data_identity`` is the evaluated train split's ``pcl.data.sources.ImageSet.identity`` (the same
``{count, sha256, form}`` a training checkpoint records).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pcl.eval.protocols  # noqa: F401 - registers the built-in protocols
from pcl.eval.context import EvalContext
from pcl.eval.eval_config import EvalConfig
from pcl.eval.pretrained import Pretrained
from pcl.eval.registry import PROTOCOLS
from pcl.utils.atomic import write_atomic


def _settings(ctx: EvalContext) -> dict:
    """The common part of ``eval.json``'s settings: the encoder, the checkpoint, the data."""
    where = str(ctx.ckpt_path) if ctx.ckpt_path is not None else None
    settings = {**ctx.pre.settings(), "checkpoint": where, "data": ctx.data, "labels": ctx.labels, "val": ctx.val}
    settings["device"] = str(ctx.device)
    settings["encoder"] = ctx.encoder
    settings["data_identity"] = ctx.source.identity()
    return settings


def evaluate_run(source: Path | str | Pretrained, cfg: EvalConfig | None = None) -> dict:
    """The chosen protocols of ``cfg`` (default: the default ones) on ``source``; returns ``eval.json``'s content.

    ``source``: a run directory (its last checkpoint), a checkpoint file, or a backbone (an exported or untrained
    ``Pretrained``; no run: no clusters, nothing written unless ``cfg.out``). ``cfg.data`` defaults to the data
    the run was trained on; the run's own E-step clusters are scored only on that data. The result is written to
    ``cfg.out`` (default ``RUN_DIR/eval.json`` for the run's last checkpoint on the run's own data; otherwise only
    when given). ``cfg.encoder``: ``query``, ``key`` (the momentum encoder's backbone) or ``untrained`` (the run's
    architecture at random initialisation, seeded by ``cfg.seed``: the reference every trained encoder must beat);
    the latter two go to ``RUN_DIR/eval_{encoder}.json`` by default and never score the run's clusters.
    """
    t0 = time.time()
    cfg = cfg if cfg is not None else EvalConfig()
    cfg.validate()
    ctx = EvalContext.open(source if isinstance(source, Pretrained) else Path(source), cfg)
    ctx.settings.update(_settings(ctx))
    no_labels = ctx.source.knn_off_reason()
    if no_labels is not None:  # the figures that need labels stay None ("-")
        ctx.settings["no_labels"] = no_labels
    result: dict = {}
    for protocol in PROTOCOLS.values():
        result.update(copy.deepcopy(dict(protocol.empty)))
    for name, protocol in PROTOCOLS.items():
        if name in cfg.protocols and protocol.needs_labels and no_labels is not None:
            ctx.settings.setdefault("no_labels_protocols", []).append(name)
        elif name in cfg.protocols:
            block = protocol.compute(ctx, cfg.protocols[name])
            result.update(block.values)
            ctx.settings.update(block.settings)
    return _finish(ctx, result, t0)


def _finish(ctx: EvalContext, result: dict, t0: float) -> dict:
    """Add the settings to ``result`` and write it to the context's target (if any)."""
    settings = ctx.settings
    settings["seconds"] = round(time.time() - t0, 2)
    result["settings"] = settings
    settings["written"] = None if ctx.target is None else str(ctx.target)
    if ctx.target is None and ctx.own_checkpoint and not ctx.own:
        settings["not_written"] = "the data is not the run's own: its eval.json is kept (use --out FILE)"
    if ctx.target is not None:
        ctx.target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(result, indent=2).encode()
        write_atomic(ctx.target, lambda f: f.write(text), "evaluation result")
    return result
