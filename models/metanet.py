"""``MetaNet``: a GNN that reads any parameter graph and is exactly as symmetric as the networks.

Three modes share one code path (DESIGN.md section 5):

* ``"quasi"``: the learned gauge map of :mod:`models.gauge` (exact canonicaliser composed with a
  learned, invariantly computed scale), then an unconstrained permutation-equivariant GNN
  (:class:`~models.layers.EdgeNodeLayer`). Exactly invariant (invariant head) or
  quasi-equivariant (weight head) to permutations, positive scalings and sign flips.
* ``"perm"``: the same GNN without the gauge (the GMN / Neural Graphs family): exactly
  permutation invariant/equivariant, not scale or sign invariant.
* ``"strict"``: layers that are exactly scale- and sign-equivariant (:mod:`models.strict`, the
  ScaleGMN family).

Example::

    from torch_geometric.data import Batch
    import paramgraph, models

    batch = Batch.from_data_list([paramgraph.from_module(m, x) for m, x in nets])
    net = models.MetaNet(mode="quasi", task="invariant", out_dim=1, hidden=64, layers=4)
    y = net(batch)                                   # [num_graphs, 1]

    editor = models.MetaNet(mode="quasi", task="weights", hidden=64, layers=4)
    out = editor(batch)                              # a Batch in the same layout, new values
    state_dicts = [paramgraph.to_state_dict(g) for g in out.to_data_list()]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .encoders import EdgeEncoder, KernelBins, NodeEncoder, node_slot_inputs
from .gauge import GaugeMap, apply_factors
from .heads import InvariantHead, WeightHead
from .layers import EdgeNodeLayer
from .strict import StrictNet
from .structure import GraphStructure

MODES = ("perm", "strict", "quasi")
TASKS = ("invariant", "weights")
FRAMES = ("gauged", "input")


class MetaNet(nn.Module):
    """A metanet over batches of parameter graphs.

    Args:
        mode: ``"perm"``, ``"strict"`` or ``"quasi"`` (see the module docstring).
        task: ``"invariant"``: ``forward`` returns ``[num_graphs, out_dim]``; ``"weights"``:
            ``forward`` returns a batch of graphs in the input's layout with new values (at
            initialisation: the input network, gauged in ``quasi`` mode).
        out_dim: output size of the invariant head.
        hidden: feature width; ``layers``: message-passing rounds.
        aggrs: aggregators for the messages (any of sum, mean, max, min, std).
        kernel_cap: kernels longer than this are averaged into this many bins for the encoder.
        channels: equivariant channels in ``strict`` mode (default ``hidden // 2``).
        gauge_hidden, gauge_bound: width of the learned gauge factor's network, and the bound
            ``s_max`` of its log-scale (``quasi``).
        learn_gauge: ``False`` keeps only the exact canonicaliser (an ablation of ``quasi``).
        frame: ``quasi`` weight head only. ``"gauged"`` (default): values are returned in gauged
            coordinates, so ``theta`` and any ``g theta`` give the *same* output network
            (quasi-equivariance with ``g' = alpha(theta)``). ``"input"``: the gauge is undone,
            which makes the output strictly equivariant, ``F(g theta) = g F(theta)``.

    Raises ``ValueError`` for an unknown mode, task, frame or aggregator.
    """

    def __init__(self, mode: str = "quasi", task: str = "invariant", out_dim: int = 1,
                 hidden: int = 64, layers: int = 4, *,
                 aggrs: Sequence[str] = ("sum", "mean", "max"), kernel_cap: int = 64,
                 channels: int | None = None, gauge_hidden: int = 16, gauge_bound: float = 2.0,
                 learn_gauge: bool = True, frame: str = "gauged"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose from {MODES}")
        if task not in TASKS:
            raise ValueError(f"unknown task '{task}'; choose from {TASKS}")
        if frame not in FRAMES:
            raise ValueError(f"unknown frame '{frame}'; choose from {FRAMES}")
        self.mode, self.task, self.frame = mode, task, frame
        self.out_dim = out_dim
        self.kernel_cap = kernel_cap
        if mode == "strict":
            self.strict = StrictNet(task, out_dim, hidden, layers, channels or max(hidden // 2, 1),
                                    aggrs, kernel_cap)
            return
        self.gauge = GaugeMap(gauge_hidden, gauge_bound, learn_gauge) if mode == "quasi" else None
        self.edge_enc = EdgeEncoder(hidden, kernel_cap)
        self.node_enc = NodeEncoder(hidden)
        self.layers = nn.ModuleList([EdgeNodeLayer(hidden, aggrs) for _ in range(layers)])
        if task == "invariant":
            self.head = InvariantHead(hidden, hidden, hidden, out_dim)
        else:
            self.head = WeightHead(hidden, kernel_cap)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, batch):
        """``batch``: a ``torch_geometric`` ``Batch`` of ParamGraphs (or one ParamGraph).

        Returns ``[num_graphs, out_dim]`` (``task="invariant"``) or a graph batch of the same
        type and layout with new ``edge_value``/``node_value`` in the metanet's dtype
        (``task="weights"``).
        """
        st = GraphStructure.of(batch)
        dtype = self.dtype
        edge_value = batch.edge_value.to(dtype)
        node_value = batch.node_value.to(dtype)
        node_mask = batch.node_mask
        value_scale = st.value_scale().to(dtype)
        if self.mode == "strict":
            out = self.strict(st, batch.edge_index, edge_value, node_value, node_mask,
                              value_scale)
            return out if self.task == "invariant" else batch.with_values(*out)

        alpha = None
        if self.gauge is not None:
            edge_value, node_value, alpha = self.gauge(st, edge_value, node_value, node_mask)
        bins = KernelBins(st, self.kernel_cap)
        binned = bins.pool(edge_value * value_scale[st.value_edge])
        e = self.edge_enc(st, bins, binned)
        h = self.node_enc(st, node_slot_inputs(node_value, node_mask), node_mask)
        for layer in self.layers:
            h, e = layer(h, e, st)
        if self.task == "invariant":
            return self.head(st, h, e)
        new_edge, new_node = self.head(st, bins, h, e, edge_value, node_value, node_mask,
                                       value_scale)
        if alpha is not None and self.frame == "input":
            new_edge, new_node = apply_factors(st, 1.0 / alpha, new_edge, new_node)
        return batch.with_values(new_edge, new_node)

    def gauge_parameters(self) -> list[nn.Parameter]:
        """The learned gauge factor's parameters (empty unless ``mode="quasi"``)."""
        return list(self.gauge.parameters()) if getattr(self, "gauge", None) is not None else []
