"""Vectorised construction of a :class:`ParamGraph`, independent of how the network was read.

A front end (the ``torch.fx`` tracer in :mod:`paramgraph.trace`, the ``torch.export`` reader in
:mod:`paramgraph.export`) walks the network's data flow and calls one builder method per layer:
:meth:`GraphBuilder.linear`, :meth:`~GraphBuilder.conv`, :meth:`~GraphBuilder.norm`,
:meth:`~GraphBuilder.activation`, :meth:`~GraphBuilder.add`, :meth:`~GraphBuilder.attention`, ...
Each method records *blocks* (a whole weight tensor's edges at once) and returns a :class:`Feat`,
the neurons that carry the layer's output. :meth:`GraphBuilder.finalize` allocates every tensor of
the graph once and fills it block by block, then has
:func:`paramgraph.symmetry.derive_symmetries` work out the symmetry group from what it recorded.

Why blocks and one allocation: a weight tensor ``[out, in, *k]`` becomes ``out * in`` edges ordered
(out, in), each holding ``prod(k)`` values, so its values are exactly ``weight.reshape(-1)`` and the
edge indices are two broadcasts. No Python loop runs per weight or per neuron, and no tensor of
the size of the graph is built twice (peak memory stays near the graph's own size).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from . import memory
from .errors import UnsupportedModuleError
from .graph import ParamGraph, Segment, SegmentTable, dtype_name
from .symmetry import derive_symmetries
from .types import (
    ATTENTION_NODE_TYPES,
    NODE_SLOTS,
    SLOT,
    Activation,
    EdgeType,
    NodeType,
    NormKind,
)

# Activations that commute with a max over positions (monotone non-decreasing).
_MONOTONE = (Activation.IDENTITY, Activation.RELU, Activation.LEAKY_RELU, Activation.TANH,
             Activation.SIGMOID, Activation.RELU6, Activation.HARDSIGMOID, Activation.ELU,
             Activation.SOFTPLUS, Activation.HARDTANH, Activation.SOFTSIGN, Activation.CLIP)


@dataclass(frozen=True)
class Feat:
    """The neurons that carry one intermediate value of the network.

    ``nodes`` are node ids in feature order. ``layer`` is the index of the node set when ``nodes``
    is exactly that set in order (then activations and normalisations can be folded into it).
    ``spatial > 1`` means a flatten merged that many positions into the features: feature
    ``c * spatial + s`` (``channel_major``) or ``s * C + c``. ``pooled`` records a mean/avg
    ("avg") or max ("max") over positions since the node set was made. ``exclusive`` is false when
    the value (or one it was reshaped from) is also used elsewhere, which forbids folding.
    """

    nodes: Tensor
    layer: int | None
    depth: int
    spatial: int = 1
    channel_major: bool = True
    pooled: str = "none"
    exclusive: bool = True

    @property
    def size(self) -> int:
        return self.nodes.numel()


@dataclass
class NodeSet:
    """A run of consecutive nodes made by one layer (``start .. start + size``), and what the
    layer did to them; :func:`~paramgraph.symmetry.derive_symmetries` reads it."""

    start: int
    size: int
    type: NodeType
    depth: int
    weighted: bool = False  # made by a weight layer: incoming weights + bias scale with it
    act: Activation = Activation.IDENTITY
    norm: NormKind = NormKind.NONE
    norm_affine: bool = False
    stage: int = 0  # 0: affine so far, 1: normalised, 2: activated

    @property
    def nodes(self) -> Tensor:
        return torch.arange(self.start, self.start + self.size)


@dataclass
class _Block:
    """Edges of one weight tensor (dense: every ``src`` to every ``dst``) or explicit pairs."""

    src: Tensor
    dst: Tensor | None  # pairs: explicit targets; dense: None (targets are dst_start + arange)
    dst_start: int
    n_out: int
    etype: Tensor | int  # per output row (dense) or one type
    size: int  # values per edge
    values: Tensor | None  # ready-to-copy view [n_out, n_in, size]; None: fixed value 1
    edge_start: int = 0
    value_start: int = 0

    @property
    def num_edges(self) -> int:
        return self.src.numel() if self.dst is not None else self.n_out * self.src.numel()


@dataclass
class Tie:
    """One-to-one identity wiring from ``src``'s neurons onto node set ``dst_layer`` (residual,
    norm and copy edges): the two sides must be permuted together."""

    src: Feat
    dst_layer: int


@dataclass
class Grouping:
    """Channels split into ``groups`` equal blocks that permute as wholes: a grouped
    convolution (``src``'s channels onto node set ``dst_layer``'s, block g onto block g) or a
    GroupNorm (``dst_layer`` is None: only ``src``'s own blocks)."""

    src: Feat
    dst_layer: int | None
    groups: int


@dataclass
class AttentionGroup:
    """The query, key and value node sets of one multi-head attention block."""

    q_layer: int
    k_layer: int
    v_layer: int
    heads: int


class GraphBuilder:
    """Collects layers and emits a :class:`ParamGraph`; see the module docstring."""

    def __init__(self) -> None:
        self.sets: list[NodeSet] = []
        self.num_nodes = 0
        self.blocks: list[_Block] = []
        self.num_edges = 0
        self.num_values = 0
        self.slot_fills: list[tuple[int, int, int, Tensor]] = []
        self.segments: list[Segment] = []
        self.ties: list[Tie] = []
        self.attention_groups: list[AttentionGroup] = []
        self.groupings: list[Grouping] = []
        self.partial_reads: list[Tensor] = []  # nodes read by a weight layer that reads a subset
        self.sign_blocked: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.dtypes: set[torch.dtype] = set()
        self._placed: dict[object, str] = {}  # tensor name / storage -> name, to refuse sharing

    # -- node sets -------------------------------------------------------------------------------

    def _new_set(self, size: int, ntype: NodeType, depth: int, **kw) -> int:
        self.sets.append(NodeSet(self.num_nodes, size, ntype, depth, **kw))
        self.num_nodes += size
        return len(self.sets) - 1

    def _feat(self, layer: int) -> Feat:
        s = self.sets[layer]
        return Feat(s.nodes, layer, s.depth)

    def input(self, size: int) -> Feat:
        """The network's input features (channels for a convolution)."""
        return self._feat(self._new_set(size, NodeType.INPUT, 0))

    # -- blocks and segments ---------------------------------------------------------------------

    def _add_block(self, block: _Block) -> _Block:
        block.edge_start, block.value_start = self.num_edges, self.num_values
        self.num_edges += block.num_edges
        self.num_values += block.num_edges * block.size
        self.blocks.append(block)
        return block

    def _claim(self, name: str, tensor: Tensor) -> None:
        """Refuse a tensor placed twice (a weight used by two layers, or tied to another one):
        one value in two places of the graph would drift apart under the symmetry group."""
        keys = [("name", name)]
        if tensor.numel():
            keys.append(("storage", tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride())))
        for key in keys:
            if key in self._placed:
                other = self._placed[key]
                shared = f"'{name}' is the same tensor as '{other}'" if other != name else \
                    f"'{name}' is used more than once"
                raise UnsupportedModuleError(
                    name.rpartition(".")[0], "parameter", f"{shared}; shared weights cannot be "
                    "represented: give each layer its own parameter")
        for key in keys:
            self._placed[key] = name

    def _edge_segment(self, name: str, tensor: Tensor, block: _Block, view=None, permute=None):
        self._claim(name, tensor)
        self.dtypes.add(tensor.dtype)
        self.segments.append(Segment(
            name, tuple(tensor.shape), dtype_name(tensor.dtype), "edge", block.edge_start,
            block.num_edges, value_start=block.value_start, view=view, permute=permute,
        ))

    def _node_segment(self, name: str, tensor: Tensor, start: int, slot: str):
        tensor = tensor.detach()
        self._claim(name, tensor)
        self.dtypes.add(tensor.dtype)
        self.slot_fills.append((start, tensor.numel(), SLOT[slot], tensor))
        self.segments.append(Segment(name, tuple(tensor.shape), dtype_name(tensor.dtype), "node",
                                     start, tensor.numel(), slot=SLOT[slot]))

    def _one_to_one(self, src: Feat, dst_layer: int, etype: EdgeType) -> None:
        dst = self.sets[dst_layer]
        self._add_block(_Block(src.nodes, dst.nodes, dst.start, dst.size, int(etype), 1, None))
        self.ties.append(Tie(src, dst_layer))

    # -- layers ----------------------------------------------------------------------------------

    def linear(self, x: Feat, weight: tuple[str, Tensor], bias: tuple[str, Tensor] | None,
               path: str = "") -> Feat:
        """``y = W x + b`` reading ``x``'s features; W is ``[out, in]``.

        If ``x`` is a flattened feature map, one edge per (channel, output) holds the weights of
        all the channel's positions (a FLATTEN_LINEAR edge).
        """
        name, w = weight[0], weight[1].detach()
        n_in = x.size * x.spatial
        if w.dim() != 2 or w.shape[1] != n_in:
            raise UnsupportedModuleError(path, "linear", f"weight '{name}' has shape "
                                         f"{tuple(w.shape)}, the input carries {n_in} features")
        out = self._new_set(w.shape[0], NodeType.HIDDEN, x.depth + 1, weighted=True)
        view = permute = None
        if x.spatial == 1:
            values, etype = w.unsqueeze(-1), EdgeType.LINEAR
        elif x.channel_major:
            values, etype = w.view(w.shape[0], x.size, x.spatial), EdgeType.FLATTEN_LINEAR
        else:  # features ordered (position, channel): move positions last, record the permute
            view, permute = (w.shape[0], x.spatial, x.size), (0, 2, 1)
            values, etype = w.view(view).permute(permute), EdgeType.FLATTEN_LINEAR
        block = self._add_block(_Block(x.nodes, None, self.sets[out].start, w.shape[0],
                                       int(etype), x.spatial, values))
        self._edge_segment(name, w, block, view, permute)
        self._mark_consumed(x)
        self._mark_read(x)
        if bias is not None:
            self._node_segment(bias[0], bias[1], self.sets[out].start, "bias")
        return self._feat(out)

    def conv(self, x: Feat, weight: tuple[str, Tensor], bias: tuple[str, Tensor] | None,
             path: str = "", groups: int = 1) -> Feat:
        """A convolution: one edge per (in channel, out channel) holding its kernel.

        With ``groups > 1`` only the channels of one group are joined (edges ordered (out, in of
        its group), so the weight stays one slice); the groups are recorded as a
        :class:`Grouping` (a depthwise convolution with one output per input as a :class:`Tie`).
        """
        name, w = weight[0], weight[1].detach()
        if x.spatial != 1:
            raise UnsupportedModuleError(path, "convolution", "its input is a flattened feature "
                                         "map; a convolution needs channels")
        if w.shape[1] * groups != x.size or w.shape[0] % groups:
            raise UnsupportedModuleError(path, "convolution", f"weight '{name}' of shape "
                                         f"{tuple(w.shape)} with groups={groups} expects "
                                         f"{w.shape[1] * groups} input channels, the input has "
                                         f"{x.size}")
        n_out, n_in = w.shape[0], w.shape[1]
        out = self._new_set(n_out, NodeType.HIDDEN, x.depth + 1, weighted=True)
        k = w[0, 0].numel()
        start = self.sets[out].start
        values = w.reshape(n_out, n_in, k)
        if groups == 1:
            block = _Block(x.nodes, None, start, n_out, int(EdgeType.CONV), k, values)
        else:  # out channel o reads the n_in channels of its group o // (n_out / groups)
            per = n_out // groups
            src = x.nodes.view(groups, 1, n_in).expand(groups, per, n_in).reshape(-1)
            dst = torch.arange(start, start + n_out).view(n_out, 1).expand(n_out, n_in).reshape(-1)
            block = _Block(src, dst, start, n_out, int(EdgeType.CONV), k, values)
            if n_in == 1 and per == 1:
                self.ties.append(Tie(x, out))  # depthwise: channel i feeds channel i only
            else:
                self.groupings.append(Grouping(x, out, groups))
        block = self._add_block(block)
        self._edge_segment(name, w, block)
        self._mark_consumed(x)
        self._mark_read(x)
        if bias is not None:
            self._node_segment(bias[0], bias[1], self.sets[out].start, "bias")
        return self._feat(out)

    def norm(self, x: Feat, kind: NormKind, params: dict[str, tuple[str, Tensor]],
             path: str = "", groups: int = 1) -> Feat:
        """A per-feature normalisation (eval-mode batch norm, layer norm over the features, group
        or instance norm over channels, or a per-channel multiplier: ``NormKind.SCALE``).

        ``params`` maps slot names (``norm_weight``, ``norm_bias``, ``running_mean``,
        ``running_var``) to ``(state_dict name, tensor)``. The parameters go onto ``x``'s own
        neurons when nothing else reads them un-normalised; otherwise onto new NORM neurons.
        ``groups`` (GroupNorm) splits the channels into blocks that only permute as wholes.
        """
        for slot, (name, t) in params.items():
            if t.numel() != x.size:
                raise UnsupportedModuleError(path, "normalisation", f"'{name}' has {t.numel()} "
                                             f"entries for {x.size} features")
        if x.spatial != 1:
            raise UnsupportedModuleError(path, "normalisation", "it normalises a flattened "
                                         "feature map; only per-channel/per-feature norms are supported")
        target = x.layer if self._can_fold(x, stage=0) and x.pooled == "none" else None
        parts = self._parts(x) if target is None and groups == 1 else None
        if parts is not None and len(parts) > 1:
            # a concatenation of whole node sets (DenseNet): one NORM set per part, each tied to
            # its part, so the parts keep their own permutations
            sets = [self._new_set(p.size, NodeType.NORM, x.depth + 1) for p in parts]
            for p, t in zip(parts, sets):
                self._one_to_one(p, t, EdgeType.NORM)
                u = self.sets[t]
                u.norm, u.stage = kind, 1
                u.norm_affine = "norm_weight" in params or "norm_bias" in params
            for slot, (name, t) in params.items():  # the new sets are consecutive nodes
                self._node_segment(name, t, self.sets[sets[0]].start, slot)
            nodes = torch.cat([self.sets[t].nodes for t in sets])
            return Feat(nodes, None, x.depth + 1)
        if target is None:
            target = self._new_set(x.size, NodeType.NORM, x.depth + 1)
            self._one_to_one(x, target, EdgeType.NORM)
        s = self.sets[target]
        s.norm, s.stage = kind, 1
        s.norm_affine = "norm_weight" in params or "norm_bias" in params
        for slot, (name, t) in params.items():
            self._node_segment(name, t, s.start, slot)
        if 1 < groups < x.size:
            self.groupings.append(Grouping(self._feat(target), None, groups))
        return replace(self._feat(target), pooled="none", exclusive=True)

    def activation(self, x: Feat, act: Activation) -> Feat:
        """An elementwise activation; folded into ``x``'s neurons when that is exact."""
        if act == Activation.IDENTITY:
            return x
        commutes = x.pooled == "none" or (x.pooled == "max" and act in _MONOTONE)
        if self._can_fold(x, stage=1) and commutes:
            s = self.sets[x.layer]
            s.act, s.stage = act, 2
            return x
        if x.layer is None and x.exclusive and commutes:  # the per-part norms of a concatenation
            parts = self._parts(x)
            if parts and all(self._can_fold(p, stage=1) for p in parts):
                for p in parts:
                    self.sets[p.layer].act, self.sets[p.layer].stage = act, 2
                return x
        out = self._new_set(x.size, NodeType.COPY, x.depth + 1, act=act, stage=2)
        self._one_to_one(x, out, EdgeType.IDENTITY)
        return replace(self._feat(out), spatial=x.spatial, channel_major=x.channel_major)

    def _parts(self, x: Feat) -> list[Feat] | None:
        """``x``'s neurons as whole node sets in their own order, one after another (what a
        concatenation of whole values gives), or None."""
        if x.layer is not None or x.spatial != 1 or x.size == 0:
            return None
        starts = [s.start for s in self.sets]
        nodes, parts, i = x.nodes, [], 0
        while i < nodes.numel():
            k = bisect.bisect_right(starts, int(nodes[i])) - 1
            s = self.sets[k]
            if int(nodes[i]) != s.start or i + s.size > nodes.numel() \
                    or not torch.equal(nodes[i : i + s.size], s.nodes):
                return None
            parts.append(Feat(s.nodes, k, x.depth, exclusive=x.exclusive))
            i += s.size
        return parts

    def _can_fold(self, x: Feat, stage: int) -> bool:
        if not x.exclusive or x.layer is None:
            return False
        s = self.sets[x.layer]
        return s.stage <= stage and s.type not in (NodeType.INPUT, *ATTENTION_NODE_TYPES)

    def add(self, a: Feat, b: Feat, path: str = "") -> Feat:
        """``a + b`` of two values with the same features: RESIDUAL neurons with identity edges."""
        return self._elementwise(a, b, path, "add", NodeType.RESIDUAL, EdgeType.RESIDUAL,
                                 "only same-shape residual additions are supported")

    def product(self, a: Feat, b: Feat, path: str = "") -> Feat:
        """``a * b`` elementwise (a gate times its input): PRODUCT neurons with identity edges
        from both operands, so channel i of both and of the product permute together."""
        return self._elementwise(a, b, path, "mul", NodeType.PRODUCT, EdgeType.PRODUCT,
                                 "a product needs the same features on both sides")

    def _elementwise(self, a: Feat, b: Feat, path: str, op: str, node_type: NodeType,
                     edge_type: EdgeType, requirement: str) -> Feat:
        """A new neuron per feature, wired one-to-one from both operands (which must carry the
        same features)."""
        if a.size != b.size or a.spatial != b.spatial or a.channel_major != b.channel_major:
            raise UnsupportedModuleError(path, op, f"operands carry {a.size}x{a.spatial} and "
                                         f"{b.size}x{b.spatial} features; {requirement}")
        out = self._new_set(a.size, node_type, max(a.depth, b.depth) + 1)
        self._one_to_one(a, out, edge_type)
        self._one_to_one(b, out, edge_type)
        return replace(self._feat(out), spatial=a.spatial, channel_major=a.channel_major)

    def select(self, x: Feat, index: Tensor, path: str = "") -> Feat:
        """Features ``index`` of ``x`` (a channel slice or split, a channel shuffle): the same
        neurons, read in another order or in part; nothing is added to the graph."""
        if x.spatial != 1:
            raise UnsupportedModuleError(path, "indexing", "it selects features of a flattened "
                                         "feature map")
        nodes = x.nodes[index]
        if nodes.numel() == x.size and bool((nodes == x.nodes).all()):
            return x
        return replace(x, nodes=nodes, layer=None, exclusive=False)

    def concat(self, parts: list[Feat], path: str = "") -> Feat:
        """Features of several values side by side (``torch.cat`` along the feature dim)."""
        if any(p.spatial != 1 for p in parts):
            raise UnsupportedModuleError(path, "cat", "concatenating flattened feature maps is "
                                         "not supported")
        for p in parts:  # the result forgets how each part was pooled: block signs through max
            self._mark_consumed(p)
        return Feat(torch.cat([p.nodes for p in parts]), None, max(p.depth for p in parts),
                    pooled="none", exclusive=False)

    def pool(self, x: Feat, how: str) -> Feat:
        """An average ("avg") or max ("max") over positions: the channels stay the neurons."""
        pooled = "max" if "max" in (how, x.pooled) else "avg"
        return replace(x, pooled=pooled)

    def flatten(self, x: Feat, positions: int, channel_major: bool = True) -> Feat:
        """Merge ``positions`` positions per channel into the feature dimension."""
        if x.spatial != 1 and positions != 1:
            raise UnsupportedModuleError("", "flatten", "a feature map is flattened twice")
        if positions == 1:
            return x
        return replace(x, spatial=positions, channel_major=channel_major)

    def attention(self, x: Feat, heads: int, in_weight: tuple[str, Tensor],
                  in_bias: tuple[str, Tensor] | None, out_weight: tuple[str, Tensor],
                  out_bias: tuple[str, Tensor] | None, path: str = "") -> Feat:
        """Multi-head self-attention: q, k, v neurons per head, then the out-projection.

        The in-projection ``[3E, in]`` becomes edges into E query, E key and E value neurons
        (allocated in that order, so the tensor stays one slice). Fixed ATTN_QK edges pair query
        and key dimension i of a head, ATTN_KV edges join a head's keys to its values; the
        out-projection reads the value neurons.
        """
        name, w = in_weight[0], in_weight[1].detach()
        if x.spatial != 1 or w.shape[1] != x.size or w.shape[0] % 3:
            raise UnsupportedModuleError(path, "multi-head attention", f"in-projection '{name}' "
                                         f"of shape {tuple(w.shape)} does not fit {x.size} features")
        e = w.shape[0] // 3
        if e % heads:
            raise UnsupportedModuleError(path, "multi-head attention",
                                         f"{e} dimensions do not split into {heads} heads")
        depth = x.depth + 1
        q = self._new_set(e, NodeType.ATTN_Q, depth)
        k = self._new_set(e, NodeType.ATTN_K, depth)
        v = self._new_set(e, NodeType.ATTN_V, depth)
        start = self.sets[q].start
        row_type = torch.tensor([int(EdgeType.ATTN_IN_Q), int(EdgeType.ATTN_IN_K),
                                 int(EdgeType.ATTN_IN_V)], dtype=torch.int8).repeat_interleave(e)
        block = self._add_block(_Block(x.nodes, None, start, 3 * e, row_type, 1, w.unsqueeze(-1)))
        self._edge_segment(name, w, block)
        self._mark_consumed(x)
        if in_bias is not None:
            self._node_segment(in_bias[0], in_bias[1], start, "bias")
        self.attention_groups.append(AttentionGroup(q, k, v, heads))

        d = e // heads
        qs, ks, vs = (self.sets[i].nodes for i in (q, k, v))
        self._add_block(_Block(qs, ks, 0, e, int(EdgeType.ATTN_QK), 1, None))
        kv_src = ks.view(heads, d, 1).expand(heads, d, d).reshape(-1)
        kv_dst = vs.view(heads, 1, d).expand(heads, d, d).reshape(-1)
        self._add_block(_Block(kv_src, kv_dst, 0, 0, int(EdgeType.ATTN_KV), 1, None))

        values = Feat(vs, v, depth + 1)
        ow = out_weight[1].detach()
        if ow.shape[1] != e:
            raise UnsupportedModuleError(path, "multi-head attention", f"out-projection "
                                         f"'{out_weight[0]}' has shape {tuple(ow.shape)}")
        out = self._new_set(ow.shape[0], NodeType.HIDDEN, depth + 2, weighted=True)
        block = self._add_block(_Block(vs, None, self.sets[out].start, ow.shape[0],
                                       int(EdgeType.ATTN_OUT), 1, ow.unsqueeze(-1)))
        self._edge_segment(out_weight[0], ow, block)
        self._mark_consumed(values)
        if out_bias is not None:
            self._node_segment(out_bias[0], out_bias[1], self.sets[out].start, "bias")
        return self._feat(out)

    def output(self, x: Feat) -> None:
        """Mark ``x``'s neurons as the network's output."""
        self.outputs.append(x.nodes)

    def _mark_consumed(self, x: Feat) -> None:
        # A weight layer reading through a max cannot absorb a sign flip of its inputs.
        if x.pooled == "max":
            self.sign_blocked.append(x.nodes)

    def _mark_read(self, x: Feat) -> None:
        # A weight layer that reads only some neurons of a node set (a channel split) can absorb
        # a permutation of those, not one that swaps them with the neurons it does not read.
        if x.layer is None:
            self.partial_reads.append(x.nodes)

    # -- emit --------------------------------------------------------------------------------------

    def finalize(self, unplaced: tuple[str, ...] = (), order=None) -> ParamGraph:
        """Allocate and fill the graph, then record its symmetry group.

        ``order`` (the module's state_dict keys, say) sorts the segment table, so that
        ``to_state_dict`` returns the tensors in that order; segments it does not name go last.
        """
        if order is not None:
            rank = {name: i for i, name in enumerate(order)}
            self.segments.sort(key=lambda seg: rank.get(seg.name, len(rank)))
        dtype = self._value_dtype()
        n, e, v = self.num_nodes, self.num_edges, self.num_values
        edge_index = memory.empty((2, e), torch.long)
        edge_type = memory.empty(e, torch.int8)
        edge_size = memory.empty(e, torch.int32)
        edge_value = memory.empty(v, dtype)
        for b in self.blocks:
            self._fill_block(b, edge_index, edge_type, edge_size, edge_value)

        node_value = torch.zeros(n, len(NODE_SLOTS), dtype=dtype)
        node_mask = torch.zeros(n, len(NODE_SLOTS), dtype=torch.bool)
        for start, count, slot, t in self.slot_fills:
            node_value[start : start + count, slot] = t.reshape(-1).to(dtype)
            node_mask[start : start + count, slot] = True

        fields = self._node_fields()
        graph = ParamGraph(
            edge_index=edge_index, edge_value=edge_value, edge_size=edge_size,
            edge_type=edge_type, node_value=node_value, node_mask=node_mask,
            segments=SegmentTable(tuple(self.segments), tuple(unplaced)), num_nodes=n, **fields,
        )
        derive_symmetries(graph, self.sets, [b.src for b in self.blocks if b.values is None],
                          self.sign_blocked, self.ties, self.attention_groups,
                          groupings=self.groupings, partial_reads=self.partial_reads)
        return graph

    def _value_dtype(self) -> torch.dtype:
        # One dtype holds every value; mixed precisions widen to float64, which is exact for all.
        if len(self.dtypes) == 1:
            (dt,) = self.dtypes
            if dt.is_floating_point:
                return dt
        if not self.dtypes:
            return torch.float32
        return torch.float64

    @staticmethod
    def _fill_block(b: _Block, edge_index, edge_type, edge_size, edge_value) -> None:
        e0, e1 = b.edge_start, b.edge_start + b.num_edges
        if b.dst is None:
            n_in = b.src.numel()
            edge_index[0, e0:e1].view(b.n_out, n_in).copy_(b.src.expand(b.n_out, n_in))
            rows = torch.arange(b.dst_start, b.dst_start + b.n_out).unsqueeze(1)
            edge_index[1, e0:e1].view(b.n_out, n_in).copy_(rows.expand(b.n_out, n_in))
            if isinstance(b.etype, Tensor):
                edge_type[e0:e1].view(b.n_out, n_in).copy_(b.etype.unsqueeze(1).expand(b.n_out, n_in))
            else:
                edge_type[e0:e1] = b.etype
        else:
            edge_index[0, e0:e1] = b.src
            edge_index[1, e0:e1] = b.dst
            edge_type[e0:e1] = b.etype
        edge_size[e0:e1] = b.size
        v0, v1 = b.value_start, b.value_start + b.num_edges * b.size
        if b.values is None:
            edge_value[v0:v1] = 1
        else:
            edge_value[v0:v1].view(b.values.shape).copy_(b.values)

    def _node_fields(self) -> dict[str, Tensor]:
        def per_set(fn, dtype):
            return torch.cat([torch.full((s.size,), int(fn(s)), dtype=dtype) for s in self.sets]) \
                if self.sets else torch.empty(0, dtype=dtype)

        node_type = per_set(lambda s: s.type, torch.int8)
        for nodes in self.outputs:
            node_type[nodes] = int(NodeType.OUTPUT)
        return {
            "node_type": node_type,
            "node_layer": per_set(lambda s: s.depth, torch.long),
            "node_act": per_set(lambda s: s.act, torch.int8),
            "node_norm": per_set(lambda s: s.norm, torch.int8),
        }
