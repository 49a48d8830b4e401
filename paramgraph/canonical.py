"""The exact section of a network's scale and sign symmetries: its canonical factors.

One neuron factor per neuron (a positive scale where ``node_scale``, a sign where ``node_sign``,
1 elsewhere), computed from the values alone, such that applying it gives the same network
whichever element of the scale/sign group it was moved by first (to float rounding):

1. :func:`canonical_factors`, the unit-norm canonicaliser: layer by layer from the input, each
   scalable neuron is rescaled so that its incoming parameters (weights after the factors of
   its sources, and bias; a normalised neuron: its norm weight and shift) have unit norm, and
   each sign-symmetric neuron is flipped so that its *sign statistic* is positive (``signs``):
   ``"bias"`` (the default), its bias, tie-break the sum of its incoming weights;
   ``"incoming"``, the sum of its incoming weights (after its sources' factors), tie-break its
   bias. A normalised neuron uses its norm weight, tie-break its norm shift, either way (its
   incoming weights do not flip with it). Zero: left unflipped.
2. :func:`balance_factors`, from the canonical network, red-black sweeps towards the
   minimum-norm point of the scaling orbit (the *balanced* section). A fixed number of sweeps of
   an invariant input is invariant, however far from convergence it stops.

:func:`section_factors` composes the two. The functions read a *structure* object (duck-typed):
:class:`ScaleStructure` here, built from one :class:`~paramgraph.ParamGraph`, or the metanet's
batch-aware ``GraphStructure`` (:mod:`paramgraph.models.structure`), whose gauge map uses this
module. Pure tensor code, differentiable (out-of-place), one vectorised step per depth level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from .types import NormKind

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph

BALANCE_SWEEPS = 12  # sweeps of balance_factors (exact invariance does not depend on it)
SECTIONS = ("balanced", "unit")
SIGN_STATISTICS = ("bias", "incoming")  # what canonical_factors makes positive (module doc)


@dataclass
class ScaleStructure:
    """What the section functions read of one graph's structure (never its values).

    ``src``, ``dst`` [E]; ``weight`` [E] bool (learned edges); ``weight_ids``; ``value_edge``
    [V]; ``plain`` [N] bool (no normalisation); ``scale``, ``sign`` [N] bool; ``node_layer`` [N];
    ``canon_into``/``canon_levels`` (:func:`canonical_levels`); ``has_scale``; ``heads``: the
    attention heads (:class:`~paramgraph.canonical_heads.HeadStructure`; None without attention
    or for a wiring it does not read), so readers of out-projections get head-invariant factors.
    """

    num_nodes: int
    num_edges: int
    src: Tensor
    dst: Tensor
    weight: Tensor
    weight_ids: Tensor
    value_edge: Tensor
    plain: Tensor
    scale: Tensor
    sign: Tensor
    node_layer: Tensor
    canon_into: Tensor
    canon_levels: list[tuple[int, int, int]]
    has_scale: bool
    heads: object = None

    @classmethod
    def of(cls, graph: ParamGraph) -> "ScaleStructure":
        """The structure of one (unbatched) graph."""
        src, dst = graph.endpoints()
        weight = graph.weight_edge_mask()
        layer = graph.node_layer.long()
        plain = graph.node_norm == int(NormKind.NONE)
        scale, sign = graph.node_scale.bool(), graph.node_sign.bool()
        into, levels = canonical_levels(src, dst, weight, layer, plain, scale | sign)
        from .canonical_heads import HeadStructure

        try:
            heads = HeadStructure.of(src, dst, graph.edge_type, graph.edge_size, graph.node_type,
                                     layer, weight)
        except ValueError:
            heads = None
        return cls(num_nodes=int(graph.num_nodes), num_edges=int(src.numel()), src=src, dst=dst,
                   weight=weight, weight_ids=weight.nonzero().squeeze(1),
                   value_edge=graph.value_edges(), plain=plain, scale=scale, sign=sign,
                   node_layer=layer, canon_into=into, canon_levels=levels,
                   has_scale=bool(scale.any()), heads=heads)


def section_factors(st, edge_value: Tensor, node_value: Tensor, section: str = "balanced",
                    sweeps: int = BALANCE_SWEEPS,
                    signs: str = "bias") -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The exact section's factor ``[N]`` and the edges' ``(sum of squares, sum)`` of the input
    values, both in the dtype of ``edge_value``. ``section``: ``"balanced"`` (the unit-norm
    canonical network rebalanced by ``sweeps`` sweeps of :func:`balance_factors`) or ``"unit"``
    (:func:`canonical_factors` alone); ``signs``: the sign statistic (module docstring).
    Raises ValueError for another section."""
    if section not in SECTIONS:
        raise ValueError(f"unknown gauge section '{section}'; choose from {SECTIONS}")
    sums = edge_value_sums(st, edge_value)
    f = canonical_factors(st, edge_value, node_value, sums, signs)
    if section == "balanced":
        mult = edge_multipliers(st, f)
        canon_ss = sums[0] * mult.square()
        # a plain neuron's bias and a normalised one's affine pair both scale by f
        node_ss = torch.where(st.plain, node_value[:, 0].square(),
                              node_value[:, 1].square() + node_value[:, 2].square())
        node_ss = node_ss * f.square()
        f = f * balance_factors(st, canon_ss, node_ss, sweeps)
    return f, sums


def edge_value_sums(st, edge_value: Tensor) -> tuple[Tensor, Tensor]:
    """Per edge: sum of squares and sum of its values."""
    ss = scatter(edge_value.square(), st.value_edge, 0, dim_size=st.num_edges, reduce="sum")
    sv = scatter(edge_value, st.value_edge, 0, dim_size=st.num_edges, reduce="sum")
    return ss, sv


def edge_multipliers(st, f: Tensor) -> Tensor:
    """``[E]``: what factors ``f`` multiply each weight edge by (``a_v / f_u``); 0 for fixed
    edges, which the group never changes."""
    a = torch.where(st.plain, f, torch.ones_like(f))
    return torch.where(st.weight, a[st.dst] / f[st.src], torch.zeros_like(a[st.dst]))


def canonical_factors(st, edge_value: Tensor, node_value: Tensor,
                      edge_sums: tuple[Tensor, Tensor] | None = None,
                      signs: str = "bias") -> Tensor:
    """The canonicaliser's factor per neuron, ``[N]`` (1 where the neuron has no symmetry).

    See the module docstring for the construction. Where ``st`` has ``heads`` (a
    :class:`~paramgraph.canonical_heads.HeadStructure`), a neuron that reads an attention
    out-projection is normalised by its row of the head-invariant value path instead of its
    raw incoming weights (:meth:`~paramgraph.canonical_heads.HeadStructure.reader_sums`), so
    that the factors do not depend on the per-head maps. Applying the result (the group's action,
    :func:`paramgraph.apply_element` with these factors) gives the canonical network, which is
    invariant under the group's scales and signs.
    Differentiable (out-of-place), one vectorised step per depth level. ``signs``: the sign
    statistic, one of :data:`SIGN_STATISTICS` (ValueError otherwise).
    """
    if signs not in SIGN_STATISTICS:
        raise ValueError(f"unknown sign statistic '{signs}'; choose from {SIGN_STATISTICS}")
    n = st.num_nodes
    dtype = edge_value.dtype
    ss, sv = edge_sums if edge_sums is not None else edge_value_sums(st, edge_value)
    f = torch.ones(n, dtype=dtype, device=edge_value.device)
    sym = st.scale | st.sign
    if not st.canon_levels:
        return f
    bias, nw, nb = node_value[:, 0], node_value[:, 1], node_value[:, 2]
    heads = getattr(st, "heads", None)  # a HeadStructure (paramgraph.canonical_heads) or None
    # Normalised neurons depend on their own norm parameters only.
    normed_n2 = nw.square() + nb.square()
    zeros = torch.zeros(n, dtype=dtype, device=f.device)
    # A squared norm below sqrt(tiny) counts as zero: its rsqrt (and the gradient) would overflow.
    tiny = torch.finfo(dtype).tiny ** 0.5
    for level, start, stop in st.canon_levels:
        ids = st.canon_into[start:stop]
        at_level = sym & (st.node_layer == level)
        src, dst = st.src[ids], st.dst[ids]
        inv = 1.0 / f[src]
        n2 = zeros.index_add(0, dst, ss[ids] * inv.square())
        wsum = zeros.index_add(0, dst, sv[ids] * inv)
        if heads is not None and level in heads.reader_levels:  # readers of out-projections
            n2, wsum = heads.reader_sums(edge_value, node_value, f, n2, wsum)
        n2 = torch.where(st.plain, n2 + bias.square(), normed_n2)
        first, second = (bias, wsum) if signs == "bias" else (wsum, bias)
        primary = torch.where(st.plain, first, nw)
        tie = torch.where(st.plain, second, nb)
        stat = torch.where(primary != 0, primary, tie)
        sgn = torch.where(stat < 0, -torch.ones_like(stat), torch.ones_like(stat))
        scale = torch.where(n2 > tiny, n2, torch.ones_like(n2)).rsqrt()
        level_f = torch.where(st.scale, scale, torch.ones_like(scale))
        level_f = torch.where(st.sign, level_f * sgn, level_f)
        f = torch.where(at_level, level_f, f)
    return f


def balance_factors(st, edge_ss: Tensor, node_ss: Tensor,
                    sweeps: int = BALANCE_SWEEPS) -> Tensor:
    """Positive per-neuron factors ``[N]`` that move a network towards the minimum-norm
    representative of its scaling orbit (1 where a neuron has no scale symmetry).

    ``edge_ss`` [E]: each edge's sum of squared values; ``node_ss`` [N]: a plain neuron's squared
    bias, a normalised neuron's ``gamma^2 + beta^2``. Under factors ``b`` a scalable neuron ``n``
    has incoming squared norm :math:`i_n = \\sum_{u \\to n} \\|w_{un}\\|^2 b_n^2 / b_u^2
    + \\beta_n b_n^2` (a normalised neuron: its affine parameters only) and outgoing
    :math:`o_n = \\sum_{n \\to v} \\|w_{nv}\\|^2 a_v^2 / b_n^2`; the total squared norm is
    minimal over ``b_n`` (the others fixed) when :math:`i_n = o_n`, i.e. after
    :math:`b_n \\leftarrow b_n (o_n / i_n)^{1/4}`. A sweep applies that update to the scalable
    neurons of even depth, then of odd depth (neurons of one parity are not joined by weight
    edges in the networks the converter sees, so each half-sweep is an exact coordinate step).
    Neurons with a squared norm below ``sqrt(tiny)`` on either side are left as they are.

    Run on the *canonical* network (:func:`canonical_factors`), a fixed number of sweeps is a
    deterministic function of an invariant input, so the result stays exactly invariant however
    far from convergence it stops; sweeps only decide how balanced the section is.
    """
    dtype = edge_ss.dtype
    b = torch.ones(st.num_nodes, dtype=dtype, device=edge_ss.device)
    if not st.has_scale or sweeps <= 0:
        return b
    w = st.weight_ids
    src, dst, ss = st.src[w], st.dst[w], edge_ss[w]
    into_plain = st.plain[dst]
    tiny = torch.finfo(dtype).tiny ** 0.5
    even = st.node_layer % 2 == 0
    zeros = torch.zeros_like(b)
    for _ in range(sweeps):
        for parity in (even, ~even):
            a = torch.where(st.plain, b, torch.ones_like(b))
            term = ss * (a[dst] / b[src]).square()
            in2 = zeros.index_add(0, dst, torch.where(into_plain, term, torch.zeros_like(term)))
            in2 = in2 + node_ss * b.square()
            out2 = zeros.index_add(0, src, term)
            move = st.scale & parity & (in2 > tiny) & (out2 > tiny)
            ratio = (out2 / torch.where(move, in2, torch.ones_like(in2))).clamp(1e-12, 1e12)
            b = torch.where(move, b * ratio.sqrt().sqrt(), b)
    return b


def canonical_levels(src: Tensor, dst: Tensor, weight: Tensor, layer: Tensor, plain: Tensor,
                      sym: Tensor) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """The canonicaliser's schedule: weight edges into plain symmetric neurons sorted by the
    target's depth, and per depth with symmetric neurons the slice of those edges."""
    into = (weight & sym[dst] & plain[dst]).nonzero().squeeze(1)
    into_level = layer[dst[into]]
    order = torch.argsort(into_level, stable=True)
    into, into_level = into[order], into_level[order]
    levels = torch.unique(layer[sym])
    bounds = torch.searchsorted(into_level, torch.stack([levels, levels + 1])).tolist()
    return into, [(lv, lo, hi) for lv, lo, hi in zip(levels.tolist(), *bounds, strict=True)]
