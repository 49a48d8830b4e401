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
from torch.autograd.function import once_differentiable

from .structure import GraphStructure, symlog


def canon(x: Tensor, scaled: Tensor, signed: Tensor) -> Tensor:
    """Invariant of ``x`` [R, C] whose rows transform by one factor each: rows with ``scaled``
    are divided by their norm (rows of norm below ``sqrt(tiny)`` of the dtype are left as they
    are, so the result and its gradient stay finite), rows with ``signed`` are multiplied by the
    sign of their largest-magnitude entry. Other rows are returned as they are.

    Computed in float64 (where the device has it): a float32 row of a collapsed channel (norm
    ~1e-11) would fall below float32's threshold for some group elements and not for others, a
    jump of the invariant by O(1); float64's threshold is ~1e-154. One autograd node with the
    closed-form gradient ``(g - y (y . g)) / |x|`` on normalised rows and ``g / d`` on the others
    (``d`` = +-1): the values and gradients of the composition of float64 operations it
    replaces (float32 values identical, float64 ones within an ulp or two: the norm is summed in
    another order), in about half the time (issue 18: ``strict`` reads edge-sized channels this
    way in every round)."""
    return _Canon.apply(x, scaled, signed)


class _Canon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scaled: Tensor, signed: Tensor) -> Tensor:
        wide = torch.float64 if x.dtype != torch.float64 and x.device.type != "mps" else x.dtype
        # float64 norms straight from x (no float64 copy of x)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=wide)
        # Squared norms below sqrt(tiny) are left undivided: dividing by them overflowed the
        # backward pass (NaN gradients for networks with denormal weights, e.g. weights of
        # always-zero input pixels).
        normed = scaled.unsqueeze(1) & (norm > torch.finfo(wide).tiny ** 0.25)
        d = torch.where(normed, norm, torch.ones_like(norm))
        # x / -d is exactly -(x / d): dividing then flipping, in one pass over x; the pivot is
        # read from x, as the largest-magnitude entry is the same before and after dividing by
        # a positive norm
        d = torch.where(signed.unsqueeze(1) & _pivot_negative(x), -d, d)
        y = x / d  # in the wide dtype: the gradient's projection needs y unrounded
        ctx.save_for_backward(y, d, normed)
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        y, d, normed = ctx.saved_tensors
        along = (y * grad).sum(1, keepdim=True)
        along = torch.where(normed, along, torch.zeros_like(along))
        return ((grad - y * along) / d).to(grad.dtype), None, None


def _pivot_negative(x: Tensor) -> Tensor:
    """``[R, 1]``: whether the first largest-magnitude entry of each row is negative.

    On the CPU from the row's max and min: ``max + min < 0`` exactly when ``|min| > max`` (the
    sign of a rounded sum of two opposite-signed floats is exact). ATen's CPU ``argmax`` along a
    row of 32 is ~7x slower than ``amax`` and ``amin`` together (1.4 against 0.2 ms for a [13824,
    32] edge read; ``strict`` reads 18 such per step). Rows whose max and min are equal and
    opposite (``+a`` and ``-a``) fall back to the first occurrence, as ``argmax`` picks it,
    which keeps ``x`` and ``-x`` on one canonical row. Elsewhere ``argmax`` does it in one pass
    without a host sync."""
    if x.device.type != "cpu":
        return x.gather(1, x.abs().argmax(1, keepdim=True)) < 0
    top, low = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    total = top + low
    negative = total < 0
    tie = ((total == 0) & (top > 0)).squeeze(1)
    if tie.any():
        rows = x[tie]
        negative[tie] = rows.gather(1, rows.abs().argmax(1, keepdim=True)) < 0
    return negative


def masked(mask: Tensor | float, t: Tensor) -> Tensor:
    """``mask * t``; a :class:`FreeReader`'s masks are the constant 1, and multiplying by it
    would be one more pass over an edge-sized tensor for nothing."""
    return t if isinstance(mask, float) and mask == 1.0 else mask * t


class StrictReader:
    """Canonicalised reads for exactly scale/sign-equivariant value channels (see module doc).

    Masks (``[N, 1]`` floats): ``node_trivial`` where invariant features may be added to node
    value channels, ``same`` where the forward message may update ``X``; on edges,
    :meth:`add_on_unmoved_edges` adds them.
    """

    constrained = True

    def __init__(self, st: GraphStructure, dtype: torch.dtype):
        self.node_scale, self.node_sign = st.scale, st.sign
        self.a_scale, self.a_sign = st.scale & st.plain, st.sign & st.plain
        self.edge_scale, self.edge_sign = st.edge_kinds()
        self.joint = (st.plain | ~(st.scale | st.sign)).unsqueeze(1)
        self.same = self.joint.to(dtype)
        self.node_trivial = (~(st.scale | st.sign)).to(dtype).unsqueeze(1)
        self.unmoved_ids = st.unmoved_ids

    def add_on_unmoved_edges(self, base: Tensor, lin, feats: Tensor) -> Tensor:
        """``base`` plus ``lin(feats)`` on the edges no group element moves, computed there only
        (``GraphStructure.unmoved_ids``): in a plain CNN or MLP no weight edge is unmoved, and
        the masked form computed an edge-sized product to multiply it by zeros."""
        if not self.unmoved_ids.numel():
            return base
        return base.index_add(0, self.unmoved_ids, lin(feats.index_select(0, self.unmoved_ids)))

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
    same = node_trivial = 1.0

    def __init__(self, compress: bool = True):
        self.compress = compress

    @staticmethod
    def add_on_unmoved_edges(base: Tensor, lin, feats: Tensor) -> Tensor:
        """``base + lin(feats)``: every edge may take invariant features here."""
        return base + lin(feats)

    def values(self, binned: Tensor) -> Tensor:
        return binned

    def slots(self, eq_slots: Tensor) -> Tensor:
        return eq_slots

    def edges(self, e: Tensor) -> Tensor:
        return symlog(e) if self.compress else e

    def nodes(self, x: Tensor, m: Tensor) -> Tensor:
        xm = torch.cat([x, m], 1)
        return symlog(xm) if self.compress else xm
