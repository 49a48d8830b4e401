"""Heads: an invariant readout per graph, and a weight head that writes new values in place.

:class:`InvariantHead` pools the nodes and the edges of each graph separately (mean and max) and
maps the concatenation with an MLP: :math:`y_G = \\mathrm{MLP}([\\mathrm{mean}_v h_v,
\\max_v h_v, \\mathrm{mean}_e e_e, \\max_e e_e, o_G, s_G])`, with :math:`s_G` the optional
statistics pathway (:mod:`paramgraph.models.statistics`) and :math:`o_G = \\mathrm{mean}_{v
\\in \\mathrm{out}(G)} h_v` the optional *output readout*: the mean over the network's output
neurons alone, which the whole-graph pools dilute among all the others (an INR's output neuron
carries the image when it reads probe features). Pooling over a whole graph, or over its output
neurons (never permuted), is invariant to any permutation of its neurons.

:class:`WeightHead` predicts a change for every learned value in the input graph's exact layout:
per value of every weight edge (a kernel edge gets one output per kernel position, through the
same bins as the encoder), per present node slot; in ``strict`` mode through equivariant maps
only, so that the output network of ``g theta`` is ``g`` applied to that of ``theta``. Fixed
wiring (residual, normalisation, identity, attention pairing edges) keeps its value 1 exactly,
absent slots stay 0, and a running variance is updated multiplicatively (``var * exp(delta)``)
so it stays positive. The last layers start at zero, so the initial output is the input network.
Edge changes are divided by the structural scale ``sqrt(fan-in)`` that the encoder multiplied the
inputs by, so a unit of hidden change is a typical weight's size.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from paramgraph.types import NodeType

from .encoders import KernelBins
from .layers import scatter_max
from .structure import GraphStructure

COPY_INIT_STD = 0.01  # the copies' initial deviations, relative to a default-initialised layer


def graph_pool(x: Tensor, index: Tensor, num_graphs: int) -> Tensor:
    """Mean and max of ``x`` [M, H] per graph: ``[num_graphs, 2H]`` (zeros for empty graphs).
    The max is :func:`~paramgraph.models.layers.scatter_max` (a fast backward)."""
    return torch.cat([scatter(x, index, 0, dim_size=num_graphs, reduce="mean"),
                      scatter_max(x, index, num_graphs)], dim=1)


class InvariantHead(nn.Module):
    """Per-graph readout; ``forward(st, node_feats, edge_feats) -> [num_graphs, out_dim]``."""

    def __init__(self, node_dim: int, edge_dim: int, hidden: int, out_dim: int,
                 graph_dim: int = 0, output_readout: bool = False):
        super().__init__()
        self.output_readout = output_readout
        width = 2 * node_dim + 2 * edge_dim + graph_dim + (node_dim if output_readout else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, st: GraphStructure, h: Tensor, e: Tensor,
                graph_feats: Tensor | None = None) -> Tensor:
        """``graph_feats``: optional per-graph invariant features ``[num_graphs, graph_dim]``
        (the statistics pathway) concatenated to the pooled nodes and edges."""
        parts = [graph_pool(h, st.node_graph, st.num_graphs),
                 graph_pool(e, st.edge_graph, st.num_graphs)]
        if self.output_readout:
            out = st.node_type == int(NodeType.OUTPUT)
            parts.append(scatter(h[out], st.node_graph[out], 0, dim_size=st.num_graphs,
                                 reduce="mean"))
        if graph_feats is not None:
            parts.append(graph_feats)
        return self.mlp(torch.cat(parts, dim=1))


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
    """New values from the backbone's final features; see the module docstring.

    Edge changes: a bias-free map of the value channels ``E`` (``channels > 0``) plus, when
    unconstrained, an MLP of the hidden edge features. Node changes: when ``constrained``
    (``strict``), the equivariant slots (a plain neuron's bias, a normalised neuron's norm weight
    and shift) come from bias-free maps of ``X`` and the invariant ones (a normalised neuron's
    bias, running mean, running variance) from an MLP of ``h``; unconstrained, all five slots
    get both. Every last layer starts at zero.
    """

    def __init__(self, hidden: int, channels: int, kernel_cap: int, constrained: bool,
                 copies: int = 1, edge_width: int | None = None):
        super().__init__()
        w = hidden if edge_width is None else edge_width
        self.constrained, self.copies, self.kernel_cap = constrained, copies, kernel_cap
        last = functools.partial(_zero_last, copies=copies)
        self.edge_mlp = None if constrained else last(nn.Sequential(
            nn.Linear(w, w), nn.SiLU(), nn.Linear(w, kernel_cap * copies)))
        self.edge_out = (last(nn.Linear(channels, kernel_cap * copies, bias=False)) if channels
                         else None)
        self.slots = n = 3 if constrained else 5
        self.node_eq = last(nn.Linear(channels, n * copies, bias=False)) if channels else None
        self.node_inv = last(nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(),
                                           nn.Linear(hidden, n * copies)))

    def forward(self, st: GraphStructure, bins: KernelBins, x: Tensor | None, ev: Tensor | None,
                h: Tensor, e: Tensor, edge_value: Tensor, node_value: Tensor, node_mask: Tensor,
                value_scale: Tensor):
        """Returns the new ``(edge_value [V], node_value [N, 5])``; with ``copies = k > 1``, a
        list of ``k`` such pairs (output channel expansion: ``k`` edited networks)."""
        k = self.copies
        edge_delta = torch.zeros(st.num_edges, k, bins.width, dtype=h.dtype, device=h.device)
        if self.edge_mlp is not None:
            edge_delta = edge_delta + self._per_copy(self.edge_mlp(e))[..., : bins.width]
        if self.edge_out is not None:
            edge_delta = edge_delta + self._per_copy(self.edge_out(ev))[..., : bins.width]
        inv = self._per_copy(self.node_inv(h))
        eq = self._per_copy(self.node_eq(x)) if self.node_eq is not None \
            else torch.zeros_like(inv)
        pairs = [self._update(st, bins, edge_value, node_value, node_mask, edge_delta[:, c],
                              inv[:, c], eq[:, c], value_scale) for c in range(k)]
        return pairs[0] if k == 1 else pairs

    def _per_copy(self, out: Tensor) -> Tensor:
        """``[M, copies * width]`` -> ``[M, copies, width]``."""
        return out.view(out.shape[0], self.copies, -1)

    def _update(self, st, bins, edge_value, node_value, node_mask, edge_delta, inv, eq,
                value_scale):
        """One edited network: the node changes assembled, then :func:`update_values`."""
        if self.constrained:
            node_delta = torch.stack([torch.where(st.plain, eq[:, 0], inv[:, 0]), eq[:, 1],
                                      eq[:, 2], inv[:, 1], inv[:, 2]], 1)
        else:
            node_delta = inv + eq
        return update_values(st, bins, edge_value, node_value, node_mask, edge_delta, node_delta,
                             value_scale)


def _zero_last(module: nn.Module, copies: int = 1) -> nn.Module:
    """Start the last layer at zero, so the first output is the input network. With ``copies
    > 1`` its rows (``copies`` blocks, one per edited network) start instead as small random
    deviations that sum to zero over the copies: identical copies would get identical gradients
    and never differ; zero-sum deviations keep the mean of the copies' weights the input's."""
    last = module[-1] if isinstance(module, nn.Sequential) else module
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    if copies > 1:
        with torch.no_grad():
            w = last.weight.view(copies, -1, last.weight.shape[1])
            w.normal_(0.0, COPY_INIT_STD / last.weight.shape[1] ** 0.5)
            w.sub_(w.mean(0, keepdim=True))
    return module
