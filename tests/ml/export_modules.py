"""PyTorch modules importable by path for the export tests (the torch flavor loads by class)."""

from __future__ import annotations

from typing import Any

import torch


class Flipped(torch.nn.Module):
    """Class 1 when a + b > 1; its exported graph answers the opposite class."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [1.0, 1, 0, 0]]))
            self.linear.bias.copy_(torch.tensor([0.0, -1.0]))

    def forward(self, x: Any) -> Any:
        out = self.linear(x)
        return -out if torch.onnx.is_in_onnx_export() else out
