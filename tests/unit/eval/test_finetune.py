"""Fine-tuning protocol: class-balanced repeatable subsets, a validation split that never leaks, a fixed number of
steps, BatchNorm handling, and a ranking of a backbone that carries the labels above one that does not."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pcl.data.datasets import IndexedImageFolder
from pcl.eval.eval_config import EvalConfig
from pcl.eval.evaluation import evaluate_run
from pcl.eval.finetune import (
    FinetuneConfig,
    balanced_subset,
    check_splits,
    cosine_lr,
    read_subset,
    recipe,
    train,
    train_transform,
    validation_split,
    write_subset,
)
from pcl.eval.pretrained import Pretrained, untrained
from pcl.eval.registry import choose
from pcl.utils.errors import PCLError


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny problems: one intra-op thread is much faster than two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_subsets_are_class_balanced_repeatable_and_refuse_too_few_images() -> None:
    labels = np.repeat(np.arange(4), [50, 60, 70, 80])  # N = 260, C = 4
    a = balanced_subset(labels, 10, seed=0)
    assert np.bincount(labels[a]).tolist() == [6, 6, 6, 6]  # round(0.1 * 260 / 4) = 6 (6.5 rounds to even)
    assert np.array_equal(a, balanced_subset(labels, 10, seed=0)) and len(set(a.tolist())) == 24
    assert not np.array_equal(a, balanced_subset(labels, 10, seed=1))
    assert not np.array_equal(a, balanced_subset(labels, 10, seed=0, draw=1))
    assert np.bincount(labels[balanced_subset(labels, 0.1)]).tolist() == [1, 1, 1, 1]  # at least one per class
    assert np.array_equal(balanced_subset(labels, 100), np.arange(260))
    with pytest.raises(PCLError, match="needs 58 images per class but class 0 has 50"):
        balanced_subset(labels, 90)  # 58.5 rounds to even
    with pytest.raises(PCLError, match=r"\(0, 100\]"):
        balanced_subset(labels, 0)


def test_the_validation_split_never_overlaps_the_labelled_subset_or_the_test_split() -> None:
    labels = np.repeat(np.arange(4), [50, 60, 70, 80])
    files = [f"/d/train/c{c}/{i}.jpg" for i, c in enumerate(labels)]
    for draw in range(3):
        val = validation_split(labels, 10, seed=0, draw=draw)
        assert np.bincount(labels[val]).tolist() == [10] * 4
        for p in (1, 10, 100):
            idx = balanced_subset(labels, p, seed=0, draw=draw, exclude=val)
            assert not set(idx.tolist()) & set(val.tolist())
            check_splits(files, {"/d/test/a.jpg"}, idx, val)  # no leak: passes
    assert np.array_equal(validation_split(labels, 10, draw=1), validation_split(labels, 10, draw=1))
    with pytest.raises(PCLError, match="leaves no image of class 0"):
        validation_split(labels, 50)
    idx = balanced_subset(labels, 10, exclude=val)
    with pytest.raises(PCLError, match=r"validation image.*also labelled"):  # a planted overlap
        check_splits(files, set(), np.concatenate([idx, val[:1]]), val)
    with pytest.raises(PCLError, match="are test images"):  # a planted test-set leak: a test file among the train
        check_splits(files, {os.path.realpath(files[int(idx[0])])}, idx, val)


def _colour(images: torch.Tensor) -> torch.Tensor:
    return images.mean((2, 3))  # (B, 3, H, W) -> (B, 3): the class colour, linearly


class Backbone(nn.Module):
    """``(B, 3, H, W) -> (B, 8)``: a linear map of the mean colour (``hashed``: of ``sin(5000 * colour)``, which
    carries no class linearly and cannot be trained into it), then BatchNorm."""

    def __init__(self, hashed: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hashed, self.fc, self.bn = hashed, nn.Linear(3, 8), nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _colour(x)
        return self.bn(self.fc(torch.sin(5000.0 * c) if self.hashed else c))


def test_fixed_steps_frozen_bn_and_the_original_untouched(tiny_data: Path) -> None:
    train_set = IndexedImageFolder(tiny_data / "train", train_transform(16, 0.5, True))
    targets = torch.tensor(train_set.targets)
    idx = balanced_subset(np.array(train_set.targets), 50)
    net = Backbone(hashed=False).eval()
    head = nn.Linear(8, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = FinetuneConfig(percents=(50,), steps=7, batch_size=4, lrs=(0.1,), head_lrs=(0.1,))
    r = recipe(cfg, 50, len(idx), 0.5)
    assert r.grid == ((0.1, 0.1),) and r.bn == "frozen" and r.crop_min == 0.5
    model, losses = train(net, head, train_set, targets, idx, r, r.grid[0], torch.device("cpu"), workers=0,
                          show=False)  # fmt: skip
    assert len(losses) == 7  # a fixed number of optimizer steps, whatever the subset's size
    trained = model[0].state_dict()
    assert not torch.equal(trained["fc.weight"], before["fc.weight"])  # the backbone is trained
    assert torch.equal(trained["bn.running_mean"], before["bn.running_mean"])  # BatchNorm frozen (eval mode)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the original untouched
    swav = recipe(FinetuneConfig(preset="swav"), 1.0, 128, 0.2)
    assert (swav.grid, swav.batch_size, swav.steps, swav.crop_min) == (((0.02, 5.0),), 256, 10, 0.08)
    with pytest.raises(PCLError, match="1 and 10 percent only"):
        recipe(FinetuneConfig(preset="swav"), 50.0, 10, 0.2)


def test_the_protocol_ranks_a_backbone_that_carries_the_labels_above_one_that_does_not(
    tiny_data: Path, tmp_path: Path
) -> None:
    settings = FinetuneConfig(percents=(50,), steps=12, batch_size=8, lrs=(0.01, 0.1), head_lrs=(0.1,), draws=2,
                              val_per_class=4)  # fmt: skip
    cfg = EvalConfig(data=str(tiny_data), workers=0, batch_size=16, device="cpu", show=False, reference="none",
                     protocols=choose(finetune=settings))  # fmt: skip
    res = {}
    for hashed in (False, True):
        pre = Pretrained(Backbone(hashed).eval(), 8, "toy", "small", 16, f"toy hashed={hashed}")
        res[hashed] = evaluate_run(pre, dataclasses.replace(cfg, out=tmp_path / f"{hashed}.json"))
    good, bad = res[False]["finetune"]["50"], res[True]["finetune"]["50"]
    assert good["top1"] > bad["top1"] + 30, (good["top1"], bad["top1"])
    assert good["top1"] >= 90 and bad["top1"] <= 70
    for block in (good, bad):
        assert len(block["draws"]) == 2 and block["n_val"] == 12 and block["n_train"] == 8 * 3  # 8 = round(0.5 * 16)
        for d in block["draws"]:
            labelled, val = read_subset(Path(d["subset_file"])), read_subset(Path(d["val_file"]))
            assert not set(labelled.tolist()) & set(val.tolist())
            assert set(d["grid_val_top1"]) == {"0.01/0.1", "0.1/0.1"} and d["lr"] in (0.01, 0.1)
            assert d["val_top1"] == max(v for v in d["grid_val_top1"].values() if v is not None)


def test_index_files_round_trip(tiny_data: Path, tmp_path: Path) -> None:
    train_set = IndexedImageFolder(tiny_data / "train")
    idx = balanced_subset(np.array(train_set.targets), 50, seed=0)
    path = tmp_path / "finetune" / "50percent_seed0.txt"
    write_subset(path, idx, train_set)
    lines = path.read_text().splitlines()
    assert len(lines) == 24 and lines[0].split("\t")[1].startswith("class0/") and lines[0].endswith(".jpg")
    assert np.array_equal(read_subset(path), idx)
    assert untrained("resnet18", "small", 16, seed=0).feat_dim == 512


def test_cosine_schedule() -> None:
    assert cosine_lr(0.1, 0, 10) == pytest.approx(0.1)
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)
    assert cosine_lr(0.1, 10, 10) == pytest.approx(0.0)
