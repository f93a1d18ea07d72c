"""A tiny classifier for the factory-loader tests: ``factory_model:build``."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    """1×4×4 inputs → 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.flatten(x))
        return out


def build() -> nn.Module:
    return Tiny()


def broken() -> nn.Module:
    raise RuntimeError("the factory is broken")


def not_a_module() -> int:
    return 3


NOT_CALLABLE = 5
