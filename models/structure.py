"""Per-batch index tensors that every part of the metanet reads, computed once per forward.

A :class:`GraphStructure` is built from a ``torch_geometric`` ``Batch`` of
:class:`~paramgraph.ParamGraph` (or from a single graph) and holds only *structural* facts (types,
endpoints, fan-in, kernel sizes, which group acts on which neuron), never values. Everything here
is invariant under the network's symmetry group: permutations move nodes together with their
structure, scales and signs do not touch structure at all. The value-dependent parts of the
metanet can therefore use these tensors freely without breaking any symmetry.

Also here: the two scalar maps that every value encoder uses, :func:`symlog` and
:func:`fourier_features`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from paramgraph.canonical import canonical_levels as _canonical_levels
from paramgraph.canonical_heads import HeadStructure
from paramgraph.types import WEIGHT_EDGE_TYPES, NormKind


@dataclass
class GraphStructure:
    """Structural index tensors of a batch of parameter graphs.

    ``N`` nodes, ``E`` edges, ``V`` edge values, ``B`` graphs.

    * ``src``, ``dst`` [E]: edge endpoints; ``edge_type`` [E] long; ``weight`` [E] bool: edges that
      carry learned values (the others are fixed wiring of value 1).
    * ``edge_size`` [E] long: values per edge; ``value_edge`` [V]: the edge of every value;
      ``value_pos`` [V]: its position inside the edge's kernel.
    * ``node_graph`` [N], ``edge_graph`` [E]: graph of every node / edge; ``num_graphs``.
    * ``plain`` [N] bool: no normalisation (a scale acts on incoming weights and bias);
      ``scale``, ``sign`` [N] bool: the neuron's continuous symmetries.
    * ``fan_in`` [N]: number of incoming *weight values*; ``fan_out`` [N]: outgoing ones;
      ``in_degree``, ``out_degree`` [N]: edges of any type.
    * ``rel_depth`` [N]: ``node_layer`` divided by its graph's deepest layer (in [0, 1]).
    * ``canon_into`` [K]: the weight edges into plain neurons that have a scale or sign
      symmetry, sorted by the depth of their target; ``canon_levels``: ``(depth, start, stop)``
      per depth holding such neurons, the slice of ``canon_into`` that reaches it. The
      canonicaliser walks these levels in order.
    * ``weight_ids`` [W]: indices of the weight edges (``weight.nonzero()``, read once here).
    * ``unmoved_ids``: indices of the edges no group element moves (fixed wiring, and weights
      between neurons without scale or sign symmetry; :meth:`edge_kinds`), where ``strict``
      may add invariant features to its value channels.
    * ``has_scale``: whether any neuron has a scale symmetry (the learned gauge's factor).
    * ``layers``: the graphs' weight layers (:class:`WeightLayers`), for per-layer statistics.
    * ``heads``: the attention heads grouped by shape
      (:class:`~paramgraph.canonical_heads.HeadStructure`, for the gauge's head section), or
      ``None`` where the batch has no attention.
    * ``gauge_key``: the key every graph's cached gauge inputs were computed under
      (:meth:`~paramgraph.models.gauge.GaugeMap.input_key`), or ``None`` where the batch carries
      none or graphs disagree.

    Every count, bound and flag is a Python value computed once in :meth:`of`, where the batch
    usually still lives on the CPU. Build the structure there and move it with :meth:`to`: the
    forward pass then never waits on the accelerator to learn a size (no host round trips).
    """

    num_nodes: int
    num_edges: int
    num_graphs: int
    src: Tensor
    dst: Tensor
    edge_type: Tensor
    weight: Tensor
    edge_size: Tensor
    value_edge: Tensor
    value_pos: Tensor
    node_graph: Tensor
    edge_graph: Tensor
    node_layer: Tensor
    node_type: Tensor
    node_act: Tensor
    node_norm: Tensor
    plain: Tensor
    scale: Tensor
    sign: Tensor
    fixed: Tensor
    perm_pos: Tensor
    fan_in: Tensor
    fan_out: Tensor
    in_degree: Tensor
    out_degree: Tensor
    rel_depth: Tensor
    max_size: int
    edge_index: Tensor
    weight_ids: Tensor
    unmoved_ids: Tensor
    canon_into: Tensor
    canon_levels: list[tuple[int, int, int]]
    has_scale: bool
    layers: "WeightLayers"
    heads: HeadStructure | None = None
    gauge_key: int | None = None

    @classmethod
    def of(cls, batch) -> "GraphStructure":
        """Read the structure of ``batch`` (a ``Batch`` of ParamGraphs or one ParamGraph)."""
        edge_index = batch.edge_index.long()  # graphs store int32 ids; scatter needs int64
        device = edge_index.device
        src, dst = edge_index[0], edge_index[1]
        n = int(batch.num_nodes)
        e = int(src.numel())
        node_graph = getattr(batch, "batch", None)
        if node_graph is None:
            node_graph = torch.zeros(n, dtype=torch.long, device=device)
            num_graphs = 1
        else:
            num_graphs = int(batch.num_graphs)
        edge_type = batch.edge_type.long()
        weight_types = torch.tensor([int(t) for t in WEIGHT_EDGE_TYPES], device=device)
        weight = torch.isin(edge_type, weight_types)
        edge_size = batch.edge_size.long()
        value_edge = torch.repeat_interleave(torch.arange(e, device=device), edge_size)
        offsets = torch.cumsum(edge_size, 0) - edge_size
        value_pos = torch.arange(value_edge.numel(), device=device) - offsets[value_edge]
        wsize = torch.where(weight, edge_size, torch.zeros_like(edge_size))
        fan_in = scatter(wsize, dst, 0, dim_size=n, reduce="sum")
        fan_out = scatter(wsize, src, 0, dim_size=n, reduce="sum")
        ones = torch.ones(e, dtype=torch.long, device=device)
        in_degree = scatter(ones, dst, 0, dim_size=n, reduce="sum")
        out_degree = scatter(ones, src, 0, dim_size=n, reduce="sum")
        layer = batch.node_layer.long()
        deepest = scatter(layer, node_graph, 0, dim_size=num_graphs, reduce="max").clamp_min(1)
        plain = batch.node_norm == int(NormKind.NONE)
        scale, sign = batch.node_scale.bool(), batch.node_sign.bool()
        canon_into, canon_levels = _canonical_levels(src, dst, weight, layer, plain, scale | sign)
        scaled, signed = _edge_kinds(src, dst, weight, plain, scale, sign)
        return cls(
            num_nodes=n, num_edges=e, num_graphs=num_graphs, src=src, dst=dst,
            edge_type=edge_type, weight=weight, edge_size=edge_size, value_edge=value_edge,
            value_pos=value_pos, node_graph=node_graph, edge_graph=node_graph[src],
            node_layer=layer, node_type=batch.node_type.long(), node_act=batch.node_act.long(),
            node_norm=batch.node_norm.long(), plain=plain, scale=scale, sign=sign,
            fixed=batch.perm_group < 0, perm_pos=batch.perm_pos.long(), fan_in=fan_in,
            fan_out=fan_out, in_degree=in_degree, out_degree=out_degree,
            rel_depth=layer.double() / deepest[node_graph].double(),
            max_size=int(edge_size.max()) if e else 1, edge_index=edge_index,
            weight_ids=weight.nonzero().squeeze(1),
            unmoved_ids=(~(scaled | signed)).nonzero().squeeze(1), canon_into=canon_into,
            canon_levels=canon_levels,
            has_scale=bool(scale.any()),
            layers=WeightLayers.of(weight, dst, edge_size, layer, node_graph, num_graphs),
            heads=HeadStructure.of(src, dst, edge_type, edge_size, batch.node_type, layer,
                                   weight),
            gauge_key=_common_key(getattr(batch, "gauge_key", None)),
        )

    def to(self, device, non_blocking: bool = False) -> "GraphStructure":
        """A copy with every tensor on ``device`` (sizes and flags stay Python values)."""
        return _moved(self, device, non_blocking)

    # -- how the continuous group acts on values ------------------------------------------------

    def edge_kinds(self) -> tuple[Tensor, Tensor]:
        """[E] bool pair (scaled, signed): whether an edge's values can be multiplied by an
        arbitrary positive number / by -1 under the group. A weight edge ``u -> v`` is multiplied
        by ``a_v / f_u``, where ``f`` is the neuron factor and ``a_v = f_v`` for a plain neuron, 1
        for a normalised one; fixed edges never change."""
        return _edge_kinds(self.src, self.dst, self.weight, self.plain, self.scale, self.sign)

    def value_scale(self) -> Tensor:
        """[E] positive structural factor that brings typical weights to O(1): the square root of
        the target neuron's fan-in (in values). Invariant under the whole group."""
        return self.fan_in[self.dst].clamp_min(1).to(torch.float64).sqrt()


def _edge_kinds(src: Tensor, dst: Tensor, weight: Tensor, plain: Tensor, scale: Tensor,
                sign: Tensor) -> tuple[Tensor, Tensor]:
    """:meth:`GraphStructure.edge_kinds` from the structure's fields."""
    plain_dst = plain[dst]
    scaled = ((scale[dst] & plain_dst) | scale[src]) & weight
    signed = ((sign[dst] & plain_dst) | sign[src]) & weight
    return scaled, signed


@dataclass
class WeightLayers:
    """The weight layers of every graph of a batch, for per-layer statistics.

    A *weight layer* is the set of weight edges of one graph whose target neurons share a depth
    (``node_layer``): a Linear or a convolution, or the parallel maps that feed one depth. Layers
    are numbered graph by graph in order of depth (``L`` in all).

    * ``value_layer`` [V]: the layer of each edge value, ``-1`` for values of fixed edges;
    * ``node_layer_id`` [N]: the layer whose edges end at each neuron, ``-1`` for neurons no weight
      edge reaches (inputs);
    * ``graph`` [L], ``rank`` [L], ``rank_from_end`` [L]: each layer's graph and its position
      counted from the first and from the last layer of that graph;
    * ``count`` [L]: values per layer;
    * ``num_layers``: ``L``; ``layers_per_graph`` [B].
    """

    value_layer: Tensor
    node_layer_id: Tensor
    graph: Tensor
    rank: Tensor
    rank_from_end: Tensor
    count: Tensor
    layers_per_graph: Tensor
    num_layers: int

    @classmethod
    def of(cls, weight: Tensor, dst: Tensor, edge_size: Tensor, depth: Tensor,
           node_graph: Tensor, num_graphs: int) -> "WeightLayers":
        device = dst.device
        span = int(depth.max()) + 1 if depth.numel() else 1
        node_key = node_graph * span + depth
        edge_key = torch.where(weight, node_key[dst], torch.full_like(dst, -1))
        keys, edge_layer = torch.unique(edge_key, return_inverse=True)
        if keys.numel() and int(keys[0]) < 0:  # the fixed edges' key -1 is not a layer
            keys, edge_layer = keys[1:], edge_layer - 1
        num_layers = int(keys.numel())
        graph = torch.div(keys, span, rounding_mode="floor")
        per_graph = torch.bincount(graph, minlength=num_graphs)
        first = torch.cumsum(per_graph, 0) - per_graph
        rank = torch.arange(num_layers, device=device) - first[graph]
        value_layer = torch.repeat_interleave(edge_layer, edge_size)
        counted = value_layer[value_layer >= 0]
        node_layer_id = torch.full_like(node_key, -1)
        if num_layers:
            pos = torch.searchsorted(keys, node_key).clamp_max(num_layers - 1)
            node_layer_id = torch.where(keys[pos] == node_key, pos, node_layer_id)
        count = torch.bincount(counted, minlength=num_layers)
        return cls(value_layer=value_layer, node_layer_id=node_layer_id,
                   graph=graph, rank=rank, rank_from_end=per_graph[graph] - 1 - rank,
                   count=count, layers_per_graph=per_graph, num_layers=num_layers)

    def to(self, device, non_blocking: bool = False) -> "WeightLayers":
        """A copy with every tensor on ``device``."""
        return _moved(self, device, non_blocking)


def _common_key(keys: Tensor | None) -> int | None:
    """The one value of a batch's per-graph ``keys``, ``None`` where there are none or several."""
    if keys is None or not keys.numel():
        return None
    first = int(keys.reshape(-1)[0])
    return first if bool((keys == first).all()) else None


def _moved(obj, device, non_blocking: bool):
    """A copy of a dataclass of tensors (and Python values) with its tensors on ``device``."""
    moved = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        moved[f.name] = (v.to(device, non_blocking=non_blocking) if isinstance(v, (Tensor,
                         WeightLayers, HeadStructure)) else v)
    return type(obj)(**moved)


def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``: sign-preserving, compresses large magnitudes, odd. (As
    ``copysign``: the same values and gradients, one pass over ``x`` fewer than a product.)"""
    return torch.copysign(torch.log1p(x.abs()), x)


def fourier_frequencies(count: int, low: float = 0.25, high: float = 64.0) -> Tensor:
    """``count`` geometrically spaced angular frequencies between ``low`` and ``high``."""
    if count == 1:
        return torch.tensor([low], dtype=torch.float64)
    exps = torch.linspace(math.log(low), math.log(high), count, dtype=torch.float64)
    return exps.exp()


def fourier_features(x: Tensor, freqs: Tensor) -> Tensor:
    """``[symlog(x), sin(w x), cos(w x)]`` for every frequency ``w``: ``x.shape + (1 + 2F,)``.

    The high frequencies let a network tell apart values that differ by much less than their
    magnitude (a deterministic version of random Fourier features, log-spaced like NeRF's
    positional encoding); ``symlog`` keeps the sign and the order of magnitude.
    """
    wx = x.unsqueeze(-1) * freqs.to(x.dtype)
    return torch.cat([symlog(x).unsqueeze(-1), torch.sin(wx), torch.cos(wx)], dim=-1)
