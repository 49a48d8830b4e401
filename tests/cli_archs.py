"""Architectures for the command-line tests, importable as ``tests.cli_archs:<name>`` (--arch)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the identity, then relu."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallCNN(nn.Module):
    """A CNN for 1x8x8 digits with batch norm and one residual block."""

    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.block = ResBlock(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.block(F.relu(self.bn(self.stem(x))))
        return self.head(self.pool(x).flatten(1))


def make_cnn(channels: int = 8, classes: int = 10) -> nn.Module:
    """The CNN fixture, in eval mode."""
    return SmallCNN(channels, classes).eval()


def make_mlp(width: int = 4) -> nn.Module:
    """A tiny MLP (2 -> width -> 1) for many-file tests."""
    return nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 1))


def not_a_module() -> int:
    """A callable that returns no module (an --arch error case)."""
    return 3
