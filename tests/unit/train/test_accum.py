"""Gradient accumulation (``--accum-steps``, :mod:`pcl.train.accum`): for a model without batch norm (a tiny timm
ViT) A micro-batches of B / A images give the gradients, logged values and update of one batch of B to float
tolerance, and the queue semantics: every micro-batch sees the same queue, which receives all B keys, in order,
once, after the optimizer step."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pcl.config import Config
from pcl.data.datasets import AugConfig, DataConfig
from pcl.methods.moco import MoCo
from pcl.model.encoder import ModelConfig
from pcl.train.accum import Accumulator, micro_batches

B = 8


def vit_moco(local_crops: int) -> MoCo:
    torch.manual_seed(0)
    model = ModelConfig(arch="test_vit", patch_size=4, low_dim=8, pcl_r=16, bn_splits=1)
    aug = AugConfig(image_size=16, local_crops=local_crops, local_crop_size=8)
    return MoCo.from_config(Config(model=model, data=DataConfig(aug=aug)))


def batch(local_crops: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(B, 3, s, s, generator=g) for s in [16, 16] + [8] * local_crops], torch.arange(10, 10 + B)


def one_step(method: MoCo, accum: int, local_crops: int) -> tuple[object, dict[str, torch.Tensor], torch.Tensor]:
    """(merged step, gradients by name, the queue each micro-batch saw) of one optimizer step, then SGD + after_step."""
    seen = []
    objective = method.objective

    def spy(out: object, index: torch.Tensor) -> object:
        seen.append(method.queue.clone())
        return objective(out, index)

    method.objective = spy  # type: ignore[method-assign]
    passes = Accumulator(method, method, contextlib.nullcontext, lambda loss: loss, accum)
    method.zero_grad(set_to_none=True)
    step = passes.run(*batch(local_crops))
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    with torch.no_grad():
        for p in method.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    method.after_step(step)
    return step, grads, torch.stack(seen)


@pytest.mark.parametrize("local_crops", [0, 2])
def test_a_micro_batches_give_the_update_of_one_batch(local_crops: int) -> None:
    one, many = vit_moco(local_crops), vit_moco(local_crops)
    s1, g1, _ = one_step(one, 1, local_crops)
    s4, g4, seen = one_step(many, 4, local_crops)
    assert g1.keys() == g4.keys() and len(g1) > 10
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(s4.loss, s1.loss.detach(), rtol=1e-5, atol=1e-6)
    assert s4.terms.keys() == s1.terms.keys() and s4.batch == s1.batch == B
    for name in s1.terms:
        torch.testing.assert_close(s4.terms[name], s1.terms[name].detach(), rtol=1e-5, atol=1e-6)
    assert {n: int(h) for n, h in s4.hits.items()} == {n: int(h) for n, h in s1.hits.items()}
    torch.testing.assert_close(s4.embedding, s1.embedding.detach(), rtol=1e-5, atol=1e-6)
    # the same update: weights, the key encoder's momentum step, the queue and its pointer
    for (name, a), b in zip(one.state_dict().items(), many.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    assert len(seen) == 4 and all(torch.equal(q, seen[0]) for q in seen)


def test_the_queue_gets_all_keys_in_order_once_after_the_step() -> None:
    m = vit_moco(0)
    before = m.queue.clone()
    step, _, seen = one_step(m, 2, 0)
    assert torch.equal(seen[0], before) and torch.equal(seen[1], before)  # no enqueue between micro-batches
    assert int(m.queue_ptr) == B
    torch.testing.assert_close(m.queue[:, :B], step.pending.T)
    assert torch.equal(m.queue[:, B:], before[:, B:])
    # the pending keys are the micro-batches' keys in batch order (index order preserved)
    (v0, i0), (_, i1) = micro_batches(*batch(0), 2)
    assert torch.equal(torch.cat([i0, i1]), batch(0)[1]) and v0[0].shape[0] == B // 2


def test_accum_must_divide_the_batch() -> None:
    from pcl.config import parse_config, validate
    from pcl.utils.errors import PCLError

    cfg = parse_config(["--arch", "test_vit", "--patch-size", "4", "--image-size", "16", "--batch-size", "6",
                        "--accum-steps", "4"])  # fmt: skip
    with pytest.raises(PCLError, match="not divisible by --accum-steps 4"):
        validate(cfg)
