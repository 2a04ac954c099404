"""A user's own models, as they would write them (no interp-ray import): named by ``user_models:build`` etc.

tests/ is on sys.path (its conftest.py puts it there; it has no __init__.py), so this is ``user_models`` everywhere."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv-ReLU(inplace)-pool-conv-ReLU-GAP-fc; ``head`` is the final layer, ``features`` the last map."""

    def __init__(self, num_classes: int = 4, width: int = 8, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1),
                                      nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def build(num_classes: int = 4, width: int = 8) -> nn.Module:
    """A factory, as a user's training code would have one."""
    return TinyNet(num_classes=num_classes, width=width)


def build_fixed(width: int = 8) -> nn.Module:
    """A factory that takes no class count (always 6 classes): interp-ray finds it by probing."""
    return TinyNet(num_classes=6, width=width)


class MLP(nn.Module):
    """No spatial map at all: flatten, then dense layers. Its signature names image_size, so it receives the input
    size interp-ray is given."""

    def __init__(self, image_size: int = 8, hidden: int = 16, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


NOT_A_MODEL = 3
