"""The backbone shared by all three modes: encoders, ``layers`` rounds, and a head.

Only the *reader* differs between modes (:mod:`paramgraph.models.readers`): ``strict`` reads value channels
through exact canonicalisation and keeps them equivariant; ``perm`` and ``quasi`` read them
freely (``quasi`` has gauged its input first, see :mod:`paramgraph.models.gauge`). The same architecture
in every mode is what lets the project measure what the gauge map buys.

Encoding. With ``s`` the structural value scale (``sqrt`` of the target's fan-in) and ``bins`` the
kernel binning of :class:`~paramgraph.models.encoders.KernelBins`:

* value channels: ``E^0 = bins(s w) K`` (linear, no bias) per edge, ``X^0 = S q`` per node with
  ``q`` the neuron's equivariant slots (bias of a plain neuron; norm weight and shift of a
  normalised one), plus, where allowed, linear maps of the hidden features;
* hidden features: :class:`~paramgraph.models.encoders.EdgeEncoder` of ``reader.values(bins(s w))`` and
  :class:`~paramgraph.models.encoders.NodeEncoder` of the slots with the equivariant ones replaced by
  ``reader.slots(q)`` (running statistics and the bias of a normalised neuron are invariant and
  enter as they are).

Heads (:mod:`paramgraph.models.heads`): the invariant head pools ``[h, read(X, M)]`` over nodes and
``[e, read(E)]`` over edges. The weight head adds to every weight edge a bias-free map of ``E``
(plus, when unconstrained, an MLP of ``e``), and to the node slots bias-free maps of ``X`` (the
equivariant slots) and MLPs of ``h`` (the invariant ones; all of them when unconstrained). Every
last layer starts at zero, so the first output is the input network.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .encoders import EdgeEncoder, KernelBins, NodeEncoder, node_slot_inputs
from .heads import InvariantHead, WeightHead
from .layers import ValueLayer
from .readers import FreeReader, StrictReader, masked
from .structure import GraphStructure, symlog


class Backbone(nn.Module):
    """Encoders, :class:`~paramgraph.models.layers.ValueLayer` rounds and the head of one MetaNet.

    ``constrained=True`` is ``strict`` mode (needs ``channels >= 1``); otherwise ``compress``
    picks ``symlog`` reads of the value channels (the default) or raw ones.
    ``graph_dim``: width of the per-graph features the invariant head also reads.
    ``copies``: networks the weight head writes (output channel expansion).
    ``output_readout``: the invariant head also reads the mean over output neurons.
    ``edge_width``: width of the hidden edge features (default ``hidden``; the node features
    are always ``hidden`` wide).
    ``checkpoint`` recomputes each round in the backward pass instead of storing its
    activations (about a third more time, a fraction of the memory on large graphs).
    ``compile``: run the rounds through ``torch.compile`` (dynamic shapes; fused element-wise
    kernels). The first batch pays the compilation (minutes on a small CPU); where it fails
    (no C++ compiler, an unsupported operation) the rounds run eagerly, with a warning.
    ``forward`` returns ``[num_graphs, out_dim]`` (``task="invariant"``) or the new
    ``(edge_value, node_value)``.
    """

    def __init__(self, task: str, out_dim: int, hidden: int, layers: int, channels: int,
                 aggrs: Sequence[str], kernel_cap: int, constrained: bool,
                 compress: bool = True, checkpoint: bool = False, graph_dim: int = 0,
                 copies: int = 1, compile: bool = False, probes: int = 0,
                 output_readout: bool = False, edge_width: int | None = None):
        super().__init__()
        w = hidden if edge_width is None else edge_width
        if constrained and channels < 1:
            raise ValueError("strict mode needs at least one value channel (channels >= 1)")
        self.task, self.kernel_cap, self.constrained = task, kernel_cap, constrained
        self.compress = compress
        self.checkpoint = checkpoint
        self.compile_rounds = compile  # (nn.Module.compile is a method: not that name)
        self._compiled = None  # the compiled rounds (a plain list: not submodules)
        self.channels = c = channels
        self.edge_enc = EdgeEncoder(w, kernel_cap)
        self.node_enc = NodeEncoder(hidden)
        # probe features (symlog of each neuron's values at fixed inputs) into the hidden ones
        self.probe_enc = nn.Linear(probes, hidden, bias=False) if probes else None
        if c:
            self.kernel = nn.Parameter(torch.empty(c, kernel_cap))
            nn.init.normal_(self.kernel, std=1.0 / 3.0)
            self.slot_lin = nn.Linear(2, c, bias=False)
            self.node_triv = nn.Linear(hidden, c, bias=False)
            self.edge_triv = nn.Linear(w, c, bias=False)
        self.layers = nn.ModuleList([ValueLayer(hidden, c, aggrs, w) for _ in range(layers)])
        if task == "invariant":
            self.head = InvariantHead(hidden + 2 * c, w + c, hidden, out_dim, graph_dim,
                                      output_readout)
        else:
            self.head = WeightHead(hidden, c, kernel_cap, constrained, copies, w)

    def encode(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
               node_mask: Tensor, value_scale: Tensor, probes: Tensor | None = None):
        """Initial features: ``(reader, bins, x, ev, h, e)`` (``x``/``ev`` are ``None`` without
        value channels)."""
        reader = (StrictReader(st, edge_value.dtype) if self.constrained
                  else FreeReader(compress=self.compress))
        bins = KernelBins(st, self.kernel_cap)
        binned = bins.pool(edge_value * value_scale[st.value_edge])
        slots = node_slot_inputs(node_value, node_mask)
        plain = st.plain.unsqueeze(1)
        eq_slots = torch.where(plain, torch.cat([slots[:, :1], torch.zeros_like(slots[:, :1])], 1),
                               slots[:, 1:3])
        c = reader.slots(eq_slots)
        inv_slots = torch.where(plain, torch.cat([c[:, :1], slots[:, 1:]], 1),
                                torch.cat([slots[:, :1], c, slots[:, 3:]], 1))
        e = self.edge_enc(st, bins, reader.values(binned))
        h = self.node_enc(st, inv_slots, node_mask)
        if self.probe_enc is not None:
            h = h + self.probe_enc(symlog(probes))
        x = ev = None
        if self.channels:
            ev = reader.add_on_unmoved_edges(binned @ self.kernel[:, : bins.width].t(),
                                             self.edge_triv, e)
            x = self.slot_lin(eq_slots) + masked(reader.node_trivial, self.node_triv(h))
        return reader, bins, x, ev, h, e

    def forward(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                node_mask: Tensor, value_scale: Tensor, graph_feats: Tensor | None = None,
                probes: Tensor | None = None):
        """``graph_feats``: per-graph invariant features for the invariant head (``graph_dim``
        wide), e.g. the statistics pathway."""
        reader, bins, x, ev, h, e = self.encode(st, edge_value, node_value, node_mask,
                                                value_scale, probes)
        m = None
        for k in range(len(self.layers)):
            x, ev, h, e, m = self._round(k, st, reader, x, ev, h, e)

        if self.task == "invariant":
            if self.channels:
                h = torch.cat([h, reader.nodes(x, m)], 1)
                e = torch.cat([e, reader.edges(ev)], 1)
            return self.head(st, h, e, graph_feats)

        return self.head(st, bins, x, ev, h, e, edge_value, node_value, node_mask, value_scale)

    def _round(self, k: int, *inputs):
        """Round ``k`` (checkpointed and compiled as asked)."""
        if self.compile_rounds and self._compiled is None:
            self._compiled = [torch.compile(r.forward, dynamic=True) for r in self.layers]
        if self._compiled:
            try:
                return self._run(self._compiled[k], inputs)
            except Exception as err:  # noqa: BLE001 - compilation failed: the eager rounds
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); the "
                              "message-passing rounds run eagerly", RuntimeWarning)
                self._compiled = []
        return self._run(self.layers[k], inputs)

    def _run(self, fn, inputs):
        if self.checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *inputs, use_reentrant=False)
        return fn(*inputs)
