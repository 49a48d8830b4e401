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
from torch_geometric.nn.aggr import MultiAggregation
from torch_geometric.utils import scatter

AGGREGATORS = ("sum", "mean", "max", "min", "std")


class EdgeAggregation(MessagePassing):
    """Aggregate edge features onto nodes, along (``forward``) or against the edges.

    Returns ``[N, len(aggrs) * H]``. The ``sum`` block is divided by ``sqrt(degree)``.
    """

    def __init__(self, aggrs: Sequence[str] = ("sum", "mean", "max")):
        aggrs = list(aggrs)
        for a in aggrs:
            if a not in AGGREGATORS:
                raise ValueError(f"unknown aggregator '{a}'; choose from {AGGREGATORS}")
        super().__init__(aggr=MultiAggregation(aggrs, mode="cat"), node_dim=0)
        self.aggrs = aggrs

    def forward(self, edge_attr: Tensor, edge_index: Tensor, num_nodes: int,
                reverse: bool = False) -> Tensor:
        index = edge_index.flip(0) if reverse else edge_index
        out = self.propagate(index, edge_attr=edge_attr, size=(num_nodes, num_nodes))
        if "sum" in self.aggrs:
            h = edge_attr.size(1)
            i = self.aggrs.index("sum")
            deg = scatter(torch.ones_like(index[1], dtype=edge_attr.dtype), index[1], 0,
                          dim_size=num_nodes, reduce="sum").clamp_min(1).sqrt().unsqueeze(1)
            out = torch.cat([out[:, : i * h], out[:, i * h : (i + 1) * h] / deg,
                             out[:, (i + 1) * h :]], dim=1)
        return out

    def message(self, edge_attr: Tensor) -> Tensor:
        return edge_attr


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

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """``h`` [N, H], ``e`` [E, H], ``edge_index`` [2, E]; returns the new ``(h, e)``."""
        src, dst = edge_index[0], edge_index[1]
        pre = self.edge_lin(e) + self.src_lin(h)[src] + self.dst_lin(h)[dst]
        e = self.edge_norm(e + self.edge_out(self.act(pre)))
        n = h.size(0)
        fwd = self.aggregate(e, edge_index, n)
        bwd = self.aggregate(e, edge_index, n, reverse=True)
        h = self.node_norm(h + self.node_mlp(torch.cat([h, fwd, bwd], dim=1)))
        return h, e
