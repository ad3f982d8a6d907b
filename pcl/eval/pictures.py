"""Pictures of what a run learned (``tools/visualize.py``): feature map, cluster gallery, retrieval grid.

All three show the run's train images (the set its clusters index) under the eval view:

- ``feature_map.png``: t-SNE (UMAP with ``umap-learn``) of the frozen backbone features of a seeded subsample,
  coloured by class when the data has labels, else by the last E-step's cluster of one granularity;
- ``cluster_gallery.png``: the largest (or most concentrated) prototypes of that granularity, one row each, with
  their members nearest the prototype in the E-step's embedding space (the kept E-step features of that epoch
  when the run has them, ``--keep-features``; else the checkpoint's momentum encoder, which trained on after the
  E-step: the ranking is then approximate);
- ``retrieval.png``: seeded (or given) query images and their top-M cosine neighbours in backbone feature space.

``pictures.json`` records the settings, the gallery rows and the retrieval neighbours (dataset indices and file
paths). Epochs are 0-based everywhere, as on the training's ``epoch N:`` lines: the E-step "of epoch e" ran before
epoch e; a checkpoint holding ``epoch = n`` is the encoder "after epoch n - 1".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from pcl.analysis import render
from pcl.analysis.cluster_metrics import has_classes
from pcl.analysis.embedding import GALLERY_SORTS, embed_2d, gallery_rows, pick_queries, retrieve, subsample
from pcl.config import Config, stored_config
from pcl.data.datasets import IndexedImages, eval_loader, eval_transform
from pcl.data.decode import load_rgb
from pcl.data.sources import resolve_data
from pcl.estep.clustering import ClusterResult, Granularity
from pcl.estep.feature_store import FeatureStore
from pcl.eval.pretrained import Pretrained, from_checkpoint, from_exported
from pcl.eval.run_source import last_cluster_result, run_paths
from pcl.methods.pcl import PCL
from pcl.model.features import extract
from pcl.run.checkpoint import load_checkpoint
from pcl.run.run_dir import RunDir
from pcl.utils.atomic import write_atomic
from pcl.utils.distributed import pick_device
from pcl.utils.errors import PCLError

PICTURES = ("map", "gallery", "retrieval")
COLOUR_BY = ("auto", "class", "cluster")
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


@dataclass
class PicturesConfig:
    """What ``tools/visualize.py`` draws and from what; defaults are its command line's."""

    run: Path | None = None  # run directory or checkpoint file (None: --exported with --data only)
    out: Path = Path("pictures")
    data: str | None = None  # default: the run's own data
    checkpoint: Path | None = None  # default: the run's checkpoints/last.pth
    exported: Path | None = None  # a tools/export_backbone.py backbone for the map and the retrieval
    arch: str | None = None  # for --exported (default: the run's)
    stem: str | None = None
    image_size: int | None = None
    pictures: tuple[str, ...] = ()  # () = every picture the run allows
    granularity: int | None = None  # k of the clusters to colour / show (default: the finest)
    colour_by: str = "auto"
    max_points: int = 2000
    map_method: str = "auto"
    clusters: int = 8
    members: int = 8
    gallery_sort: str = "size"
    queries: int = 6
    query_paths: list[Path] = field(default_factory=list)
    top: int = 8
    seed: int = 0
    device: str = "auto"
    batch_size: int = 256
    workers: int = 2


@dataclass
class TrainImages:
    """The run's train images under the eval view; ``labels (N,)`` and ``classes`` when it has classes."""

    dataset: IndexedImages
    labels: np.ndarray | None
    classes: list[str] | None

    @property
    def paths(self) -> list[str]:
        """File of each image, in dataset order."""
        return [p for p, _ in self.dataset.samples]


def train_images(data: str | None, image_size: int, labels: str = "auto") -> TrainImages:
    """The training images of ``data`` (None = bundled subset; any ``resolve_data`` form), in E-step order."""
    ds = IndexedImages(resolve_data(data, labels).train, eval_transform(image_size))
    labelled = ds.labeled and has_classes(ds.targets)
    return TrainImages(ds, np.asarray(ds.targets) if labelled else None, list(ds.classes) if labelled else None)


def _granularity(result: ClusterResult, k: int | None) -> Granularity:
    if k is None:
        return max(result.levels, key=lambda g: g.k)
    for g in result.levels:
        if g.k == k:
            return g
    raise PCLError(f"--granularity {k}: the run's clusters have k = {', '.join(str(g.k) for g in result.levels)}")


def _kept_store(cfg: Config, run: RunDir | None, epoch: int) -> list[FeatureStore]:
    """The complete kept E-step stores of ``epoch`` (every rank's), or [] when the run did not keep them."""
    base = cfg.estep.feature_dir
    if run is not None and (base is None or Path(base) == cfg.run_dir.features):  # the default: follow a moved run
        base = run.features
    folder = Path(base) / f"epoch{epoch:04d}" if base is not None else None
    if folder is None or not folder.is_dir():
        return []
    stores = [FeatureStore(folder, m.name.removesuffix(".done")) for m in sorted(folder.glob("*.done"))]
    return stores


def _cluster_chunks(
    ckpt: dict, cfg: Config, run: RunDir | None, epoch: int, images: TrainImages, dev: torch.device, a: PicturesConfig
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The E-step embedding of every train image as ``[(indices, features)]`` and a line saying where from."""
    stores = _kept_store(cfg, run, epoch)
    if stores and sum(len(s) for s in stores) == len(images.dataset):
        return [c for s in stores for c in s.shards()], f"kept E-step features of epoch {epoch}"  # its start
    model = PCL.from_config(cfg, bn_splits=1)
    model.load_state_dict(ckpt["model"])
    model.to(dev).eval()
    feats = extract(model.cluster_features, eval_loader(images.dataset, a.batch_size, a.workers), dev, desc="cluster")
    trained = int(ckpt.get("epoch", 0)) - 1  # the checkpoint's "epoch" counts finished epochs: the last is one less
    note = (
        f"momentum encoder after epoch {trained} (the checkpoint), not the E-step's at the start of epoch {epoch}: "
        "ranking approximate"
    )
    return [(np.arange(len(feats)), feats.cpu().numpy())], note


def _backbone(a: PicturesConfig, ckpt_path: Path | None, cfg: Config | None) -> Pretrained:
    if a.exported is None:
        assert ckpt_path is not None
        return from_checkpoint(ckpt_path)
    arch = a.arch or (cfg.model.arch if cfg else None)
    stem = a.stem or (cfg.model.stem if cfg else None)
    size = a.image_size or (cfg.data.aug.image_size if cfg else None)
    return from_exported(a.exported, arch, stem, size, cfg.model.patch_size if cfg else None)


def _query_features(pre: Pretrained, paths: list[Path], dev: torch.device) -> torch.Tensor:
    """Backbone features ``(Q, D)`` of image files under the eval view."""
    tf = eval_transform(pre.image_size)
    x = torch.stack([tf(load_rgb(str(p))) for p in paths]).to(dev)
    with torch.no_grad():
        return pre.backbone.to(dev)(x).float()


def _check(a: PicturesConfig) -> None:
    """The settings that need no file: picture names, choices, query files."""
    for name in a.pictures:
        if name not in PICTURES:
            raise PCLError(f"unknown picture {name!r}; choose from {', '.join(PICTURES)}")
    if a.gallery_sort not in GALLERY_SORTS:
        raise PCLError(f"--gallery-sort must be one of {', '.join(GALLERY_SORTS)}")
    if a.colour_by not in COLOUR_BY:
        raise PCLError(f"--color-by must be one of {', '.join(COLOUR_BY)}")
    for p in a.query_paths:
        if not p.is_file():
            raise PCLError(f"--query {p} does not exist")


def _open_run(a: PicturesConfig) -> tuple[RunDir | None, Path | None, dict | None, Config | None]:
    """The run, its checkpoint file, the checkpoint and its stored configuration (all None for ``--exported``
    without a run)."""
    if a.run is None:
        if a.exported is None:
            raise PCLError("give a run directory (or a checkpoint file), or --exported with --data")
        if a.data is None:
            raise PCLError("--exported without a run directory needs --data")
        return None, None, None, None
    if not a.run.exists():
        raise PCLError(f"{a.run} does not exist")
    run, ckpt_path = run_paths(a.run)
    if a.checkpoint is not None:
        ckpt_path = a.checkpoint
        if not ckpt_path.is_file():
            raise PCLError(f"--checkpoint {ckpt_path} does not exist")
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict):
        raise PCLError(f"{ckpt_path} is not a PCL training checkpoint")
    return run, ckpt_path, ckpt, stored_config(ckpt, ckpt_path)


@dataclass
class Scene:
    """What every picture is drawn from: the settings, the backbone, the run's train images and clusters (the
    ``level`` of ``--granularity``), and ``info``, the content of ``pictures.json`` being written."""

    a: PicturesConfig
    pre: Pretrained
    images: TrainImages
    data: str | None
    run: RunDir | None
    ckpt: dict | None
    cfg: Config | None
    result: ClusterResult | None
    level: Granularity | None
    device: torch.device
    info: dict

    @cached_property
    def features(self) -> np.ndarray:
        """Backbone features ``(N, D)`` of the train images (eval view), extracted once for map and retrieval."""
        net = self.pre.backbone.to(self.device).eval()
        loader = eval_loader(self.images.dataset, self.a.batch_size, self.a.workers)
        return extract(net, loader, self.device, desc="backbone").cpu().numpy()


def _check_clusters(a: PicturesConfig, result: ClusterResult | None, images: TrainImages, data: str | None) -> None:
    """Refuse the settings that need clusters or labels the run does not have."""
    if "gallery" in a.pictures and result is None:
        raise PCLError(
            f"{a.run or a.exported} has no cluster result (a MoCo v2 run, or stopped before the first "
            "E-step): no cluster gallery; ask for --pictures map,retrieval"
        )
    if a.colour_by == "cluster" and result is None:
        raise PCLError("--color-by cluster: the run has no cluster result")
    if a.colour_by == "class" and images.labels is None:
        raise PCLError(f"--color-by class: {data} has no class labels")
    if a.granularity is not None and result is None:
        raise PCLError("--granularity: the run has no cluster result")


def open_scene(a: PicturesConfig) -> Scene:
    """The shared set-up of every picture: check the settings, load the run and the backbone, find the clusters."""
    _check(a)
    run, ckpt_path, ckpt, cfg = _open_run(a)
    pre = _backbone(a, ckpt_path, cfg)
    data = a.data if a.data is not None else cfg.data.root  # type: ignore[union-attr]
    images = train_images(data, pre.image_size, cfg.data.labels if cfg is not None and a.data is None else "auto")
    n = len(images.dataset)
    result = last_cluster_result(run, ckpt) if ckpt is not None else None
    if result is not None and result.levels[0].im2cluster.numel() != n:
        raise PCLError(f"the run's clusters cover {result.levels[0].im2cluster.numel()} images but {data} has {n}")
    _check_clusters(a, result, images, data)
    level = _granularity(result, a.granularity) if result is not None else None
    info: dict = {"source": pre.source, "data": data, "images": n, "written": [], "notes": []}
    if result is None:
        info["notes"].append("no cluster result (MoCo v2 run or no E-step yet): feature map and retrieval only")
    return Scene(a, pre, images, data, run, ckpt, cfg, result, level, pick_device(a.device), info)


def draw_map(scene: Scene) -> None:
    """``feature_map.png``: the 2-D map of a seeded subsample, coloured by class, else by cluster."""
    a, images, level = scene.a, scene.images, scene.level
    n = len(images.dataset)
    idx = subsample(n, a.max_points, a.seed)
    xy, method = embed_2d(scene.features[idx], a.map_method, a.seed)
    if images.labels is not None and a.colour_by != "cluster":
        ids, names, what = images.labels[idx], images.classes, "class"
    elif level is not None:
        ids, names, what = level.im2cluster.numpy()[idx], None, f"cluster (k={level.k})"
    else:
        ids, names, what = None, None, "no labels, no clusters"
    after = f" after epoch {int(scene.ckpt['epoch']) - 1}" if scene.ckpt and "epoch" in scene.ckpt else ""
    title = f"{METHOD_NAMES[method]} of backbone features{after}, {len(idx)} of {n} images, coloured by {what}"
    thumbs = render.dataset_thumbs(images.dataset) if images.labels is None or a.colour_by == "cluster" else None
    fig = render.feature_map(xy, ids, names, title, what, thumbs, idx)
    scene.info["written"].append(str(render.save(fig, a.out / "feature_map.png")))
    scene.info["map"] = {"method": method, "points": len(idx), "colour_by": what}


def draw_gallery(scene: Scene) -> None:
    """``cluster_gallery.png``: the largest (or most concentrated) clusters, members nearest the prototype first."""
    a, level, result = scene.a, scene.level, scene.result
    if level is None or result is None:
        return
    assert scene.ckpt is not None and scene.cfg is not None
    chunks, where = _cluster_chunks(scene.ckpt, scene.cfg, scene.run, result.epoch, scene.images, scene.device, a)
    centroids, phi = level.centroids.numpy(), level.concentration.numpy()
    rows = gallery_rows(chunks, level.im2cluster.numpy(), centroids, phi, a.clusters, a.members, a.gallery_sort)
    order = "largest" if a.gallery_sort == "size" else "most concentrated (smallest φ)"
    what = f"{len(rows)} {order} clusters, members nearest first"
    title = f"E-step at the start of epoch {result.epoch}, k={level.k}: {what}"
    fig = render.gallery(rows, render.dataset_thumbs(scene.images.dataset), a.members, title)
    paths = scene.images.paths
    scene.info["written"].append(str(render.save(fig, a.out / "cluster_gallery.png")))
    scene.info["gallery"] = {
        "epoch": result.epoch,
        "k": level.k,
        "sort": a.gallery_sort,
        "features": where,
        "rows": [
            {"cluster": r.cluster, "size": r.size, "phi": r.phi, "members": r.members.tolist(),
             "member_paths": [paths[int(i)] for i in r.members], "distances": r.distances.tolist()}
            for r in rows
        ],
    }  # fmt: skip
    scene.info["notes"].append(f"gallery members ranked with the {where}")


def draw_retrieval(scene: Scene) -> None:
    """``retrieval.png``: seeded (or given) queries and their nearest train images in backbone feature space."""
    a, images, feats = scene.a, scene.images, scene.features
    n = len(images.dataset)
    if a.query_paths:
        qfeats = _query_features(scene.pre, a.query_paths, scene.device).cpu().numpy()
        by_path = {str(Path(p).resolve()): i for i, p in enumerate(images.paths)}
        exclude = np.array([by_path.get(str(p.resolve()), -1) for p in a.query_paths])
        shown = exclude
    else:
        exclude = pick_queries(n, a.queries, a.seed)
        qfeats, shown = feats[exclude], exclude
    nbrs, sims = retrieve(feats, qfeats, a.top, exclude)
    thumbs = render.dataset_thumbs(images.dataset)
    extra = {-1 - j: render.file_thumb(p, scene.pre.image_size) for j, p in enumerate(a.query_paths)}
    shown = np.array([i if i >= 0 else -1 - j for j, i in enumerate(shown)])

    def thumb(i: int) -> np.ndarray:
        return extra[i] if i < 0 else thumbs(i)

    names = None
    if images.labels is not None:
        labels, classes = images.labels, images.classes

        def names(i: int) -> str:
            return "?" if i < 0 else classes[labels[i]]

    title = f"Nearest neighbours (cosine, backbone features) among {n} train images"
    fig = render.retrieval(shown, nbrs, sims, thumb, title, names)
    scene.info["written"].append(str(render.save(fig, a.out / "retrieval.png")))
    paths = images.paths
    scene.info["retrieval"] = {
        "queries": [str(p) for p in a.query_paths] or [int(q) for q in shown],
        "query_paths": [str(p) for p in a.query_paths] or [paths[int(q)] for q in shown],
        "neighbours": nbrs.tolist(),
        "neighbour_paths": [[paths[int(i)] for i in row] for row in nbrs],
        "similarities": sims.tolist(),
    }


DRAW = {"map": draw_map, "gallery": draw_gallery, "retrieval": draw_retrieval}  # in PICTURES order


def make_pictures(a: PicturesConfig) -> dict:
    """Write the asked (default: every possible) pictures to ``a.out``; returns ``pictures.json``'s content."""
    scene = open_scene(a)
    a.out.mkdir(parents=True, exist_ok=True)
    for name in PICTURES:
        if name in (a.pictures or PICTURES):
            DRAW[name](scene)
    text = json.dumps(scene.info, indent=2).encode()
    write_atomic(a.out / "pictures.json", lambda f: f.write(text), "pictures summary")
    return scene.info
