"""kNN bank filled by dataset index: the monitor's train-set features, computed inside the E-step's feature pass."""

from __future__ import annotations

import torch


class FeatureBank:
    """``(num, D)`` float32 rows on the features' device, written by dataset index as batches arrive.

    With ``--knn-encoder key`` the E-step's momentum-encoder pass fills it (backbone -> bank, head -> cluster
    features), so the kNN monitor needs no second pass over the training images.
    """

    def __init__(self, num: int) -> None:
        self.num = num
        self.rows: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None

    def add(self, features: torch.Tensor, index: torch.Tensor) -> None:
        """Store ``features (B, D)`` at rows ``index (B,)`` (as float32, like ``pcl.model.features.extract``)."""
        if self.rows is None:
            self.rows = torch.zeros(self.num, features.shape[1], dtype=torch.float32, device=features.device)
            self.filled = torch.zeros(self.num, dtype=torch.bool, device=features.device)
        index = index.to(self.rows.device)
        self.rows[index] = features.float()
        self.filled[index] = True

    def tensor(self) -> torch.Tensor:
        """The complete bank ``(num, D)`` in dataset order; raises ``RuntimeError`` when rows are missing."""
        if self.rows is None or not bool(self.filled.all()):
            missing = self.num if self.filled is None else int((~self.filled).sum())
            raise RuntimeError(f"kNN bank incomplete: {missing} of {self.num} rows were never filled")
        return self.rows
