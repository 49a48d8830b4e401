"""Small modules the converter understands that PyTorch does not ship."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Sine(nn.Module):
    """``sin(w0 * x)``, the activation of SIRENs (Sitzmann et al. 2020).

    It is odd, so a neuron followed by it has a sign-flip symmetry.
    """

    def __init__(self, w0: float = 1.0):
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x) if self.w0 != 1.0 else torch.sin(x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"
