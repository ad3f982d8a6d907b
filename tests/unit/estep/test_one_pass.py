"""One pass for the E-step and the kNN bank: the momentum backbone's features fill the monitor's bank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pcl.estep.clustering import KMeansConfig
from pcl.estep.estep import EStepConfig, FeaturePass, run_estep
from pcl.model.bank import FeatureBank
from pcl.model.features import extract
from pcl.utils.distributed import DistInfo
from tests.helpers import tiny_model


def test_one_pass_bank_and_clusters_equal_separate_extractions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    for p in model.encoder_k.parameters():  # a key encoder that differs from the query one
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randn(20, 3, 16, 16)
    loader = torch.utils.data.DataLoader(list(zip(x, range(20), strict=True)), batch_size=8)
    cfg = EStepConfig(num_cluster=[3, 4], feature_dir=tmp_path, kmeans=KMeansConfig(niter=5, nredo=1))
    bank = FeatureBank(20)
    paired = FeaturePass(model.cluster_and_bank_features, loader, 20, 8, DistInfo())
    one = run_estep(paired, cfg, epoch=1, temperature=0.2, bank=bank)
    two = run_estep(FeaturePass(model.cluster_features, loader, 20, 8, DistInfo()), cfg, 1, 0.2)
    cpu = torch.device("cpu")
    assert torch.equal(bank.tensor(), extract(model.key_backbone_features, loader, cpu))  # float-equal
    assert not torch.equal(bank.tensor(), extract(model.backbone_features, loader, cpu))  # not the query encoder
    for a, b in zip(one.levels, two.levels, strict=True):
        assert torch.equal(a.im2cluster, b.im2cluster) and torch.equal(a.centroids, b.centroids)


def test_feature_bank_places_rows_by_dataset_index_and_refuses_gaps() -> None:
    bank = FeatureBank(5)
    bank.add(torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64), torch.tensor([3, 0]))
    with pytest.raises(RuntimeError, match="3 of 5 rows were never filled"):
        bank.tensor()
    bank.add(torch.tensor([[3.0, 1.0], [4.0, 1.0], [5.0, 1.0]]), torch.tensor([1, 4, 2]))
    expected = torch.tensor([[2.0, 0.0], [3.0, 1.0], [5.0, 1.0], [1.0, 0.0], [4.0, 1.0]])
    assert bank.tensor().dtype == torch.float32 and torch.equal(bank.tensor(), expected)
