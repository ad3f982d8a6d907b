"""Fine-tuning protocol: class-balanced repeatable subsets, index files, a falling loss and a trained backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcl.data.datasets import IndexedImageFolder, eval_transform
from pcl.eval.finetune import FinetuneConfig, balanced_subset, cosine_lr, finetune, read_subset, write_subset
from pcl.eval.linear_official import linear_train_transform
from pcl.eval.pretrained import untrained
from pcl.utils.errors import PCLError


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny problems: one intra-op thread is much faster than two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_subsets_are_class_balanced_repeatable_and_refuse_too_few_images(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(4), [50, 60, 70, 80])  # N = 260, C = 4
    a = balanced_subset(labels, 10, seed=0)
    assert np.bincount(labels[a]).tolist() == [6, 6, 6, 6]  # round(0.1 * 260 / 4) = 6 (6.5 rounds to even)
    assert np.array_equal(a, balanced_subset(labels, 10, seed=0)) and len(set(a.tolist())) == 24
    assert not np.array_equal(a, balanced_subset(labels, 10, seed=1))
    assert np.bincount(labels[balanced_subset(labels, 0.1)]).tolist() == [1, 1, 1, 1]  # at least one per class
    assert np.array_equal(balanced_subset(labels, 100), np.arange(260))
    with pytest.raises(PCLError, match="needs 58 images per class but class 0 has 50"):
        balanced_subset(labels, 90)  # 58.5 rounds to even
    with pytest.raises(PCLError, match=r"\(0, 100\]"):
        balanced_subset(labels, 0)


def test_finetune_trains_the_backbone_loss_falls_and_index_files_round_trip(tiny_data: Path, tmp_path: Path) -> None:
    pre = untrained("resnet18", "small", 16, seed=0)
    before = {k: v.clone() for k, v in pre.backbone.state_dict().items()}
    train = IndexedImageFolder(tiny_data / "train", linear_train_transform(16))
    test = IndexedImageFolder(tiny_data / "test", eval_transform(16))
    idx = balanced_subset(np.array(train.targets), 50, seed=0)  # 8 of the 16 images of each of 3 classes
    path = tmp_path / "finetune" / "50percent_seed0.txt"
    write_subset(path, idx, train)
    lines = path.read_text().splitlines()
    assert len(lines) == 24 and lines[0].split("\t")[1].startswith("class0/") and lines[0].endswith(".jpg")
    assert np.array_equal(read_subset(path), idx)
    cfg = FinetuneConfig(percents=(50,), epochs=6, batch_size=8, lr=0.01, head_lr=0.1)
    res = finetune(pre.backbone, pre.feat_dim, train, idx, test, cfg, torch.device("cpu"), workers=0, show=False)
    assert len(res.epoch_loss) == 6 and res.n_train == 24
    assert np.mean(res.epoch_loss[-2:]) < 0.7 * np.mean(res.epoch_loss[:2]), res.epoch_loss
    assert 0.0 <= res.top1 <= 100.0 and res.top5 == 100.0  # 3 classes: top-5 holds every class
    trained = res.model[0].state_dict()
    assert not torch.equal(trained["conv1.weight"], before["conv1.weight"])  # the backbone is trained, not frozen
    assert not torch.equal(trained["bn1.running_mean"], before["bn1.running_mean"])  # BatchNorm in train mode
    assert all(torch.equal(v, before[k]) for k, v in pre.backbone.state_dict().items())  # the original untouched


def test_cosine_schedule() -> None:
    assert cosine_lr(0.1, 0, 10) == pytest.approx(0.1)
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)
    assert cosine_lr(0.1, 10, 10) == pytest.approx(0.0)
