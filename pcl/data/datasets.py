"""Data stage: datasets of resolved images (``sources.resolve_data``) that return indices, transforms, loaders.

Corrupt images: every image is decoded once before training (``--verify-images``); a corrupt file met
later (e.g. one that changed on disk) stops the run with its file name. Nothing is skipped silently.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from pcl.data.augment import IMAGENET_MEAN, IMAGENET_STD, AugConfig, train_transform
from pcl.data.decode import load_rgb
from pcl.data.folder_scan import align_to_train
from pcl.data.image_cache import ImageCache
from pcl.data.sampler import ResumableSampler
from pcl.data.sources import LABEL_MODES, ImageSet, image_set
from pcl.data.views import ViewSpec
from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, flag
from pcl.utils.logs import progress


class IndexedImages(Dataset):
    """The images of an :class:`ImageSet`; items are ``(transformed image, dataset index)``.

    ``samples``: ``[(path, label)]`` (label -1 when unlabeled), ``targets``: the labels, ``classes``: their names
    (empty when unlabeled). ``cache``: an ``ImageCache`` of ``samples``' files (``--cache-images``), shared by
    ``with_transform`` copies.
    """

    cache: ImageCache | None = None

    def __init__(self, images: ImageSet, transform: Callable | None = None) -> None:
        self.root = str(images.where)
        self.samples = images.samples()
        self.targets = [t for _, t in self.samples]
        self.classes = list(images.classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform

    @property
    def labeled(self) -> bool:
        """True when the images have class labels."""
        return bool(self.classes)

    def relabel_like(self, train: IndexedImages, split: str) -> str | None:
        """Use ``train``'s class indices (matched by folder name); returns a warning when the classes differ."""
        self.samples, warning = align_to_train(train.classes, self.classes, self.samples, split)
        self.targets = [t for _, t in self.samples]
        self.classes, self.class_to_idx = list(train.classes), dict(train.class_to_idx)
        return warning

    def with_transform(self, transform: Callable) -> IndexedImages:
        """The same files (no second folder scan) under another transform."""
        other = copy.copy(self)
        other.transform = transform
        return other

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[object, int]:
        sample = self.cache[index] if self.cache is not None else load_rgb(self.samples[index][0])
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, index


class IndexedImageFolder(IndexedImages):
    """:class:`IndexedImages` of a folder of class folders (``root/<class>/...``), labels from the folder names."""

    def __init__(self, root: Path | str, transform: Callable | None = None) -> None:
        super().__init__(image_set(root, labels="folders"), transform)


def verify_images(paths: Sequence[str], workers: int = 8, show: bool = True) -> None:
    """Fully decode every image once; raises ``PCLError`` naming the first corrupt file."""

    def check(path: str) -> str | None:
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as e:
            return f"corrupt or unreadable image file {path}: {e}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(check, paths, chunksize=256)
        for err in progress(results, "verify images", len(paths), show):
            if err is not None:
                raise PCLError(err)


@dataclass
class DataConfig:
    """Where the images come from and how they are loaded (``DATA``, augmentation, workers, verification)."""

    GROUP: ClassVar[str] = "data and augmentation"

    root: str | None = flag(  # None: the bundled subset
        None,
        "data",
        nargs="?",
        help="ROOT/train/<class>/ (+ val/ or test/), ROOT/<class>/, any folder of images (unlabeled), or a .txt / "
        ".csv file list (default: bundled CIFAR-10 subset)",
    )
    aug: AugConfig = field(default_factory=AugConfig)
    labels: str = flag(
        "auto",
        choices=LABEL_MODES,
        help="where labels come from: auto (class folders when DATA holds only >= 2 folders; a CSV's label column), "
        "none (unlabeled), folders (class folders; a list's parent folders)",
    )
    val: str | None = flag(
        None, help="labelled eval set of the kNN monitor, any DATA form (default: DATA's val/ or test/ split)"
    )
    workers: int = flag(2, "-j", "--workers", ge=0, le=1024, help="data-loading processes per rank")
    cache_images: str = flag(
        "auto",
        choices=("auto", "yes", "no"),
        help="decode every image once into RAM (uint8) instead of every epoch; auto: when they fit the budget",
    )
    cache_budget_mb: float = flag(1024.0, ge=0, help="RAM budget of --cache-images, per process")
    gpu_aug: bool = flag(
        False,
        action="store_true",
        help="augment batches on the training device with kornia (needs the image cache and one image size)",
    )
    verify_images: str = flag(
        "auto", choices=("auto", "yes", "no"), help="decode every image before training (auto: when <= 200k images)"
    )
    eval_batch_size: int = flag(256, gt=0, group="run")  # E-step and kNN-monitor loaders

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range (augmentation included)."""
        check_fields(self)
        self.aug.resolved().validate()


def eval_transform(image_size: int) -> transforms.Compose:
    """Deterministic center-crop view, used by the E-step and the kNN monitor."""
    resize = image_size if image_size < 64 else round(image_size / 0.875)
    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class MultiView:
    """The views of one image, one transform each: ``[view_0, ..., view_{V-1}]``, view ``i`` ``(3, S_i, S_i)``.

    The DataLoader's default collate makes a batch of them ``list[Tensor]``, entry ``i`` ``(B, 3, S_i, S_i)``.
    Views are drawn in order from the one torch random stream (the two-view case draws as MoCo's two crops do).
    """

    def __init__(self, per_view: Sequence[Callable]) -> None:
        self.transforms = list(per_view)

    @classmethod
    def from_spec(cls, spec: ViewSpec, cfg: AugConfig) -> MultiView:
        """The views of ``spec``, each group's by its recipe rendered for PIL (``pcl.data.augment.train_transform``)."""
        spec.validate()
        return cls([tf for g in spec.groups for tf in [train_transform(cfg, g)] * g.count])

    def __call__(self, x: Image.Image) -> list[torch.Tensor]:
        """The views of ``x``, view ``i`` ``(3, S_i, S_i)``."""
        return [t(x) for t in self.transforms]


class TwoCrops(MultiView):
    """Two independent random views of one image by ``base``: ``[query_view, key_view]``."""

    def __init__(self, base: Callable) -> None:
        super().__init__([base, base])


def train_loader(
    dataset: Dataset, batch_size: int, workers: int, seed: int, rank: int = 0, world: int = 1
) -> DataLoader:
    """Shuffled loader over full batches; the permutation depends on (seed, epoch) only, for exact resume.

    ``batch_size`` is the per-process batch. Call ``loader.sampler.set_epoch(e)`` each epoch.
    """
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
    )  # no persistent workers: each epoch's worker seeds come from the (checkpointed) torch RNG


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int = 0, world: int = 1) -> DataLoader:
    """In-order loader over this rank's share ``rank::world`` of ``dataset`` (no padding, no duplicates)."""
    part = dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(
        part, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available()
    )
