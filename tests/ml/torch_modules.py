"""A PyTorch module class importable by path, for the flavor tests."""

from __future__ import annotations

import torch


class TinyNet(torch.nn.Module):
    def __init__(self, features: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(features, hidden)
        self.out = torch.nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.layer(x)))
