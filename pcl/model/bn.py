"""BatchNorm running statistics recomputed from data: forward passes only, no labels, no gradient.

A network at random initialisation holds BatchNorm running statistics at their initial values (mean 0, variance
1), which match no real activations; measured in eval mode it is handicapped by them. :func:`recalibrate_bn`
resets them and accumulates the statistics of the given images instead, every image weighted equally (the
momentum of each batch is ``b / (seen + b)``, so the result is the mean of the per-batch statistics weighted by
batch size, whatever the batch order). Only BatchNorm buffers change (``running_mean``, ``running_var``,
``num_batches_tracked``); weights, affine parameters and every other buffer stay; the same images in the same
order give the same buffers. A network without BatchNorm (a ViT with LayerNorm, say) is left as it is, and the
:class:`Recalibration` it returns says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class Recalibration:
    """What :func:`recalibrate_bn` did: BatchNorm layers recomputed and images seen (0 layers: nothing to do)."""

    layers: int
    images: int

    def note(self) -> str:
        """One line for ``eval.json`` and the printed report."""
        if not self.layers:
            return "no BatchNorm layers: nothing recalibrated"
        return f"BatchNorm statistics of {self.layers} layers recomputed on {self.images} images"


def bn_layers(net: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``net`` that keep running statistics (``track_running_stats``), in module order."""
    return [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> Recalibration:
    """Recompute the running statistics of every BatchNorm layer of ``net`` (in place) from ``batches`` of images
    ``(B, 3, H, W)``; every other module runs in eval mode (no dropout noise). Batches of one image are skipped
    (BatchNorm cannot take statistics of one value per channel). ``net`` keeps its train / eval mode."""
    layers = bn_layers(net)
    if not layers:
        return Recalibration(0, 0)
    was_training, momenta = net.training, [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
    net.eval()
    for m in layers:
        m.train()
    seen = 0
    try:
        for images in batches:
            b = int(images.shape[0])
            if b < 2:
                continue
            for m in layers:
                m.momentum = b / (seen + b)
            net(images.to(device, non_blocking=True))
            seen += b
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        net.train(was_training)
    return Recalibration(len(layers), seen)
