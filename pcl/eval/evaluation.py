"""Evaluation of a trained encoder: kNN, linear probe, low-shot SVM, fine-tuning, clustering accuracy, and the
cluster quality of a run.

One feature extraction (``pcl.model.features.extract``, center crop, query backbone, raw average-pooled features)
serves kNN (on the L2-normalised features), the ``features`` linear probe, the low-shot SVMs and k-means.
``evaluate_run`` is the whole evaluation of a run directory (``tools/evaluate.py``); it writes
``RUN_DIR/eval.json``::

    {"knn_top1": float|null, "linear_top1": float|null, "linear_top5": float|null,
     "cluster": {"<K>": {"nmi": float, "ami": float, "purity": float}, ...},
     "kmeans": {"<K>": {"acc", "acc_std", "nmi", "nmi_std", "ari", ..., "ami", ..., "purity", ..., "runs"}, ...},
     "lowshot": {"<k>": {"top1", "top1_std", "map", "map_std", "cost_selection", "draws"}, ...},     (when run)
     "finetune": {"<percent>": {"top1", "top5", "n_train", "subset_file", "epoch_loss"}, ...},      (when run)
     "settings": {...}}

``cluster`` scores the run's own last E-step clusters (PCL runs only, and only on the data the run was trained
on); ``kmeans`` clusters the frozen backbone features of the train split with the E-step's faiss settings (k = the
number of classes, plus any ``--kmeans K``), so that any checkpoint, MoCo v2's included, gets comparable figures.
Accuracies are in percent; ACC / NMI / ARI / AMI / purity in [0, 1] (ARI and AMI can dip slightly below 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms

from pcl.analysis.cluster_metrics import cluster_scores, has_classes, kmeans_scores
from pcl.analysis.knn import knn_top1
from pcl.config import stored_config
from pcl.data.datasets import IMAGENET_MEAN, IMAGENET_STD, IndexedImages, eval_loader, eval_transform
from pcl.data.sources import resolve_data
from pcl.estep.clustering import ClusterResult
from pcl.eval.finetune import FinetuneConfig, balanced_subset, percent_key, write_subset
from pcl.eval.finetune import finetune as run_finetune
from pcl.eval.linear_official import OfficialConfig, train_official
from pcl.eval.linear_probe import DEFAULT_WDS, ProbeResult, linear_probe
from pcl.eval.lowshot import OFFICIAL_COST, LowShotConfig, lowshot_svm
from pcl.eval.pretrained import Pretrained, from_checkpoint, untrained
from pcl.model.features import extract
from pcl.run.run_dir import RunDir
from pcl.utils.atomic import write_atomic
from pcl.utils.distributed import pick_device as resolve_device
from pcl.utils.errors import PCLError

ENCODERS = ("query", "key", "untrained")  # which backbone of a checkpoint evaluate_run measures


@dataclass
class FrozenFeatures:
    """Raw backbone features of the train ``(N, D)`` and test ``(M, D)`` splits with their labels."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def eval_sets(
    data: str | None, image_size: int, labels: str = "auto", val: str | None = None
) -> tuple[IndexedImages, IndexedImages]:
    """Train and eval images of ``data`` (None = bundled subset; any ``sources.resolve_data`` form, ``val`` as
    its eval set) under the center-crop eval transform; both need class labels."""
    source = resolve_data(data, labels, val)
    reason = source.knn_off_reason()
    if reason is not None:
        raise PCLError(f"cannot evaluate on {data or 'the bundled subset'}: {reason}")
    tf = eval_transform(image_size)
    return IndexedImages(source.train, tf), IndexedImages(source.eval, tf)


def _cache_file(cache_dir: Path, pre: Pretrained, train: IndexedImages, test: IndexedImages) -> Path:
    key = json.dumps([pre.ident, pre.image_size, train.root, len(train), test.root, len(test)])
    return cache_dir / f"features-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def frozen_features(
    pre: Pretrained,
    data: str | None,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 2,
    cache_dir: Path | None = None,
    show: bool = True,
    labels: str = "auto",
    val: str | None = None,
) -> FrozenFeatures:
    """Extract (or load from ``cache_dir``) the backbone features of both splits once, on ``device``."""
    train, test = eval_sets(data, pre.image_size, labels, val)
    cache = _cache_file(cache_dir, pre, train, test) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        t = torch.load(cache, map_location=device, weights_only=True)
        return FrozenFeatures(t["train"], t["train_labels"], t["test"], t["test_labels"], len(train.classes))
    net = pre.backbone.to(device).eval()
    feats = FrozenFeatures(
        extract(net, eval_loader(train, batch_size, workers), device, desc="train features", show=show),
        torch.tensor(train.targets, device=device),
        extract(net, eval_loader(test, batch_size, workers), device, desc="test features", show=show),
        torch.tensor(test.targets, device=device),
        len(train.classes),
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu() for k, v in asdict(feats).items() if isinstance(v, torch.Tensor)}
        write_atomic(cache, lambda f: torch.save(state, f), "feature cache")
    return feats


def knn_accuracy(feats: FrozenFeatures, k: int = 200, t: float = 0.1) -> float:
    """Weighted kNN top-1 (%) on the L2-normalised features (train split as the bank)."""
    bank, query = F.normalize(feats.train, dim=1), F.normalize(feats.test, dim=1)
    return knn_top1(bank, feats.train_labels, query, feats.test_labels, feats.num_classes, k, t)


def linear_features(
    feats: FrozenFeatures,
    wds: tuple[float, ...] = DEFAULT_WDS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
) -> ProbeResult:
    """The ``features`` linear protocol on the cached features."""
    return linear_probe(
        feats.train,
        feats.train_labels,
        feats.test,
        feats.test_labels,
        feats.num_classes,
        wds,
        val_fraction,
        seed,
        max_iter,
    )


def linear_train_transform(image_size: int) -> transforms.Compose:
    """The official linear-probe training view: RandomResizedCrop (scale 0.08-1) + horizontal flip."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def linear_official(
    pre: Pretrained,
    data: str | None,
    cfg: OfficialConfig,
    device: torch.device,
    workers: int = 2,
    seed: int = 0,
    show: bool = True,
    labels: str = "auto",
    val: str | None = None,
) -> ProbeResult:
    """The ``official`` linear protocol: augmented views (RandomResizedCrop + flip), frozen backbone in eval mode."""
    train, test = eval_sets(data, pre.image_size, labels, val)
    train_aug = train.with_transform(linear_train_transform(pre.image_size))
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        train_aug,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        generator=g,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(seed)
    return train_official(
        pre.backbone,
        pre.feat_dim,
        len(train.classes),
        loader,
        torch.tensor(train.targets),
        eval_loader(test, cfg.batch_size, workers),
        torch.tensor(test.targets),
        cfg,
        device,
        show=show,
    )


# ---------------------------------------------------------------------- one run directory


def _last_cluster_result(run: RunDir | None, ckpt: dict | None) -> ClusterResult | None:
    """The newest of the checkpoint's ``cluster_result`` and the ``RUN_DIR/clusters/epoch_*.pth`` written up to
    the checkpoint's epoch (or None)."""
    found: list[ClusterResult] = []
    if ckpt is not None and ckpt.get("cluster_result") is not None:
        found.append(ClusterResult.from_state_dict(ckpt["cluster_result"]))
    done = ckpt.get("epoch") if ckpt is not None else None  # completed epochs: later clusters are not its own
    files = sorted(run.clusters.glob("epoch_*.pth")) if run is not None else []
    files = [f for f in files if done is None or int(f.stem.removeprefix("epoch_")) < int(done)]
    if files:
        try:
            found.append(ClusterResult.from_state_dict(torch.load(files[-1], map_location="cpu", weights_only=True)))
        except Exception as e:
            raise PCLError(f"cluster result {files[-1]} cannot be read: {e}") from None
    return max(found, key=lambda r: r.epoch) if found else None


def _run_paths(target: Path) -> tuple[RunDir | None, Path]:
    """``RUN_DIR`` -> (its RunDir, its last checkpoint); a checkpoint file -> (its run if any, the file)."""
    if target.is_dir():
        run = RunDir(target)
        if not run.last.is_file():
            raise PCLError(f"{target} has no {run.last.relative_to(target)}: not a started training run")
        return run, run.last
    if not target.exists():
        raise PCLError(f"{target} does not exist")
    run = RunDir(target.parent.parent)
    return (run if run.checkpoints == target.parent else None), target


def data_identity(train: IndexedImages) -> dict:
    """What identifies a train split: its resolved folder, its number of images and the first 16 hex digits of the
    SHA-1 of its sorted relative file paths."""
    root = Path(train.root).resolve()
    rel = sorted(os.path.relpath(p, root) for p, _ in train.samples)
    digest = hashlib.sha1("\n".join(rel).encode()).hexdigest()[:16]
    return {"root": str(root), "n_files": len(rel), "paths_sha1": digest}


def same_train_folder(data: str | None, own: str | None) -> bool:
    """True when ``data`` and the run's recorded data root ``own`` (None = bundled subset) name the same train
    folder; a recorded root that no longer exists is never the same."""
    try:
        return resolve_data(data).train.where.resolve() == resolve_data(own).train.where.resolve()
    except PCLError:
        return False


def _lowshot_block(feats: FrozenFeatures, cfg: LowShotConfig) -> tuple[dict, dict]:
    if not has_classes(feats.train_labels):
        raise PCLError("--lowshot needs class labels: the train split has a single class")
    result = lowshot_svm(feats.train, feats.train_labels, feats.test, feats.test_labels, cfg)
    settings = {
        **asdict(cfg),
        "features": "query backbone, L2-normalised",
        "svm": "one-vs-rest LinearSVC, squared hinge, class_weight {1: 2, -1: 1}, max_iter 2000",
        "cost": f"cross-validated in the k-shot sample (k >= 2), else the official fixed {OFFICIAL_COST}",
    }
    return result, settings


def _finetune_block(
    pre: Pretrained,
    data: str | None,
    cfg: FinetuneConfig,
    device: torch.device,
    subsets: Path,
    workers: int,
    show: bool,
) -> tuple[dict, dict]:
    train, test = eval_sets(data, pre.image_size)
    if not has_classes(train.targets):
        raise PCLError("--finetune needs class labels: the train split has a single class")
    train_aug = train.with_transform(linear_train_transform(pre.image_size))
    out = {}
    for p in cfg.percents:
        idx = balanced_subset(np.array(train.targets), p, cfg.seed)
        subset_file = subsets / f"{percent_key(p)}percent_seed{cfg.seed}.txt"
        write_subset(subset_file, idx, train)
        res = run_finetune(pre.backbone, pre.feat_dim, train_aug, idx, test, cfg, device, workers, show)
        out[percent_key(p)] = {
            "top1": res.top1,
            "top5": res.top5,
            "n_train": res.n_train,
            "subset_file": str(subset_file),
            "epoch_loss": res.epoch_loss,
        }
    return out, {**asdict(cfg), "schedule": "cosine over all steps", "augmentation": "RandomResizedCrop + flip"}


def evaluate_run(
    run_dir: Path,
    data: str | None = None,
    device: str = "auto",
    knn: bool = True,
    linear: bool = True,
    clusters: bool = True,
    kmeans: tuple[int, ...] | None = None,
    knn_k: int = 200,
    knn_t: float = 0.1,
    wds: tuple[float, ...] = DEFAULT_WDS,
    val_fraction: float = 0.2,
    max_iter: int = 200,
    seed: int = 0,
    batch_size: int = 256,
    workers: int = 2,
    cache_dir: Path | None = None,
    out: Path | None = None,
    show: bool = True,
    lowshot: LowShotConfig | None = None,
    finetune: FinetuneConfig | None = None,
    kmeans_restarts: int = 5,
    encoder: str = "query",
) -> dict:
    """Any subset of the protocols on a run (``run_dir``) or on a checkpoint file; None / False = not run.

    ``kmeans``: extra k for the clustering-accuracy protocol, which always uses k = number of classes (``()``: that
    k only). ``data`` defaults to the data the run was trained on (the checkpoint's stored configuration); the
    run's own E-step clusters are scored only on that data. Writes the result to ``out`` (default
    ``RUN_DIR/eval.json`` for the run's last checkpoint on the run's own data; otherwise only when given) and
    returns it (shape in the module docstring).

    ``encoder``: ``query`` (the default), ``key`` (the momentum encoder's backbone) or ``untrained`` (the run's
    architecture at random initialisation, seeded by ``seed``: the reference every trained encoder must beat).
    The latter two are written to ``RUN_DIR/eval_{encoder}.json`` by default and never score the run's clusters.
    """
    t0 = time.time()
    run, ckpt_path = _run_paths(Path(run_dir))
    if encoder not in ENCODERS:
        raise PCLError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
    pre = from_checkpoint(ckpt_path, "query" if encoder == "untrained" else encoder)
    if encoder == "untrained":
        ckpt = pre.checkpoint
        pre = untrained(pre.arch, pre.stem, pre.image_size, seed)
        pre.checkpoint = ckpt  # its stored configuration names the data
    stored = stored_config(pre.checkpoint, ckpt_path).data
    own_data = stored.root
    own = data is None or same_train_folder(data, own_data)
    labels, val = (stored.labels, stored.val) if data is None else ("auto", None)
    if data is None:  # the data the run was trained on
        data = own_data
    dev = resolve_device(device)
    result: dict = {"knn_top1": None, "linear_top1": None, "linear_top5": None, "cluster": {}, "kmeans": {}}
    settings: dict = {**pre.settings(), "checkpoint": str(ckpt_path), "data": data, "device": str(dev)}
    settings["encoder"] = encoder
    features = f"{encoder} backbone, L2-normalised"
    source = resolve_data(data, labels, val)
    settings["data_identity"] = data_identity(IndexedImages(source.train))
    no_labels = source.knn_off_reason()
    if no_labels is not None:  # the figures that need labels stay None ("-")
        settings["no_labels"] = no_labels
        knn = linear = False
        kmeans = lowshot = finetune = None
    if knn or linear or kmeans is not None or lowshot is not None:
        feats = frozen_features(pre, data, dev, batch_size, workers, cache_dir, show, labels, val)
        settings.update(n_train=int(feats.train.shape[0]), n_test=int(feats.test.shape[0]))
        settings["num_classes"] = feats.num_classes
        if knn:
            result["knn_top1"] = knn_accuracy(feats, knn_k, knn_t)
            settings["knn"] = {"k": knn_k, "t": knn_t, "features": features}
        if linear:
            probe = linear_features(feats, wds, val_fraction, seed, max_iter)
            result["linear_top1"], result["linear_top5"] = probe.top1, probe.top5
            settings["linear"] = {
                "protocol": "features",
                "wd_grid": list(wds),
                "wd": probe.wd,
                "val_fraction": val_fraction,
                "val_top1": {str(k): v for k, v in probe.val_top1.items()},
                "max_iter": max_iter,
                "seed": seed,
            }
        if kmeans is not None:
            if not has_classes(feats.train_labels):
                raise PCLError("--kmeans needs class labels: the train split has a single class")
            ks = tuple(sorted({feats.num_classes, *kmeans}))
            result["kmeans"] = kmeans_scores(feats.train, feats.train_labels, ks, seed, kmeans_restarts)
            settings["kmeans"] = {
                "features": f"{features}, train split",
                "seed": seed,
                "restarts": kmeans_restarts,
                "k_classes": feats.num_classes,
                "faiss": "official E-step settings (niter 20, nredo 5), seeds seed .. seed + restarts - 1",
            }
        if lowshot is not None:
            result["lowshot"], settings["lowshot"] = _lowshot_block(feats, lowshot)
    own_ckpt = run is not None and ckpt_path == run.last  # an older checkpoint does not overwrite eval.json
    own_eval = None if run is None else (run.eval if encoder == "query" else run.eval.with_name(f"eval_{encoder}.json"))
    target = out if out is not None else (own_eval if own_ckpt and own else None)
    if finetune is not None:
        subsets = (target.parent if target is not None else ckpt_path.parent) / "finetune"
        result["finetune"], settings["finetune"] = _finetune_block(pre, data, finetune, dev, subsets, workers, show)
    if clusters and encoder == "untrained":
        settings["cluster_skipped"] = "the run's clusters come from its trained encoder, not an untrained one"
    elif clusters and not own:  # the run's clusters index the images it was trained on, not these
        settings["cluster_skipped"] = f"the run's clusters belong to {own_data or 'the bundled subset'}, not {data}"
    elif clusters:
        found = _last_cluster_result(run, pre.checkpoint)
        if found is not None:
            train = source.train
            if len(train) != found.levels[0].im2cluster.numel():
                raise PCLError(
                    f"the cluster result covers {found.levels[0].im2cluster.numel()} images but "
                    f"{train.where} has {len(train)}"
                )
            if train.labels is not None and has_classes(train.labels):
                scores = cluster_scores(found, torch.tensor(train.labels))
                result["cluster"] = {str(k): v for k, v in scores.items()}
            settings["cluster_epoch"] = found.epoch
    settings["seconds"] = round(time.time() - t0, 2)
    result["settings"] = settings
    settings["written"] = None if target is None else str(target)
    if target is None and own_ckpt and not own:
        settings["not_written"] = "the data is not the run's own: its eval.json is kept (use --out FILE)"
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(result, indent=2).encode()
        write_atomic(target, lambda f: f.write(text), "evaluation result")
    return result
