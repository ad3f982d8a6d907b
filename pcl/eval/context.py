"""What every evaluation protocol reads: the encoder, the data, the run; shared work done once, on first use.

:meth:`EvalContext.open` resolves what ``evaluate_run`` is given (a run directory, a checkpoint file, or a
backbone without a run) into the backbone to measure, the data to measure it on (by default the run's own), the
run's folder and checkpoint, and where ``eval.json`` goes. An untrained backbone gets BatchNorm statistics
recomputed on the eval view of the train images (the fair reference; ``--untrained-bn init`` keeps the initial
ones), any backbone with ``--recalibrate-bn``. The frozen features of both splits and the eval-view image sets are
extracted / built on first use and then shared by every protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from pcl.config import stored_config
from pcl.data.datasets import IndexedImages, eval_transform
from pcl.data.sources import DataSource, resolve_data
from pcl.estep.clustering import ClusterResult
from pcl.eval.eval_config import ENCODERS, EvalConfig
from pcl.eval.frozen import FrozenFeatures, eval_sets, frozen_features
from pcl.eval.pretrained import Pretrained, from_checkpoint, recalibrated, untrained
from pcl.eval.run_source import last_cluster_result, run_paths, same_train_folder
from pcl.run.run_dir import RunDir
from pcl.utils.distributed import pick_device
from pcl.utils.errors import PCLError


@dataclass
class EvalContext:
    """One evaluation's shared state. ``encoder``: query | key | untrained | exported; ``own``: the data is the
    run's own (its clusters index these images); ``target``: where ``eval.json`` goes (None: not written);
    ``settings``: ``eval.json``'s settings object, which protocols and shared steps fill."""

    cfg: EvalConfig
    pre: Pretrained
    run: RunDir | None
    ckpt_path: Path | None
    data: str | None
    labels: str
    val: str | None
    own: bool
    own_data: str | None
    source: DataSource
    device: torch.device
    target: Path | None = None
    settings: dict = field(default_factory=dict)

    @property
    def encoder(self) -> str:
        return self.pre.kind

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def feature_note(self) -> str:
        """How the features protocols read are made, e.g. ``query backbone, L2-normalised``."""
        return f"{self.encoder} backbone, L2-normalised"

    @property
    def own_checkpoint(self) -> bool:
        """The checkpoint is the run's last one (an older one never overwrites the run's eval.json)."""
        return self.run is not None and self.ckpt_path == self.run.last

    @cached_property
    def features(self) -> FrozenFeatures:
        """Raw frozen features of both splits (extracted, or read from ``--feature-cache``, once)."""
        c = self.cfg
        feats = frozen_features(
            self.pre, self.data, self.device, c.batch_size, c.workers, c.cache_dir, c.show, self.labels, self.val
        )
        self.settings.update(n_train=int(feats.train.shape[0]), n_test=int(feats.test.shape[0]))
        self.settings["num_classes"] = feats.num_classes
        return feats

    @cached_property
    def sets(self) -> tuple[IndexedImages, IndexedImages]:
        """The train and test images under the eval view (for protocols that train on images)."""
        return eval_sets(self.data, self.pre.image_size, self.labels, self.val)

    def cluster_result(self) -> ClusterResult | None:
        """The run's last E-step clusters up to the checkpoint (None: none, or no checkpoint)."""
        if self.pre.checkpoint is None:
            return None
        return last_cluster_result(self.run, self.pre.checkpoint)

    def side_folder(self, name: str) -> Path | None:
        """``name/`` next to the written ``eval.json`` (else next to the checkpoint or backbone file; None when
        there is no file to put it beside)."""
        if self.target is not None:
            return self.target.parent / name
        return self.ckpt_path.parent / name if self.ckpt_path is not None else None

    @classmethod
    def open(cls, source: Path | Pretrained, cfg: EvalConfig) -> EvalContext:
        """The context of evaluating ``source`` (a run directory, a checkpoint file, or a backbone) under ``cfg``."""
        if isinstance(source, Pretrained):
            if cfg.encoder != "query":
                raise PCLError("--encoder chooses a backbone of a run or checkpoint, not of an exported/untrained one")
            run, ckpt_path, pre = None, None, source
        else:
            run, ckpt_path = run_paths(Path(source))
            pre = _encoder(ckpt_path, cfg.encoder, cfg.seed)
        if pre.checkpoint is not None:
            stored = stored_config(pre.checkpoint, ckpt_path or "checkpoint").data
            own_data, own_labels, own_val = stored.root, stored.labels, stored.val
        else:  # no run: nothing of its own
            own_data, own_labels, own_val = None, "auto", None
        own = pre.checkpoint is not None and (cfg.data is None or same_train_folder(cfg.data, own_data))
        data = own_data if cfg.data is None else cfg.data
        labels = cfg.labels or (own_labels if cfg.data is None else "auto")
        val = cfg.val or (own_val if cfg.data is None else None)
        ctx = cls(cfg, pre, run, ckpt_path, data, labels, val, own, own_data, resolve_data(data, labels, val),
                  pick_device(cfg.device))  # fmt: skip
        ctx.target = cfg.out if cfg.out is not None else (ctx._own_eval() if ctx.own_checkpoint and own else None)
        ctx._calibrate()
        return ctx

    def _calibrate(self) -> None:
        """The untrained encoder's BatchNorm statistics recomputed on the eval view of the train images (unless
        ``--untrained-bn init``); any encoder's with ``--recalibrate-bn``."""
        c = self.cfg
        untrained = self.pre.kind == "untrained"
        if not (c.recalibrate_bn or (untrained and c.untrained_bn == "recalibrated")):
            return
        train = IndexedImages(self.source.train, eval_transform(self.pre.image_size))
        self.pre = recalibrated(self.pre, train, self.device, c.batch_size, c.workers, c.bn_images, c.seed)

    def _own_eval(self) -> Path | None:
        """``RUN_DIR/eval.json`` (query encoder) or ``RUN_DIR/eval_{encoder}.json``."""
        assert self.run is not None
        return self.run.eval if self.encoder == "query" else self.run.eval.with_name(f"eval_{self.encoder}.json")


def _encoder(ckpt_path: Path, encoder: str, seed: int) -> Pretrained:
    """The ``encoder`` backbone of a checkpoint; ``untrained``: its architecture at random init, seeded, with the
    checkpoint attached (its stored configuration names the data)."""
    if encoder not in ENCODERS:
        raise PCLError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
    pre = from_checkpoint(ckpt_path, "query" if encoder == "untrained" else encoder)
    if encoder == "untrained":
        ckpt = pre.checkpoint
        pre = untrained(pre.arch, pre.stem, pre.image_size, seed, pre.patch_size)
        pre.checkpoint = ckpt
    return pre
