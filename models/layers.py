"""Message passing with edge *and* node updates, in both directions of the network's data flow.

:class:`EdgeNodeLayer` updates the hidden features: node features :math:`h`, edge features
:math:`e` (every edge of the parameter graph, weights and fixed wiring alike; the edge type is
part of :math:`e` from the encoder), with optional extra per-edge / per-node inputs
:math:`\\xi` / :math:`\\zeta` (the read-out of the value channels):

.. math::
    e'_{uv} &= \\mathrm{LN}\\big(e_{uv} + W_2\\,\\sigma(W_1 e_{uv} + U h_u + V h_v
               + P \\xi_{uv} + b_1) + b_2\\big)

    m^{\\rightarrow}_v &= \\bigoplus_{u:\\,(u,v)\\in\\mathcal{E}} e'_{uv} \\qquad
    m^{\\leftarrow}_u = \\bigoplus_{v:\\,(u,v)\\in\\mathcal{E}} e'_{uv}

    h'_v &= \\mathrm{LN}\\big(h_v + \\mathrm{MLP}([h_v,\\, \\zeta_v,\\, m^{\\rightarrow}_v,\\,
             m^{\\leftarrow}_v])\\big)

where :math:`\\bigoplus` concatenates several aggregators (default sum, mean and max; the sum is
divided by :math:`\\sqrt{\\deg}` so that a neuron with thousands of inputs stays in range, which
keeps it a degree-aware sum, not a mean). :math:`m^{\\rightarrow}` follows the data flow (from a
neuron's inputs), :math:`m^{\\leftarrow}` goes against it (from the neurons it feeds). The edge
MLP's first layer is computed as node projections gathered onto edges (``U h`` and ``V h`` on
the N nodes, not on the E edges), which keeps a layer at two ``E x W x W`` matmuls, ``W`` the
width of the edge features (``edge_width``; MetaNet's default is ``min(H, 32)``: edges
outnumber neurons, so ``W`` rather than the node width ``H`` sets most of a round's cost).

:class:`ValueLayer` is one round of the backbone: the hidden update above, interleaved with an
update of the *value channels* (``X`` [N, C] per node, ``E`` [E, C] per edge), which are built
linearly from the network's values and changed only by bias-free linear maps, gates and
products, so that they can stay exactly scale/sign equivariant in ``strict`` mode (with a
:class:`~paramgraph.models.readers.StrictReader`; with a :class:`~paramgraph.models.readers.FreeReader` the masks are
all ones and the reads are ``symlog``):

.. math::
    e' &= \\text{edge update}(e, h;\\ \\xi = \\mathrm{read}(E)) \\\\
    E' &= E + (E W_e) \\odot \\tanh(G_e e') + [t \\equiv 1]\\, T_e e' \\\\
    M_v &= \\mathrm{mean}_{u \\to v}\\, (E'_{uv} W_a) \\odot (X_u W_b) \\\\
    h' &= \\text{node update}(h, e';\\ \\zeta = \\mathrm{read}(X, M)) \\\\
    X' &= X + (X W_c) \\odot \\tanh(G_x h') + [a \\equiv f]\\,(M W_d) \\odot \\tanh(G_m h')
          + [f \\equiv 1]\\, T_x h'

The product :math:`E_{uv} X_u` is a linear layer of the read network applied to ``C`` feature
vectors carried by its neurons: the value channels can simulate forward passes (the role probe
features play in Neural Graphs), which plain LN-MLP features of compressed values cannot. There
is no product against the data flow (it would need ``1 / E`` to stay equivariant); backward
information travels through :math:`m^{\\leftarrow}` and the gates.

Every operation is a function of a node's or an edge's own features and of multisets of its
neighbours', so both layers are permutation equivariant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .readers import masked
from .structure import GraphStructure

AGGREGATORS = ("sum", "mean", "max", "min", "std")


def scatter_max(x: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Max of the rows of ``x`` [M, H] per segment ``index`` [M] (any order): ``[num_segments,
    H]``, zeros for empty segments. Its backward splits the gradient evenly among tied maxima,
    as ``scatter_reduce``'s and ``segment_reduce``'s do, in a few passes over ``x``. On one CPU
    thread a [14k, 96] graph pooling onto 64 graphs takes 4.2-4.5 ms forward and backward (8.6-9.9
    ms with a bool tie mask converted to float, 16 ms with ``scatter_reduce``'s own backward),
    and an aggregation onto nodes as long as a sorted ``segment_reduce``, whose input needs no
    sort."""
    return _ScatterMax.apply(x, index, num_segments)


class _ScatterMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, num_segments: int) -> Tensor:
        rows = index.unsqueeze(1).expand_as(x)
        out = x.new_zeros(num_segments, x.shape[1]).scatter_reduce_(0, rows, x, "amax",
                                                                    include_self=False)
        ctx.save_for_backward(x, index, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, index, out = ctx.saved_tensors
        # 1.0 where an edge holds its segment's maximum: eq_ in place on the gathered maxima
        # gives the float mask in one pass (a bool mask's conversion to float was a second,
        # slower one)
        hit = out.index_select(0, index).eq_(x)
        ties = torch.zeros_like(out).index_add_(0, index, hit)
        return hit.mul_((grad / ties.clamp_min(1)).index_select(0, index)), None, None


def gate_tanh(x: Tensor) -> Tensor:
    """``tanh(x)`` as ``2 sigmoid(2x) - 1`` (within 2e-7 of ``torch.tanh`` in float32, the same
    gradient ``1 - y**2``). Why: ATen's vectorised ``tanh`` is several times slower than its
    ``sigmoid`` (on this project's AVX-512 machine, one thread, a [13824, 32] float32 tensor:
    forward and backward 2.4 ms against 1.1 ms), and the value channels' gates take it on
    edge-sized tensors in every round. Not exactly odd (``gate_tanh(-x)`` may differ from
    ``-gate_tanh(x)`` in the last bit), which no gate needs: their inputs are hidden features."""
    return _GateTanh.apply(x)


class _GateTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class EdgeAggregation(nn.Module):
    """Aggregate edge features onto nodes, along (``reverse=False``) or against the edges.

    Returns ``[N, len(aggrs) * H]``, one block per aggregator in the order given. ``sum`` is
    divided by ``sqrt(degree)``; nodes without edges get zeros. Scatter reductions onto the
    receiving nodes (edges in any order, so neither direction needs a sort): one shared sum for
    sum/mean/std, and :func:`scatter_max` for max/min.
    """

    def __init__(self, aggrs: Sequence[str] = ("sum", "mean", "max")):
        super().__init__()
        aggrs = list(aggrs)
        for a in aggrs:
            if a not in AGGREGATORS:
                raise ValueError(f"unknown aggregator '{a}'; choose from {AGGREGATORS}")
        if not aggrs:
            raise ValueError("at least one aggregator is needed")
        self.aggrs = aggrs

    def forward(self, edge_attr: Tensor, edge_index: Tensor, degree: Tensor,
                reverse: bool = False) -> Tensor:
        """``degree``: [N] edges arriving at each node in the chosen direction."""
        index = edge_index[0] if reverse else edge_index[1]
        n = degree.numel()
        deg = degree.clamp_min(1).to(edge_attr.dtype).unsqueeze(1)
        total = None
        if {"sum", "mean", "std"} & set(self.aggrs):
            total = edge_attr.new_zeros(n, edge_attr.shape[1]).index_add_(0, index, edge_attr)
        out = []
        for a in self.aggrs:
            if a == "sum":
                out.append(total / deg.sqrt())
            elif a == "mean":
                out.append(total / deg)
            elif a == "max":
                out.append(scatter_max(edge_attr, index, n))
            elif a == "min":
                out.append(-scatter_max(-edge_attr, index, n))
            else:  # std
                sq = edge_attr.new_zeros(n, edge_attr.shape[1]).index_add_(0, index,
                                                                           edge_attr.square())
                out.append((sq / deg - (total / deg).square()).clamp_min(1e-12).sqrt())
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class EdgeNodeLayer(nn.Module):
    """Edge update then bidirectional node update of the hidden features; see module doc."""

    def __init__(self, hidden: int, aggrs: Sequence[str] = ("sum", "mean", "max"),
                 edge_extra: int = 0, node_extra: int = 0, edge_width: int | None = None):
        super().__init__()
        w = hidden if edge_width is None else edge_width
        self.edge_lin = nn.Linear(w, w)
        self.src_lin = nn.Linear(hidden, w, bias=False)
        self.dst_lin = nn.Linear(hidden, w, bias=False)
        self.extra_lin = nn.Linear(edge_extra, w, bias=False) if edge_extra else None
        self.edge_out = nn.Linear(w, w)
        self.edge_norm = nn.LayerNorm(w)
        self.aggregate = EdgeAggregation(aggrs)
        k = len(self.aggregate.aggrs)
        self.node_mlp = nn.Sequential(nn.Linear(hidden + 2 * k * w + node_extra, hidden),
                                      nn.SiLU(), nn.Linear(hidden, hidden))
        self.node_norm = nn.LayerNorm(hidden)
        self.act = nn.SiLU()

    def edge_update(self, h: Tensor, e: Tensor, st: GraphStructure,
                    extra: Tensor | None = None) -> Tensor:
        pre = (self.edge_lin(e) + self.src_lin(h).index_select(0, st.src)
               + self.dst_lin(h).index_select(0, st.dst))
        if self.extra_lin is not None:
            pre = pre + self.extra_lin(extra)
        return self.edge_norm(e + self.edge_out(self.act(pre)))

    def node_update(self, h: Tensor, e: Tensor, st: GraphStructure,
                    extra: Tensor | None = None) -> Tensor:
        fwd = self.aggregate(e, st.edge_index, st.in_degree)
        bwd = self.aggregate(e, st.edge_index, st.out_degree, reverse=True)
        parts = [h] + ([extra] if extra is not None else []) + [fwd, bwd]
        return self.node_norm(h + self.node_mlp(torch.cat(parts, dim=1)))

    def forward(self, h: Tensor, e: Tensor, st: GraphStructure) -> tuple[Tensor, Tensor]:
        """``h`` [N, H], ``e`` [E, H] and the batch's structure; returns the new ``(h, e)``."""
        e = self.edge_update(h, e, st)
        return self.node_update(h, e, st), e


def _lin(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False)


class ValueLayer(nn.Module):
    """One backbone round: hidden and value-channel updates; see the module docstring.

    ``channels == 0`` gives a plain :class:`EdgeNodeLayer` round (no value channels).
    """

    def __init__(self, hidden: int, channels: int, aggrs: Sequence[str] = ("sum", "mean", "max"),
                 edge_width: int | None = None):
        super().__init__()
        h, c = hidden, channels
        w = hidden if edge_width is None else edge_width
        self.channels = c
        self.hidden = EdgeNodeLayer(h, aggrs, edge_extra=c, node_extra=2 * c, edge_width=w)
        if not c:
            return
        self.we, self.ge, self.te = _lin(c, c), nn.Linear(w, c), _lin(w, c)
        self.wa, self.wb = _lin(c, c), _lin(c, c)
        self.wc, self.gx = _lin(c, c), nn.Linear(h, c)
        self.wd, self.gm = _lin(c, c), nn.Linear(h, c)
        self.tx = _lin(h, c)

    def forward(self, st: GraphStructure, reader, x: Tensor | None, ev: Tensor | None, h: Tensor,
                e: Tensor):
        """Returns the new ``(x, ev, h, e, m)``: value channels of nodes and edges, hidden
        features, and the forward value message ``m`` (``None`` without value channels)."""
        if not self.channels:
            h, e = self.hidden(h, e, st)
            return x, ev, h, e, None
        e = self.hidden.edge_update(h, e, st, reader.edges(ev))
        ev = reader.add_on_unmoved_edges(ev + self.we(ev) * gate_tanh(self.ge(e)), self.te, e)
        msg = self.wa(ev) * self.wb(x).index_select(0, st.src)
        # summed in float32 at least: under bfloat16 autocast msg is bfloat16, whose sums over
        # thousands of inputs would keep three significant digits
        acc = torch.promote_types(torch.promote_types(msg.dtype, x.dtype), torch.float32)
        m = x.new_zeros(x.shape, dtype=acc).index_add_(0, st.dst, msg.to(acc))
        m = m / st.in_degree.clamp_min(1).to(acc).unsqueeze(1)
        h = self.hidden.node_update(h, e, st, reader.nodes(x, m))
        x = (x + self.wc(x) * gate_tanh(self.gx(h))
             + masked(reader.same, self.wd(m) * gate_tanh(self.gm(h)))
             + masked(reader.node_trivial, self.tx(h)))
        return x, ev, h, e, m
