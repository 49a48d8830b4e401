"""Message passing with edge *and* node updates, in both directions of the network's data flow.

:class:`EdgeNodeLayer` (modes ``perm`` and ``quasi``). With node features :math:`h` and edge
features :math:`e` (every edge of the parameter graph, weights and fixed wiring alike; the edge
type is part of :math:`e` from the encoder):

.. math::
    e'_{uv} &= \\mathrm{LN}\\big(e_{uv} + W_2\\,\\sigma(W_1 e_{uv} + U h_u + V h_v + b_1) + b_2\\big)

    m^{\\rightarrow}_v &= \\bigoplus_{u:\\,(u,v)\\in\\mathcal{E}} e'_{uv} \\qquad
    m^{\\leftarrow}_u = \\bigoplus_{v:\\,(u,v)\\in\\mathcal{E}} e'_{uv}

    h'_v &= \\mathrm{LN}\\big(h_v + \\mathrm{MLP}([h_v,\\, m^{\\rightarrow}_v,\\, m^{\\leftarrow}_v])\\big)

where :math:`\\bigoplus` concatenates several aggregators (default sum, mean and max; the sum is
divided by :math:`\\sqrt{\\deg}` so that a neuron with thousands of inputs stays in range, which
keeps it a degree-aware sum, not a mean). :math:`m^{\\rightarrow}` follows the data flow (from a
neuron's inputs), :math:`m^{\\leftarrow}` goes against it (from the neurons it feeds). The edge
MLP's first layer is computed as node projections gathered onto edges (``U h`` and ``V h`` on
the N nodes, not on the E edges), which is what keeps a layer at two ``E x H x H`` matmuls.

Every operation is a function of a node's or an edge's own features and of multisets of its
neighbours', so the layer is permutation equivariant: permuting the neurons of a network
permutes the outputs the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from .structure import GraphStructure

AGGREGATORS = ("sum", "mean", "max", "min", "std")


class EdgeAggregation(MessagePassing):
    """Aggregate edge features onto nodes, along (``reverse=False``) or against the edges.

    Returns ``[N, len(aggrs) * H]``, one block per aggregator in the order given. ``sum`` is
    divided by ``sqrt(degree)``; nodes without edges get zeros. The reductions are segment
    reductions over the edges sorted by their receiving node (``order``, from
    :class:`~models.structure.GraphStructure`; ``None`` when the edges are already sorted): one
    shared sum for sum/mean/std, and a max whose backward is a cheap per-segment copy (a scatter
    max's backward is several times slower on CPU).
    """

    def __init__(self, aggrs: Sequence[str] = ("sum", "mean", "max")):
        super().__init__(aggr=None, node_dim=0)
        aggrs = list(aggrs)
        for a in aggrs:
            if a not in AGGREGATORS:
                raise ValueError(f"unknown aggregator '{a}'; choose from {AGGREGATORS}")
        if not aggrs:
            raise ValueError("at least one aggregator is needed")
        self.aggrs = aggrs

    def forward(self, edge_attr: Tensor, edge_index: Tensor, degree: Tensor,
                order: Tensor | None = None, reverse: bool = False) -> Tensor:
        """``degree``: [N] edges arriving at each node in the chosen direction; ``order``: the
        stable argsort of the receiving ends (``None``: already sorted)."""
        index = edge_index.flip(0) if reverse else edge_index
        n = degree.numel()
        return self.propagate(index, edge_attr=edge_attr, degree=degree, order=order,
                              size=(n, n))

    def message(self, edge_attr: Tensor) -> Tensor:
        return edge_attr

    def aggregate(self, inputs: Tensor, index: Tensor, degree: Tensor,
                  order: Tensor | None = None, dim_size: int | None = None) -> Tensor:
        if order is not None:
            inputs = inputs.index_select(0, order)
        lengths = degree
        deg = degree.clamp_min(1).to(inputs.dtype).unsqueeze(1)
        has = (degree > 0).unsqueeze(1)
        total = None
        if {"sum", "mean", "std"} & set(self.aggrs):
            total = torch.segment_reduce(inputs, "sum", lengths=lengths, unsafe=True)
        out = []
        for a in self.aggrs:
            if a == "sum":
                out.append(total / deg.sqrt())
            elif a == "mean":
                out.append(total / deg)
            elif a in ("max", "min"):
                r = torch.segment_reduce(inputs, a, lengths=lengths, unsafe=True)
                out.append(torch.where(has, r, torch.zeros_like(r)))
            else:  # std
                sq = torch.segment_reduce(inputs.square(), "sum", lengths=lengths, unsafe=True)
                out.append((sq / deg - (total / deg).square()).clamp_min(1e-12).sqrt())
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class EdgeNodeLayer(nn.Module):
    """One round of edge update then bidirectional node update; see the module docstring."""

    def __init__(self, hidden: int, aggrs: Sequence[str] = ("sum", "mean", "max")):
        super().__init__()
        self.edge_lin = nn.Linear(hidden, hidden)
        self.src_lin = nn.Linear(hidden, hidden, bias=False)
        self.dst_lin = nn.Linear(hidden, hidden, bias=False)
        self.edge_out = nn.Linear(hidden, hidden)
        self.edge_norm = nn.LayerNorm(hidden)
        self.aggregate = EdgeAggregation(aggrs)
        k = len(self.aggregate.aggrs)
        self.node_mlp = nn.Sequential(nn.Linear((1 + 2 * k) * hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden))
        self.node_norm = nn.LayerNorm(hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, e: Tensor, st: GraphStructure) -> tuple[Tensor, Tensor]:
        """``h`` [N, H], ``e`` [E, H] and the batch's structure; returns the new ``(h, e)``."""
        pre = (self.edge_lin(e) + self.src_lin(h).index_select(0, st.src)
               + self.dst_lin(h).index_select(0, st.dst))
        e = self.edge_norm(e + self.edge_out(self.act(pre)))
        fwd = self.aggregate(e, st.edge_index, st.in_degree, st.in_order)
        bwd = self.aggregate(e, st.edge_index, st.out_degree, st.out_order, reverse=True)
        h = self.node_norm(h + self.node_mlp(torch.cat([h, fwd, bwd], dim=1)))
        return h, e
