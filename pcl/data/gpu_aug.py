"""Data stage, batched augmentation on the training device (``--gpu-aug``) with kornia.

The decoded images (``ImageCache``, one size) sit on the device as one ``(N, 3, H, W)`` uint8 tensor; a
batch is an index gather plus kornia's RandomResizedCrop, ColorJitter, RandomGrayscale, RandomGaussianBlur
and RandomHorizontalFlip with per-sample random parameters, twice (query and key view). No worker
processes, no PIL, no host-to-device copy of images per step.

Differences to the PIL pipeline (same parameter distributions; tested on crop scales, output ranges):
ColorJitter's order of the four adjustments is drawn per batch rather than per image; resizing is kornia's
bilinear interpolation (no antialiasing) rather than PIL's; blur uses a Gaussian kernel of about 10 % of the
image size (odd, >= 3) instead of PIL's radius-based filter.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from pcl.data.datasets import IMAGENET_MEAN, IMAGENET_STD, AugConfig
from pcl.data.sampler import ResumableSampler


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian kernel of about 10 % of the image size (SimCLR), at least 3."""
    k = max(3, int(0.1 * image_size))
    return k if k % 2 else k + 1


def kornia_train_aug(cfg: AugConfig) -> nn.Module:
    """``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, S, S)`` normalised random views, ``S = cfg.image_size``.

    The same recipe as ``pcl.data.datasets.train_transform`` (MoCo v2 with ``aug_plus``, else MoCo v1).
    """
    import kornia.augmentation as K

    cfg = cfg.resolved()
    s, j = cfg.image_size, cfg.color_jitter
    crop = K.RandomResizedCrop((s, s), scale=(cfg.crop_min, 1.0))
    if cfg.aug_plus:
        ops = [
            crop,
            K.ColorJitter(j, j, j, j / 4, p=cfg.color_jitter_prob),
            K.RandomGrayscale(p=cfg.grayscale_prob),
            K.RandomGaussianBlur(blur_kernel_size(s), (0.1, 2.0), p=cfg.blur_prob),
        ]
    else:
        ops = [crop, K.RandomGrayscale(p=cfg.grayscale_prob), K.ColorJitter(j, j, j, j, p=1.0)]
    ops = [op for op in ops if getattr(op, "p", 1.0) > 0]  # p = 0 ops (e.g. blur at 32 px) cost nothing
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return nn.Sequential(*ops, K.RandomHorizontalFlip(), K.Normalize(mean, std))


class GpuAugLoader:
    """Drop-in for the training ``DataLoader``: yields ``((im_q, im_k), index)`` with views made on ``device``.

    ``images``: ``(N, 3, H, W)`` uint8. Batches follow the same ``ResumableSampler`` as ``pcl.data.datasets.train_loader``
    (shuffled by seed and epoch, full batches only, ``sampler.skip`` for a mid-epoch resume); call
    ``sampler.set_epoch(e)`` each epoch.
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
    ) -> None:
        self.images = images.to(device)
        self.batch_size, self.device = batch_size, device
        self.sampler = ResumableSampler(
            range(images.shape[0]), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.aug = kornia_train_aug(cfg).to(device)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    @torch.no_grad()
    def views(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent random views ``(B, 3, S, S)`` of the images ``index`` ``(B,)``."""
        x = self.images[index.to(self.device)].float().div_(255.0)
        return self.aug(x), self.aug(x)

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        for b in range(order.numel() // self.batch_size):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.views(index), index
