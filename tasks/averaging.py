"""An exponential moving average of a metanet's weights, evaluated and saved instead of them.

The metanets overfit their ~1,400 training networks within a few epochs (train MSE falls ~7x
below validation MSE) and the best epoch is picked on 300 validation networks, so the weights
that are kept carry the noise of the last few steps. The average

.. math::  \\bar\\theta_t = d_t\\, \\bar\\theta_{t-1} + (1 - d_t)\\, \\theta_t,
           \\qquad d_t = \\min\\big(d, \\tfrac{1 + t}{10 + t}\\big)

(``t``: optimiser steps so far; the ramp lets the average leave the initialisation quickly) is a
standard remedy (Polyak averaging; "EMA" in many training recipes). Buffers are copied, not
averaged. It changes nothing in training itself: the optimiser steps on the raw weights.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """The moving average (decay ``decay`` in [0, 1)) of ``net``'s parameters, kept in a copy
    of ``net`` (:attr:`net`, in eval-ready form: no gradients)."""

    def __init__(self, net: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the weight average's decay must be in [0, 1), not {decay}")
        self.decay = float(decay)
        self.net = copy.deepcopy(net)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.steps = 0

    def rate(self) -> float:
        """This step's decay ``d_t`` (the ramp, then ``decay``)."""
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        """Fold ``net``'s current weights into the average (call after each optimiser step)."""
        self.steps += 1
        keep = self.rate()
        for avg, p in zip(self.net.parameters(), net.parameters(), strict=True):
            avg.lerp_(p.detach(), 1.0 - keep)
        for avg, b in zip(self.net.buffers(), net.buffers(), strict=True):
            avg.copy_(b)

    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.steps = int(state["steps"])
