"""Random function-preserving moves of the training networks (``paramgraph train --augment R``).

Every training step, each network of the batch is moved by a random element of its scale/sign
group before the metanet reads it: every neuron with a positive-scale symmetry by a factor
log-uniform in ``[1/R, R]``, every neuron with a sign symmetry by a fair random sign (the group
action of :func:`paramgraph.models.gauge.apply_factors`, the same draw as
:func:`paramgraph.random_element`'s). The networks compute exactly what they computed, so the
targets do not change. Permutations are not drawn: every metanet is permutation equivariant by
construction. Attention head maps are not drawn either.

What it is for: a ``perm`` metanet is not invariant to these moves and may read *where in its
orbit* a network sits (per-layer weight scales left by its initialisation and optimiser), which
the function does not determine and an exactly invariant metanet (``quasi``, ``strict``) cannot
see. Trained on moved networks, ``perm`` is pushed towards what the function determines: the
comparison that separates "the gauge loses information" from "the gauge is a worse learner"
(README, "Where the gauge loses to perm"). For ``quasi`` and ``strict`` it changes
nothing but float rounding.

The moves are drawn from the global RNG, which training re-seeds every epoch, so a resumed run
repeats them; data-parallel ranks draw their own (an N-process run then differs from a
one-process run by the draws).
"""

from __future__ import annotations

from torch import Tensor

from paramgraph.models import GraphStructure
from paramgraph.models.gauge import random_move


def moved_values(st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                 scale_range: float) -> tuple[Tensor, Tensor]:
    """The batch's values moved by a random scale/sign element (``scale_range`` R > 1:
    scales log-uniform in ``[1/R, R]``); same dtypes as the inputs."""
    return random_move(st, edge_value, node_value, scale_range)[:2]


def augment(batch, st: GraphStructure, scale_range: float):
    """``batch`` (a prepared graph batch) with its values moved (see the module): a copy by
    ``with_values``, which also drops what was cached of the unmoved values (the gauge's
    inputs)."""
    return batch.with_values(*moved_values(st, batch.edge_value, batch.node_value, scale_range))
