"""The canonical form of a network: one representative of its symmetry orbit.

:func:`canonicalize` moves a network by an element of its own symmetry group (so its function is
unchanged, to float rounding) to a point that depends only on the orbit:

1. **scales and signs**: the unit-norm canonical factors of :mod:`paramgraph.canonical` (the
   exact section the metanet's gauge uses; a neuron reading an attention out-projection is
   normalised by its head-invariant value path);
2. **attention head maps** (``heads=True``): per head, the query/key pair is replaced by the
   balanced factors of the SVD of the bilinear form :math:`[W_q|b_q]^T [W_k|b_k]`, and the
   value/output pair by those of :math:`W_o^{(h)} [W_v|b_v]` (:mod:`paramgraph.canonical_heads`,
   shared with the gauge); both products (and so the function) are kept, and they are
   invariant under the per-head maps;
3. **balanced section**: :func:`paramgraph.canonical.balance_factors` sweeps from there (the
   minimum-norm point of the scaling orbit, as the metanet's default gauge);
4. **permutations**: the positions of every permutable set (tied sets together, attention heads
   as blocks and the dimensions inside a head per role) are sorted by per-neuron statistics that
   do not depend on the order of any other set (moments of incoming and outgoing weights, node
   parameters).

Every step is a deterministic function of an input that the earlier steps made invariant, so
two networks that differ by a group element get the same canonical values up to the rounding of
the computation (done in float64), and after rounding back to a float32 checkpoint almost always
bit-identical ones. Exactly identical files are guaranteed only when the two inputs differ by an
element that floating point represents exactly (permutations, signs, power-of-two scales) or
when the moved copy keeps the extra precision: a float32 network scaled by an arbitrary factor
and stored as float32 has lost information, so its canonical form agrees with the original's to
within that rounding (~1e-7 relative), not bit for bit.

Head maps are left as they are with ``heads=False``, or where the attention wiring is not one
:class:`~paramgraph.canonical_heads.HeadStructure` reads (:attr:`Canonical.heads_fixed` is False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .align import permutable_sets
from .canonical import ScaleStructure, canonical_factors, section_factors
from .symmetry import GroupElement, apply_element
from .types import NodeType

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph


@dataclass
class Canonical:
    """:func:`canonicalize`'s result: ``graph`` (same dtype as the input) and what was fixed."""

    graph: ParamGraph
    scales_fixed: int  # neurons whose scale and/or sign was fixed
    sets_sorted: int  # permutable sets put in canonical order
    heads_fixed: bool  # attention head maps fixed (True where there are none)


def canonicalize(graph: ParamGraph, *, heads: bool = True, dtype: torch.dtype | None = None
                 ) -> Canonical:
    """The canonical representative of ``graph``'s symmetry orbit; see the module docstring.

    Computed in float64; the result's values are rounded to ``dtype`` (default: the graph's own).
    ``heads=False`` leaves the per-head maps of attention as they are. The structure is kept, so
    ``to_state_dict`` of the result is a checkpoint of the same architecture.
    """
    dtype = dtype or graph.edge_value.dtype
    g = graph.with_values(graph.edge_value.double(), graph.node_value.double())
    n = g.num_nodes
    ident = torch.arange(n)
    st = ScaleStructure.of(graph)
    sym = st.scale | st.sign
    if bool(sym.any()):
        f = canonical_factors(st, g.edge_value, g.node_value)
        g = apply_element(g, GroupElement(ident, f, {}, {}))
    heads_fixed = not bool((graph.node_type == int(NodeType.ATTN_Q)).any())
    if heads and st.heads is not None:
        from .canonical_heads import head_sections, write_heads

        ev, nv = write_heads(st.heads, head_sections(st.heads, g.edge_value, g.node_value),
                             g.edge_value, g.node_value)
        g = g.with_values(ev, nv)
        heads_fixed = True
    if bool(st.scale.any()):
        f, _ = section_factors(st, g.edge_value, g.node_value, "balanced")
        g = apply_element(g, GroupElement(ident, f, {}, {}))
    sets = permutable_sets(graph)
    if sets:
        g = apply_element(g, GroupElement(_sorting_permutation(g, sets), torch.ones(n,
                                          dtype=torch.float64), {}, {}))
    out = g.with_values(g.edge_value.to(dtype), g.node_value.to(dtype))
    return Canonical(out, int(sym.sum()), len(sets), heads_fixed)


# -- permutations ----------------------------------------------------------------------------------

def _node_features(g: ParamGraph) -> Tensor:
    """``[N, F]`` float64: statistics of each node that no permutation of other nodes changes."""
    n = g.num_nodes
    weight = g.weight_edge_mask()
    ve = g.value_edges()
    wv = torch.where(weight[ve], g.edge_value, torch.zeros_like(g.edge_value))
    src, dst = g.endpoints()
    cols = []
    for end in (dst, src):
        node_of_value = end[ve]
        for power in (1, 2, 3):
            cols.append(torch.zeros(n, dtype=torch.float64).index_add(0, node_of_value,
                                                                       wv.pow(power)))
        cols.append(torch.zeros(n, dtype=torch.float64).scatter_reduce(
            0, node_of_value, wv.abs(), "amax", include_self=True))
    values = torch.where(g.node_mask, g.node_value, torch.zeros_like(g.node_value))
    return torch.cat([torch.stack(cols, 1), values], 1)


def _order(keys: Tensor) -> Tensor:
    """Indices that sort the rows of ``keys`` lexicographically (first column first)."""
    arr = keys.numpy()
    return torch.as_tensor(np.lexsort(arr.T[::-1].copy()), dtype=torch.long)


def _sorting_permutation(g: ParamGraph, sets) -> Tensor:
    feats = _node_features(g)
    node_perm = torch.arange(g.num_nodes)
    for s in sets:
        role = s.role.long()
        new_pos = torch.empty_like(s.pos)
        if not s.heads:
            key = torch.zeros(s.size, feats.size(1), dtype=torch.float64)
            key.index_add_(0, s.pos, feats[s.nodes])
            order = _order(key)  # order[k]: the position that goes to k
            rank = torch.empty_like(order)
            rank[order] = torch.arange(s.size)
            new_pos = rank[s.pos]
        else:
            h = s.heads
            d_of = torch.tensor([s.role_size[int(r)] // h for r in role.tolist()])
            head_key = torch.zeros(h, feats.size(1), dtype=torch.float64)
            head_key.index_add_(0, s.pos // d_of, feats[s.nodes])
            head_rank = torch.empty(h, dtype=torch.long)
            head_rank[_order(head_key)] = torch.arange(h)
            for r in role.unique().tolist():
                m = role == r
                size = s.role_size[r]
                d = size // h
                key = torch.zeros(size, feats.size(1), dtype=torch.float64)
                key.index_add_(0, s.pos[m], feats[s.nodes[m]])
                inner_rank = torch.empty(size, dtype=torch.long)
                for hh in range(h):
                    block = torch.arange(hh * d, (hh + 1) * d)
                    inner_rank[block[_order(key[block])]] = torch.arange(d)
                pos = s.pos[m]
                new_pos[m] = head_rank[pos // d] * d + inner_rank[pos]
        node_perm[s.nodes] = s.nodes - s.pos + new_pos
    return node_perm
