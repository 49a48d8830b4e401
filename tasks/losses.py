"""A pairwise ranking term for tasks scored by Kendall tau (``--rank-loss W``).

Kendall tau counts the pairs of networks whose predictions are ordered as their targets are; the
mean squared error the metanets train with weighs a pair only through each network's own error.
The RankNet surrogate of the pair count, over every pair ``i, j`` of a batch whose targets differ:

.. math::
    \\ell_{\\text{rank}} = \\sigma_y^2\\;\\frac{1}{|P|}\\sum_{(i, j) \\in P}
        \\log\\big(1 + e^{-\\operatorname{sign}(y_i - y_j)\\,(p_i - p_j) / T}\\big),
    \\qquad T = \\sigma_y / 2

with :math:`\\sigma_y` the batch targets' standard deviation (detached). Dividing by :math:`T`
makes the term independent of the targets' units; multiplying by :math:`\\sigma_y^2` puts it in
the units of the squared error, so that a weight of 1 balances the two at the start (a constant
prediction has squared error :math:`\\sigma_y^2` and rank term :math:`\\sigma_y^2 \\log 2`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_rank_loss(pred: Tensor, y: Tensor) -> Tensor:
    """The rank term above for predictions ``pred`` [B] and targets ``y`` [B]; zero where the
    batch has fewer than two distinct targets."""
    y = y.to(pred.dtype)
    sign = torch.sign(y.unsqueeze(1) - y.unsqueeze(0))  # [B, B]: +1 where y_i > y_j
    pairs = (sign != 0).to(pred.dtype)
    # masked sums, no branch on the data: a training step must not wait for the device
    spread = y.std().detach() if y.numel() > 1 else y.new_zeros(())
    temperature = torch.where(spread > 0, spread / 2, torch.ones_like(spread))  # 0: no pairs
    margin = (pred.unsqueeze(1) - pred.unsqueeze(0)) * sign / temperature
    mean = (F.softplus(-margin) * pairs).sum() / pairs.sum().clamp_min(1)
    return spread.square() * mean
