"""Heads: an invariant readout per graph, and a weight head that writes new values in place.

:class:`InvariantHead` pools the nodes and the edges of each graph separately (mean and max) and
maps the concatenation with an MLP: :math:`y_G = \\mathrm{MLP}([\\mathrm{mean}_v h_v,
\\max_v h_v, \\mathrm{mean}_e e_e, \\max_e e_e])`. Pooling over a whole graph is invariant to
any permutation of its neurons.

:class:`WeightHead` predicts a change for every learned value in the input graph's exact layout:
per value of every weight edge (a kernel edge gets one output per kernel position, through the
same bins as the encoder), per present node slot. Fixed wiring (residual, normalisation,
identity, attention pairing edges) keeps its value 1 exactly, absent slots stay 0, and a running
variance is updated multiplicatively (``var * exp(delta)``) so it stays positive. The last layers
start at zero, so the initial output is the input network. Edge changes are divided by the
structural scale ``sqrt(fan-in)`` that the encoder multiplied the inputs by, so a unit of hidden
change is a typical weight's size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from .encoders import KernelBins
from .structure import GraphStructure


def graph_pool(x: Tensor, index: Tensor, num_graphs: int) -> Tensor:
    """Mean and max of ``x`` [M, H] per graph: ``[num_graphs, 2H]`` (zeros for empty graphs)."""
    return torch.cat([scatter(x, index, 0, dim_size=num_graphs, reduce="mean"),
                      scatter(x, index, 0, dim_size=num_graphs, reduce="max")], dim=1)


class InvariantHead(nn.Module):
    """Per-graph readout; ``forward(st, node_feats, edge_feats) -> [num_graphs, out_dim]``."""

    def __init__(self, node_dim: int, edge_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * node_dim + 2 * edge_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, st: GraphStructure, h: Tensor, e: Tensor) -> Tensor:
        pooled = torch.cat([graph_pool(h, st.node_graph, st.num_graphs),
                            graph_pool(e, st.edge_graph, st.num_graphs)], dim=1)
        return self.mlp(pooled)


def update_values(st: GraphStructure, bins: KernelBins, edge_value: Tensor, node_value: Tensor,
                  node_mask: Tensor, edge_delta: Tensor, node_delta: Tensor,
                  value_scale: Tensor) -> tuple[Tensor, Tensor]:
    """Add ``edge_delta`` ([E, width] bins) to weight edges and ``node_delta`` ([N, 5]) to present
    slots (the running variance: multiply by ``exp``); returns the new values."""
    per_value = bins.unpool(edge_delta) / value_scale[st.value_edge]
    per_value = per_value * st.weight[st.value_edge].to(per_value.dtype)
    mask = node_mask.to(node_delta.dtype)
    d = node_delta * mask
    node_new = torch.cat([node_value[:, :4] + d[:, :4], node_value[:, 4:] * d[:, 4:].exp()], 1)
    return edge_value + per_value, node_new


class WeightHead(nn.Module):
    """New values from node and edge features; ``forward`` returns ``(edge_value, node_value)``."""

    def __init__(self, hidden: int, kernel_cap: int = 64):
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, kernel_cap))
        self.node_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 5))
        for last in (self.edge_mlp[-1], self.node_mlp[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, st: GraphStructure, bins: KernelBins, h: Tensor, e: Tensor,
                edge_value: Tensor, node_value: Tensor, node_mask: Tensor,
                value_scale: Tensor) -> tuple[Tensor, Tensor]:
        edge_delta = self.edge_mlp(e)[:, : bins.width]
        return update_values(st, bins, edge_value, node_value, node_mask, edge_delta,
                             self.node_mlp(h), value_scale)
