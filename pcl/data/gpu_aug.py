"""Data stage, batched augmentation on the training device (``--gpu-aug``) with kornia.

The decoded images (``ImageCache``, one size) sit on the device as one ``(N, 3, H, W)`` uint8 tensor; a
batch is an index gather plus, for each crop group of the view spec, one call of the group's recipe rendered
for kornia (:mod:`pcl.data.augment`: RandomResizedCrop, ColorJitter, RandomGrayscale, RandomGaussianBlur,
RandomHorizontalFlip with per-sample random parameters) on ``count`` copies of the batch. No worker
processes, no PIL, no host-to-device copy of images per step. How the kornia views differ from the PIL ones
is said in :mod:`pcl.data.augment`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pcl.data.augment import AugConfig, build_recipe
from pcl.data.sampler import ResumableSampler
from pcl.data.views import ViewSpec


class GpuAugLoader:
    """Drop-in for the training ``DataLoader``: yields ``(views, index)`` with the views made on ``device``.

    ``images``: ``(N, 3, H, W)`` uint8. ``spec``: the views of a batch (default ``cfg.view_spec()``, two global
    crops); ``views`` is a list of ``spec.num_views`` tensors, entry ``i`` ``(B, 3, S_i, S_i)``. Batches follow
    the same ``ResumableSampler`` as ``pcl.data.datasets.train_loader`` (shuffled by seed and epoch, full
    batches only, ``sampler.skip`` for a mid-epoch resume); call ``sampler.set_epoch(e)`` each epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        cfg: AugConfig,
        batch_size: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        spec: ViewSpec | None = None,
    ) -> None:
        self.images = images.to(device)
        self.batch_size, self.device = batch_size, device
        self.sampler = ResumableSampler(
            range(images.shape[0]), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.spec = spec or cfg.view_spec()
        self.spec.validate()
        self.augs = [build_recipe(cfg, g).kornia().to(device) for g in self.spec.groups]  # one per crop group

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    @torch.no_grad()
    def views(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The spec's random views of the images ``index`` ``(B,)``: entry ``i`` ``(B, 3, S_i, S_i)``; one kornia
        call per crop group, on its ``count`` copies of the batch stacked ``(count * B, 3, H, W)``."""
        x = self.images[index.to(self.device)].float().div_(255.0)
        out: list[torch.Tensor] = []
        for group, aug in zip(self.spec.groups, self.augs, strict=True):
            out += aug(x.repeat(group.count, 1, 1, 1) if group.count > 1 else x).chunk(group.count)
        return out

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        for b in range(order.numel() // self.batch_size):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.views(index), index
