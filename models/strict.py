"""``mode="strict"``: layers that are themselves exactly scale- and sign-equivariant (ScaleGMN family).

Every neuron ``n`` carries a factor ``f_n`` of the group (positive scale, sign, both, or none);
a weight edge ``u -> v`` transforms by ``t_uv = a_v / f_u`` with ``a_v = f_v`` for a plain neuron
and ``1`` for a normalised one (see :mod:`models.gauge`). The features come in two kinds:

* **equivariant** channels ``X_n`` in R^C per node (``X_n -> f_n X_n``) and ``E_uv`` in R^C per
  edge (``E_uv -> t_uv E_uv``);
* **invariant** channels ``I_n``, ``J_uv`` in R^H.

Building blocks (all exactly equivariant, checked by the tests):

* :func:`canon`: the invariant of an equivariant vector: ``x / ||x||`` where the vector can be
  scaled, then multiplied by the sign of its largest-magnitude entry where it can be flipped.
  Every invariant function below reads equivariant channels only through ``canon``.
* *Equivariant linear maps* are linear maps without bias across channels (all channels of one
  node/edge share the same factor). *Nonlinearities* are gates: an equivariant vector times
  ``tanh`` of an invariant function, ``(x W) * tanh(g(inv))``.
* *Products*: ``E_uv * X_u`` transforms by ``a_v``; its mean over a neuron's incoming edges is the
  forward equivariant message ``M_v``. For plain neurons (and neurons without symmetry) ``a_v``
  is ``f_v`` and ``M_v`` updates ``X_v``; for a normalised symmetric neuron it is invariant and
  feeds the invariant channels only.
* Where a neuron or edge has no continuous symmetry (inputs, outputs, most normalised neurons
  that feed residual additions, fixed wiring) its equivariant channels are invariant, so
  invariant features are added to them; this is what starts the products at the input neurons.

Layer (:class:`StrictLayer`):

.. math::
    J' &= \\mathrm{LN}(J + \\mathrm{MLP}[J, \\mathrm{canon}(E), I_u, I_v]) \\\\
    E' &= E + (E W_e) \\odot \\tanh(G_e J') \\;(+\\, [t \\equiv 1]\\, T_e J') \\\\
    M_v &= \\mathrm{mean}_{u \\to v}\\, (E'_{uv} W_a) \\odot (X_u W_b) \\\\
    I' &= \\mathrm{LN}(I + \\mathrm{MLP}[I, \\mathrm{canon}(X, M), \\oplus_{\\to} J', \\oplus_{\\leftarrow} J']) \\\\
    X' &= X + (X W_c) \\odot \\tanh(G_x I') + [a \\equiv f]\\,(M W_d) \\odot \\tanh(G_m I')
          (+\\, [f \\equiv 1]\\, T_x I')

``canon(X, M)`` canonicalises the concatenation jointly where both transform by the same factor,
so ratios between a neuron's bias and its incoming weights are seen. Information flows both ways
along the network: forward through the equivariant products and the invariant aggregation
:math:`\\oplus_{\\to}`, backward through :math:`\\oplus_{\\leftarrow}` and the invariant gates.
There is no equivariant backward product (it would need ``1 / E``); this, and the fact that every
nonlinearity is a gate, is why this mode is less expressive than ``quasi``.

Encoder: ``E^0 = bins(s * w) K`` (linear, no bias, on the structurally scaled kernel values),
``X^0`` = a bias-free linear map of the neuron's equivariant slots (bias of a plain neuron; norm
weight and shift of a normalised one); ``I^0``, ``J^0`` are the ordinary encoders applied to the
canonicalised values (running statistics and the bias of a normalised neuron are invariant and
enter as they are). Heads: the invariant head pools ``[I, canon(X, M)]`` and ``[J, canon(E)]``;
the weight head adds ``bins(E W_o)`` to the edge values and bias-free maps of ``X`` to the
equivariant slots (invariant maps of ``I`` to the invariant ones), so the output network of
``g theta`` is ``g`` applied to the output network of ``theta``, in the input's own coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .encoders import EdgeEncoder, KernelBins, NodeEncoder, node_slot_inputs
from .heads import InvariantHead, update_values
from .layers import EdgeAggregation
from .structure import GraphStructure


def canon(x: Tensor, scaled: Tensor, signed: Tensor) -> Tensor:
    """Invariant of ``x`` [R, C] whose rows transform by one factor each: rows with ``scaled``
    are divided by their norm (zero rows stay zero), rows with ``signed`` are multiplied by the
    sign of their largest-magnitude entry. Other rows are returned as they are."""
    n2 = x.square().sum(1, keepdim=True)
    # Norms below sqrt(tiny) count as zero: dividing by them overflowed the backward pass (NaN
    # gradients for networks with denormal weights, e.g. weights of always-zero input pixels).
    safe = torch.where(n2 > torch.finfo(n2.dtype).tiny ** 0.5, n2, torch.ones_like(n2)).sqrt()
    x = torch.where(scaled.unsqueeze(1), x / safe, x)
    pivot = x.gather(1, x.abs().argmax(1, keepdim=True))
    flip = signed.unsqueeze(1) & (pivot < 0)
    return torch.where(flip, -x, x)


class _Kinds:
    """Which factor every node/edge carries (computed once per forward)."""

    def __init__(self, st: GraphStructure):
        self.node_scale, self.node_sign = st.scale, st.sign
        self.a_scale, self.a_sign = st.scale & st.plain, st.sign & st.plain
        self.same = st.plain | ~(st.scale | st.sign)  # a_n is f_n
        self.node_trivial = ~(st.scale | st.sign)
        self.edge_scale, self.edge_sign = st.edge_kinds()
        self.edge_trivial = ~(self.edge_scale | self.edge_sign)

    def canon_xm(self, x: Tensor, m: Tensor) -> Tensor:
        joint = canon(torch.cat([x, m], 1), self.node_scale, self.node_sign)
        sep = torch.cat([canon(x, self.node_scale, self.node_sign),
                         canon(m, self.a_scale, self.a_sign)], 1)
        return torch.where(self.same.unsqueeze(1), joint, sep)


def _lin(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False)


class StrictEncoder(nn.Module):
    """Values to ``(X, E, I, J)``; see the module docstring."""

    def __init__(self, hidden: int, channels: int, kernel_cap: int = 64):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(channels, kernel_cap))
        nn.init.normal_(self.kernel, std=1.0 / 3.0)
        self.slots = _lin(2, channels)
        self.edge_enc = EdgeEncoder(hidden, kernel_cap)
        self.node_enc = NodeEncoder(hidden)
        self.node_triv = _lin(hidden, channels)
        self.edge_triv = _lin(hidden, channels)

    def forward(self, st: GraphStructure, kinds: _Kinds, bins: KernelBins, binned: Tensor,
                node_value: Tensor, node_mask: Tensor):
        e_eq = binned @ self.kernel[:, : bins.width].t()
        j = self.edge_enc(st, bins, canon(binned, kinds.edge_scale, kinds.edge_sign))
        e_eq = e_eq + kinds.edge_trivial.unsqueeze(1) * self.edge_triv(j)

        slots = node_slot_inputs(node_value, node_mask)
        plain = st.plain.unsqueeze(1)
        eq_slots = torch.where(plain, torch.cat([slots[:, :1], torch.zeros_like(slots[:, :1])], 1),
                               slots[:, 1:3])
        c = canon(eq_slots, kinds.node_scale, kinds.node_sign)
        inv_slots = torch.where(plain, torch.cat([c[:, :1], slots[:, 1:]], 1),
                                torch.cat([slots[:, :1], c, slots[:, 3:]], 1))
        i = self.node_enc(st, inv_slots, node_mask)
        x_eq = self.slots(eq_slots) + kinds.node_trivial.unsqueeze(1) * self.node_triv(i)
        return x_eq, e_eq, i, j


class StrictLayer(nn.Module):
    """One scale/sign-equivariant round; see the module docstring."""

    def __init__(self, hidden: int, channels: int, aggrs: Sequence[str] = ("sum", "mean", "max")):
        super().__init__()
        h, c = hidden, channels
        self.edge_lin = nn.Linear(h, h)
        self.edge_canon = _lin(c, h)
        self.src_lin = _lin(h, h)
        self.dst_lin = _lin(h, h)
        self.edge_out = nn.Linear(h, h)
        self.edge_norm = nn.LayerNorm(h)
        self.we, self.ge, self.te = _lin(c, c), nn.Linear(h, c), _lin(h, c)
        self.wa, self.wb = _lin(c, c), _lin(c, c)
        self.aggregate = EdgeAggregation(aggrs)
        k = len(self.aggregate.aggrs)
        self.node_mlp = nn.Sequential(nn.Linear(h + 2 * c + 2 * k * h, h), nn.SiLU(),
                                      nn.Linear(h, h))
        self.node_norm = nn.LayerNorm(h)
        self.wc, self.gx = _lin(c, c), nn.Linear(h, c)
        self.wd, self.gm = _lin(c, c), nn.Linear(h, c)
        self.tx = _lin(h, c)
        self.act = nn.SiLU()

    def forward(self, st: GraphStructure, kinds: _Kinds, x: Tensor, e: Tensor, i: Tensor,
                j: Tensor, edge_index: Tensor):
        src, dst = edge_index[0], edge_index[1]
        ce = canon(e, kinds.edge_scale, kinds.edge_sign)
        pre = (self.edge_lin(j) + self.edge_canon(ce) + self.src_lin(i).index_select(0, src)
               + self.dst_lin(i).index_select(0, dst))
        j = self.edge_norm(j + self.edge_out(self.act(pre)))
        e = e + self.we(e) * torch.tanh(self.ge(j)) + kinds.edge_trivial.unsqueeze(1) * self.te(j)

        msg = self.wa(e) * self.wb(x).index_select(0, src)
        m = torch.zeros_like(x).index_add(0, dst, msg)
        deg = st.in_degree.clamp_min(1).to(x.dtype).unsqueeze(1)
        m = m / deg
        cxm = kinds.canon_xm(x, m)
        fwd = self.aggregate(j, edge_index, st.in_degree, st.in_order)
        bwd = self.aggregate(j, edge_index, st.out_degree, st.out_order, reverse=True)
        i = self.node_norm(i + self.node_mlp(torch.cat([i, cxm, fwd, bwd], 1)))
        x = (x + self.wc(x) * torch.tanh(self.gx(i))
             + kinds.same.unsqueeze(1) * self.wd(m) * torch.tanh(self.gm(i))
             + kinds.node_trivial.unsqueeze(1) * self.tx(i))
        return x, e, i, j, m


class StrictNet(nn.Module):
    """Encoder, ``layers`` strict layers and the head; used by :class:`~models.MetaNet`."""

    def __init__(self, task: str, out_dim: int, hidden: int, layers: int, channels: int,
                 aggrs: Sequence[str], kernel_cap: int):
        super().__init__()
        self.task = task
        self.kernel_cap = kernel_cap
        self.encoder = StrictEncoder(hidden, channels, kernel_cap)
        self.layers = nn.ModuleList([StrictLayer(hidden, channels, aggrs) for _ in range(layers)])
        if task == "invariant":
            self.head = InvariantHead(hidden + 2 * channels, hidden + channels, hidden, out_dim)
        else:
            self.edge_out = _lin(channels, kernel_cap)
            self.node_eq = _lin(channels, 3)
            self.node_inv = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(),
                                          nn.Linear(hidden, 3))
            for last in (self.edge_out, self.node_eq, self.node_inv[-1]):
                nn.init.zeros_(last.weight)
            nn.init.zeros_(self.node_inv[-1].bias)

    def forward(self, st: GraphStructure, edge_index: Tensor, edge_value: Tensor,
                node_value: Tensor, node_mask: Tensor, value_scale: Tensor):
        kinds = _Kinds(st)
        bins = KernelBins(st, self.kernel_cap)
        binned = bins.pool(edge_value * value_scale[st.value_edge])
        x, e, i, j = self.encoder(st, kinds, bins, binned, node_value, node_mask)
        m = torch.zeros_like(x)
        for layer in self.layers:
            x, e, i, j, m = layer(st, kinds, x, e, i, j, edge_index)
        if self.task == "invariant":
            nodes = torch.cat([i, kinds.canon_xm(x, m)], 1)
            edges = torch.cat([j, canon(e, kinds.edge_scale, kinds.edge_sign)], 1)
            return self.head(st, nodes, edges)
        eq, inv = self.node_eq(x), self.node_inv(i)
        node_delta = torch.stack([torch.where(st.plain, eq[:, 0], inv[:, 0]), eq[:, 1], eq[:, 2],
                                  inv[:, 1], inv[:, 2]], 1)
        edge_delta = self.edge_out(e)[:, : bins.width]
        return update_values(st, bins, edge_value, node_value, node_mask, edge_delta,
                             node_delta, value_scale)
