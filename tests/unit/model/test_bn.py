"""BatchNorm recalibration: only BatchNorm buffers change, to the statistics of the images, deterministically."""

from __future__ import annotations

import torch
from torch import nn

from pcl.model.bn import recalibrate_bn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                         nn.LazyLinear(2))  # fmt: skip


def _batches(sizes: list[int], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 6, 6, generator=g) * 2 + 3 for b in sizes]


def test_only_bn_buffers_change_to_the_images_statistics_and_deterministically() -> None:
    net = _net()
    net(torch.zeros(2, 3, 6, 6))  # materialise the lazy layer
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = _batches([5, 3, 1, 4])  # the batch of one is skipped
    done = recalibrate_bn(net, batches, torch.device("cpu"))
    assert (done.layers, done.images) == (1, 12) and "1 layers" in done.note()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert net.training  # the mode is kept
    # every image weighted equally: the running mean is the mean of the conv activations of all 12 images
    used = [b for b in batches if b.shape[0] > 1]
    acts = torch.cat([net[0](b) for b in used])
    assert torch.allclose(after["1.running_mean"], acts.mean((0, 2, 3)), atol=1e-5)
    # the same images in the same order give the same buffers, whatever the state before
    other = _net()
    other(torch.zeros(2, 3, 6, 6))
    other.load_state_dict(after)
    other[1].running_mean.fill_(7.0)
    recalibrate_bn(other, batches, torch.device("cpu"))
    assert all(torch.equal(v, after[k]) for k, v in other.state_dict().items())
    assert other[1].momentum == net[1].momentum == 0.1  # the layers' momentum is restored


def test_a_network_without_batchnorm_is_left_as_it_is_and_says_so() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 4, 4]))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    done = recalibrate_bn(net, _batches([4]), torch.device("cpu"))
    assert (done.layers, done.images) == (0, 0) and done.note() == "no BatchNorm layers: nothing recalibrated"
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
