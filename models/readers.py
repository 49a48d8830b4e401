"""How value channels are read: exact canonicalisation (``strict``) or a free compression.

The backbone (:mod:`paramgraph.models.backbone`) carries two kinds of features: ordinary *hidden* features
(``h`` per node, ``e`` per edge; layer-normalised MLP features) and *value channels* (``X`` per
node, ``E`` per edge) that are built linearly from the network's values and updated only by
bias-free linear maps, gates and products (see :class:`~paramgraph.models.layers.ValueLayer`). A *reader*
decides how value channels enter the MLPs that compute hidden features, and where invariant
features may be added to value channels.

:class:`StrictReader` (``mode="strict"``, the ScaleGMN family). A neuron ``n`` carries a group
factor ``f_n`` (positive scale, sign, both, or none) and a weight edge ``u -> v`` the factor
``t_uv = a_v / f_u`` (``a_v = f_v`` for a plain neuron, 1 for a normalised one; see
:mod:`paramgraph.models.gauge`). Value channels are kept *equivariant*: ``X_n -> f_n X_n``,
``E_uv -> t_uv E_uv``. Every invariant function reads them only through :func:`canon`
(``x / ||x||`` where the row can be scaled, times the sign of its largest-magnitude entry where it
can be flipped). A node's ``X`` and its forward message ``M`` (which transforms by ``a_n``) are
canonicalised *jointly* where ``a_n = f_n``, so that ratios between them (e.g. bias against
incoming weights) stay visible. Invariant features may be added to value channels only where the
factor is trivial (inputs, outputs, wiring, neurons without symmetry).

:class:`FreeReader` (``mode="perm"`` and ``mode="quasi"``). No constraint: invariant features may
be added everywhere. In ``quasi`` mode the values are already gauged (invariant), so everything
computed from them is invariant; in ``perm`` mode the network is permutation equivariant only.
Both read the channels through ``symlog`` (sign-preserving compression; ``compress=False`` reads
them raw, which trained worse in both modes: README, "What makes the gauge pay"); the channels
themselves keep their linear structure.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .structure import GraphStructure, symlog


def canon(x: Tensor, scaled: Tensor, signed: Tensor) -> Tensor:
    """Invariant of ``x`` [R, C] whose rows transform by one factor each: rows with ``scaled``
    are divided by their norm (rows of norm below ``sqrt(tiny)`` of the dtype are left as they
    are, so the result and its gradient stay finite), rows with ``signed`` are multiplied by the
    sign of their largest-magnitude entry. Other rows are returned as they are."""
    dtype = x.dtype
    # In float64 (where the device has it): a float32 row of a collapsed channel (norm ~1e-11)
    # would fall below float32's threshold for some group elements and not for others, a jump
    # of the invariant by O(1); float64's threshold is ~1e-154.
    if dtype != torch.float64 and x.device.type != "mps":
        x = x.double()
    n2 = x.square().sum(1, keepdim=True)
    # Norms below sqrt(tiny) are left undivided: dividing by them overflowed the backward pass (NaN
    # gradients for networks with denormal weights, e.g. weights of always-zero input pixels).
    safe = torch.where(n2 > torch.finfo(n2.dtype).tiny ** 0.5, n2, torch.ones_like(n2)).sqrt()
    # the largest-magnitude entry is the same before and after dividing by a positive norm
    pivot = x.gather(1, x.abs().argmax(1, keepdim=True))
    flip = signed.unsqueeze(1) & (pivot < 0)
    # one division per entry by the row's norm (1 where not scaled), negated where flipped:
    # x / -d is exactly -(x / d), so this is dividing then flipping, in one pass over x
    divisor = torch.where(scaled.unsqueeze(1), safe, torch.ones_like(safe))
    return (x / torch.where(flip, -divisor, divisor)).to(dtype)


def masked(mask: Tensor | float, t: Tensor) -> Tensor:
    """``mask * t``; a :class:`FreeReader`'s masks are the constant 1, and multiplying by it
    would be one more pass over an edge-sized tensor for nothing."""
    return t if isinstance(mask, float) and mask == 1.0 else mask * t


class StrictReader:
    """Canonicalised reads for exactly scale/sign-equivariant value channels (see module doc).

    Masks (``[N, 1]`` / ``[E, 1]`` floats): ``node_trivial``/``edge_trivial`` where invariant
    features may be added to value channels, ``same`` where the forward message may update ``X``.
    """

    constrained = True

    def __init__(self, st: GraphStructure, dtype: torch.dtype):
        self.node_scale, self.node_sign = st.scale, st.sign
        self.a_scale, self.a_sign = st.scale & st.plain, st.sign & st.plain
        self.edge_scale, self.edge_sign = st.edge_kinds()
        self.joint = (st.plain | ~(st.scale | st.sign)).unsqueeze(1)
        self.same = self.joint.to(dtype)
        self.node_trivial = (~(st.scale | st.sign)).to(dtype).unsqueeze(1)
        self.edge_trivial = (~(self.edge_scale | self.edge_sign)).to(dtype).unsqueeze(1)

    def values(self, binned: Tensor) -> Tensor:
        """Encoder input for the hidden edge features: canonicalised kernel vectors."""
        return canon(binned, self.edge_scale, self.edge_sign)

    def slots(self, eq_slots: Tensor) -> Tensor:
        """Canonicalised equivariant node slots ``[N, 2]``."""
        return canon(eq_slots, self.node_scale, self.node_sign)

    def edges(self, e: Tensor) -> Tensor:
        return canon(e, self.edge_scale, self.edge_sign)

    def nodes(self, x: Tensor, m: Tensor) -> Tensor:
        joint = canon(torch.cat([x, m], 1), self.node_scale, self.node_sign)
        sep = torch.cat([canon(x, self.node_scale, self.node_sign),
                         canon(m, self.a_scale, self.a_sign)], 1)
        return torch.where(self.joint, joint, sep)


class FreeReader:
    """Unconstrained reads (``perm``/``quasi``): the channels (``symlog`` of them with
    ``compress``), no masks."""

    constrained = False
    same = node_trivial = edge_trivial = 1.0

    def __init__(self, compress: bool = True):
        self.compress = compress

    def values(self, binned: Tensor) -> Tensor:
        return binned

    def slots(self, eq_slots: Tensor) -> Tensor:
        return eq_slots

    def edges(self, e: Tensor) -> Tensor:
        return symlog(e) if self.compress else e

    def nodes(self, x: Tensor, m: Tensor) -> Tensor:
        xm = torch.cat([x, m], 1)
        return symlog(xm) if self.compress else xm
