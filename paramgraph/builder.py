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
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import memory
from .errors import UnsupportedModuleError
from .layout import INDEX_DTYPE, Segment, SegmentTable, dtype_name, new_graph
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

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph

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
    # dense edges ordered (in, out) instead, values [n_in, n_out, size]: an embedding table
    # [num, dim] is then its own value order (one contiguous copy)
    source_major: bool = False

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
class Branches:
    """Node set ``layer`` holds ``count`` branches of ``C = size / count`` channels side by
    side, branch-major: node ``r * C + j`` is channel j of branch r (a selective-kernel or
    split-attention block). A softmax across the branches or a sum over them reads channel j of
    every branch together, so the set permutes by one permutation of its C positions shared
    by all branches (``perm_pos = j``), tied to the C channels of the sum."""

    layer: int
    count: int


@dataclass
class AttentionGroup:
    """The query, key and value node sets of one multi-head attention block; ``rotary``: a
    rotary position embedding rotates pairs of query/key dimensions (ROTARY edges)."""

    q_layer: int
    k_layer: int
    v_layer: int
    heads: int
    rotary: bool = False
    kv_heads: int | None = None  # grouped-query attention: fewer key/value heads (None: heads)


def _storage(t: Tensor) -> tuple:
    return ("storage", t.data_ptr(), tuple(t.shape), tuple(t.stride()))


def _shared_heads(x: Tensor, heads: int, role: str, path: str) -> Tensor:
    """The distinct key (value) heads of ``x`` ``[n, d]``: ``x`` itself, or, when it comes
    repeated to the ``heads`` query heads (``repeat_kv``), its rows ``0, r, 2r, ...`` provided
    row ``h`` is row ``h // r`` of them."""
    kv = int(x[:, 0].unique().numel())
    if kv == x.shape[0]:
        return x
    if heads % kv or x.shape[0] != heads or \
            not torch.equal(x, x[:: heads // kv].repeat_interleave(heads // kv, 0)):
        raise UnsupportedModuleError(path, "attention", f"its {role} heads are not shared by "
                                     "consecutive query heads (grouped-query attention repeats "
                                     "each key/value head for r neighbouring query heads)")
    return x[:: heads // kv]


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
        self.branches: list[Branches] = []
        self.ordered: list[Tensor] = []  # nodes read in their feature order (a conv along them)
        self.sign_blocked: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.dtypes: set[torch.dtype] = set()
        self._placed: dict[object, str] = {}  # tensor name / storage -> name, to refuse sharing
        self._tables: dict[object, tuple[str, int]] = {}  # embedding storage -> (name, out set)
        self.unscaled: list[Tensor] = []  # neurons that must keep their scale and sign (tied)
        self.aliases: dict[str, str] = {}  # a state_dict key -> another key of the same tensor
        self._producer: dict[int, _Block] = {}  # node set -> the linear block that made it

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

    def _one_to_one(self, src: Feat, dst_layer: int, etype: EdgeType,
                    branch_size: int | None = None) -> None:
        """Identity edges from ``src``'s features onto node set ``dst_layer``, tied; with
        ``branch_size`` the destination is branched (:class:`Branches`) with that many channels
        per branch, and ``src`` is tied part by part (:meth:`_tie_branches`)."""
        dst = self.sets[dst_layer]
        self._add_block(_Block(src.nodes, dst.nodes, dst.start, dst.size, int(etype), 1, None))
        if branch_size is None:
            self.ties.append(Tie(src, dst_layer))
        else:
            self._tie_branches(src, dst_layer, branch_size)

    def _tie_branches(self, src: Feat, dst_layer: int, c: int) -> None:
        """Tie ``src`` (wired feature by feature onto node set ``dst_layer``) to that set when
        both are whole node sets of branches of ``c`` channels, one after another: a stack of
        separate branch outputs (selective kernel) or one set of branches (split attention).
        Each part is then branched (or is one branch), so channel j of every branch and of the
        destination share one position. Anything else (a shuffled or uneven part) is a tie
        from a value that is no whole set, which fixes both sides."""
        parts = [src] if src.layer is not None else self._parts(src)
        offsets = [0]
        for p in parts or []:
            offsets.append(offsets[-1] + p.size)
        if not parts or any(p.size % c or o % c for p, o in zip(parts, offsets)) \
                or self.sets[dst_layer].size % c:
            self.ties.append(Tie(replace(src, layer=None), dst_layer))
            return
        for layer, size in [(p.layer, p.size) for p in parts] + [(dst_layer,
                                                                  self.sets[dst_layer].size)]:
            if size > c:
                self.branches.append(Branches(layer, size // c))
        for p in parts:
            self.ties.append(Tie(p, dst_layer))

    # -- layers ----------------------------------------------------------------------------------

    def linear(self, x: Feat, weight: tuple[str, Tensor], bias: tuple[str, Tensor] | None,
               path: str = "", transposed: bool = False) -> Feat:
        """``y = W x + b`` reading ``x``'s features; W is ``[out, in]`` (``[in, out]`` with
        ``transposed``).

        If ``x`` is a flattened feature map, one edge per (channel, output) holds the weights of
        all the channel's positions (a FLATTEN_LINEAR edge). Reading an attention block's value
        dimensions, the edges are its out-projection (ATTN_OUT).
        """
        name, w = weight[0], weight[1].detach()
        original = w
        n_in = x.size * x.spatial
        if transposed and w.dim() == 2:
            w = w.t()
        if w.dim() != 2 or w.shape[1] != n_in:
            raise UnsupportedModuleError(path, "linear", f"weight '{name}' has shape "
                                         f"{tuple(w.shape)}, the input carries {n_in} features")
        out = self._new_set(w.shape[0], NodeType.HIDDEN, x.depth + 1, weighted=True)
        view = permute = None
        if transposed and x.spatial != 1:
            raise UnsupportedModuleError(path, "linear", f"transposed weight '{name}' reads a "
                                         "flattened feature map")
        if x.spatial == 1:
            # the out-projection of an attention block reads its value dimensions
            reads_values = self._reads_values(x)
            values = w.unsqueeze(-1)
            etype = EdgeType.ATTN_OUT if reads_values else EdgeType.LINEAR
        elif x.channel_major:
            values, etype = w.view(w.shape[0], x.size, x.spatial), EdgeType.FLATTEN_LINEAR
        else:  # features ordered (position, channel): move positions last, record the permute
            view, permute = (w.shape[0], x.spatial, x.size), (0, 2, 1)
            values, etype = w.view(view).permute(permute), EdgeType.FLATTEN_LINEAR
        if transposed:  # stored [in, out] (GPT-2's Conv1D): edges (in, out), one plain copy
            values = original.unsqueeze(-1)
        block = self._add_block(_Block(x.nodes, None, self.sets[out].start, w.shape[0],
                                       int(etype), x.spatial, values, source_major=transposed))
        if self._tie_to_embedding(name, original, x, out) == name:  # torch.export reads both uses
            name = self.aliases.get(name)  # through one key: the copy takes the other key
        if name is not None:
            self._edge_segment(name, original, block, view, permute)
        self._mark_consumed(x)
        self._mark_read(x)
        if bias is not None:
            self._node_segment(bias[0], bias[1], self.sets[out].start, "bias")
        if etype == EdgeType.LINEAR:
            self._producer[out] = block
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

    def product(self, a: Feat, b: Feat, path: str = "", branches: int = 1) -> Feat:
        """``a * b`` elementwise (a gate times its input): PRODUCT neurons with identity edges
        from both operands, so channel i of both and of the product permute together.

        ``branches > 1``: the features are that many branches side by side (a selective-kernel
        block's branch outputs times their attention weights); the product set is branched
        (:class:`Branches`). One operand may be one channel whose positions are the other's
        features (ECA's gate ``g.view(B, C, 1, 1)``): see :meth:`_spread_product`.
        """
        if a.spatial != b.spatial:
            return self._spread_product(a, b, path)
        return self._elementwise(a, b, path, "mul", NodeType.PRODUCT, EdgeType.PRODUCT,
                                 "a product needs the same features on both sides", branches)

    def _spread_product(self, a: Feat, b: Feat, path: str) -> Feat:
        """``x * g`` with ``g`` one neuron whose ``C`` positions meet ``x``'s ``C`` features
        (ECA: ``y_i = x_i * g[i]``): PRODUCT neuron i reads feature i of ``x`` and position i of
        ``g``. Which position meets which channel is fixed by the layout, so the product, ``x``
        and ``g`` keep their order (the gate's edges are no whole-set tie)."""
        x, g = (a, b) if a.spatial == 1 else (b, a)
        if x.spatial != 1 or g.size * g.spatial != x.size:
            raise UnsupportedModuleError(path, "mul", f"operands carry {a.size}x{a.spatial} and "
                                         f"{b.size}x{b.spatial} features; a product needs the "
                                         "same features on both sides")
        spread = g.nodes.repeat_interleave(g.spatial) if g.channel_major \
            else g.nodes.repeat(g.spatial)
        out = self._new_set(x.size, NodeType.PRODUCT, max(a.depth, b.depth) + 1)
        for operand in (a, b):
            self._one_to_one(x if operand is x else Feat(spread, None, g.depth), out,
                             EdgeType.PRODUCT)
        return self._feat(out)

    def _elementwise(self, a: Feat, b: Feat, path: str, op: str, node_type: NodeType,
                     edge_type: EdgeType, requirement: str, branches: int = 1) -> Feat:
        """A new neuron per feature, wired one-to-one from both operands (which must carry the
        same features); ``branches > 1``: the features are that many branches side by side."""
        if a.size != b.size or a.spatial != b.spatial or a.channel_major != b.channel_major:
            raise UnsupportedModuleError(path, op, f"operands carry {a.size}x{a.spatial} and "
                                         f"{b.size}x{b.spatial} features; {requirement}")
        out = self._new_set(a.size, node_type, max(a.depth, b.depth) + 1)
        branch_size = a.size // branches if branches > 1 else None
        self._one_to_one(a, out, edge_type, branch_size)
        self._one_to_one(b, out, edge_type, branch_size)
        return replace(self._feat(out), spatial=a.spatial, channel_major=a.channel_major)

    def branch_sum(self, x: Feat, branches: int, path: str = "") -> Feat:
        """The sum over the branches of ``x``, whose features are ``branches`` branches of ``C``
        channels side by side: ``y_j = sum_r x_{r, j}``. RESIDUAL neurons, one RESIDUAL edge
        from each ``x_{r, j}``; channel j of every branch is tied to ``y_j``."""
        if x.spatial != 1 or x.size % branches:
            raise UnsupportedModuleError(path, "sum", f"{x.size}x{x.spatial} features do not "
                                         f"split into {branches} branches of channels")
        c = x.size // branches
        out = self._new_set(c, NodeType.RESIDUAL, x.depth + 1)
        dst = self.sets[out].nodes.repeat(branches)
        self._add_block(_Block(x.nodes, dst, self.sets[out].start, c, int(EdgeType.RESIDUAL), 1,
                               None))
        self._tie_branches(x, out, c)
        return self._feat(out)

    def softmax(self, x: Feat, branches: int) -> Feat:
        """A softmax across the ``branches`` branches of ``x``'s features (branch-major):
        ``y_{r, j} = exp(x_{r, j}) / sum_s exp(x_{s, j})``. Activation SOFTMAX on ``x``'s own
        neurons when it folds, else on COPY neurons; either set is branched, so channel j moves
        with channel j of the other branches and no neuron claims a scale or sign (the
        softmax is neither homogeneous nor odd)."""
        c = x.size // branches
        if self._can_fold(x, stage=1) and x.pooled == "none":
            s = self.sets[x.layer]
            s.act, s.stage = Activation.SOFTMAX, 2
            self.branches.append(Branches(x.layer, branches))
            return x
        out = self._new_set(x.size, NodeType.COPY, x.depth + 1, act=Activation.SOFTMAX, stage=2)
        self._one_to_one(x, out, EdgeType.IDENTITY, c)
        return self._feat(out)

    def channel_conv(self, x: Feat, weight: tuple[str, Tensor], bias: tuple[str, Tensor] | None,
                     path: str = "", groups: int = 1) -> Feat:
        """A convolution sliding along ``x``'s features (ECA attention: a Conv1d with one input
        channel over the pooled channel vector, ``z_i = sum_t w_t y_{i + t - p}``).

        The features become the positions of one CHANNEL_MAP neuron (one CHANNEL_MAP edge per
        feature, in position order), which the convolution reads as its single input channel:
        its kernel is one CONV edge per output channel, shared across positions as in any
        convolution. Neighbouring channels now mix, so no permutation of ``x``'s channels is
        a symmetry for every kernel (only reversing their order while flipping the kernel is,
        which the graph's permutation group cannot express): ``x``'s sets keep their order.
        """
        if x.spatial != 1:
            raise UnsupportedModuleError(path, "convolution", "it slides along the features of "
                                         "a flattened feature map")
        a = self._new_set(1, NodeType.CHANNEL_MAP, x.depth + 1)
        self._add_block(_Block(x.nodes, self.sets[a].nodes.expand(x.size), self.sets[a].start, 1,
                               int(EdgeType.CHANNEL_MAP), 1, None))
        self.ordered.append(x.nodes)
        self._mark_consumed(x)
        return self.conv(self._feat(a), weight, bias, path, groups)

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

    # -- sequences: embeddings, constants, tokens, attention written out --------------------------

    def embedding(self, table: tuple[str, Tensor], source: NodeType, path: str = "") -> Feat:
        """A lookup table ``[num, dim]`` (or ``[1, num, dim]``) read as a linear map from one-hot
        inputs: ``num`` fixed source nodes (``NodeType.TOKEN`` or ``POSITION``), ``dim`` new
        neurons, one EMBED edge per (source, feature) holding ``table[source, feature]``.

        With ``e_t`` the one-hot vector of token t, ``table[t] = table^T e_t``: a linear layer
        without bias whose input neurons are the tokens. Edges are ordered (source, feature),
        the table's own order, so its values are one contiguous copy.
        """
        name, w = table[0], table[1].detach()
        if w.dim() < 2 or math.prod(w.shape[:-1]) != w.shape[-2]:
            raise UnsupportedModuleError(path, "embedding", f"table '{name}' of shape "
                                         f"{tuple(w.shape)} is not [entries, features]")
        rows = w.reshape(w.shape[-2], w.shape[-1])
        src = self._new_set(rows.shape[0], source, 0)
        out = self._new_set(rows.shape[1], NodeType.HIDDEN, 1, weighted=True)
        block = self._add_block(_Block(self.sets[src].nodes, None, self.sets[out].start,
                                       rows.shape[1], int(EdgeType.EMBED), 1, rows.unsqueeze(-1),
                                       source_major=True))
        self._edge_segment(name, w, block)
        if w.dim() == 2 and w.numel():
            self._tables[_storage(w)] = (name, out)
        return self._feat(out)

    def _tie_to_embedding(self, name: str, w: Tensor, x: Feat, head: int) -> str | None:
        """A linear weight ``[V, D]`` that is an embedding table (tied input/output embeddings,
        GPT-2's ``lm_head.weight is wte.weight``): one parameter, two uses, kept as two copies
        of its values that every group element keeps equal. The table's edge (token v, feature
        j) and the head's edge (input j, logit v) hold the same ``W[v, j]``; the tokens are
        fixed, so the head's outputs (node set ``head``, the logits) are pinned too, the table's
        features and the head's inputs take one permutation (a :class:`Tie`, no edges), and none
        of them scales or flips (a scale ``q_j`` would multiply the table's column and divide the
        head's). Returns the table's name, None if ``w`` is no table."""
        table = self._tables.get(_storage(w)) if w.dim() == 2 and w.numel() else None
        if table is None:
            return None
        first, out = table
        if x.spatial != 1 or x.size != self.sets[out].size:
            raise UnsupportedModuleError(name.rpartition(".")[0], "linear", f"'{name}' is the "
                                         f"embedding table '{first}' but does not read its "
                                         "features: only tied input/output embeddings share")
        self.ties.append(Tie(x, out))
        self.ordered.append(self.sets[head].nodes)  # fixed, as the tokens are
        self.unscaled += [x.nodes, self.sets[out].nodes, self.sets[head].nodes]
        for key in [k for k, v in self._placed.items() if v == first and k[0] == "storage"]:
            del self._placed[key]  # this second use is placed (a third one is refused)
        return first

    def constant(self, size: int) -> Feat:
        """Features of a constant computed in forward (sinusoidal positions): fixed nodes, no
        values. Added to a value, they pin its features (a permutation would move them)."""
        return self._feat(self._new_set(size, NodeType.CONSTANT, 0))

    def token(self, param: tuple[str, Tensor], path: str = "") -> Feat:
        """A learned token (CLS, register) of ``dim`` features: bias-only neurons holding it.
        Several tokens in one parameter (``[1, R, dim]``, timm's register tokens) hold ``R``
        values per feature, more than a bias: they are a table read from ``R`` fixed POSITION
        nodes, as learned positions are (:meth:`embedding`)."""
        if param[1].numel() != param[1].shape[-1]:
            return self.embedding(param, NodeType.POSITION, path)
        out = self._new_set(param[1].numel(), NodeType.HIDDEN, 0, weighted=True)
        self._node_segment(param[0], param[1], self.sets[out].start, "bias")
        return self._feat(out)

    def sequence(self, parts: list[Feat], path: str = "") -> Feat:
        """Values joined along positions (``torch.cat`` of a CLS token and patch tokens): each
        feature is one neuron at some positions and another at others, so new SEQUENCE neurons
        tied one-to-one to every part (all parts permute together)."""
        size = parts[0].size
        if any(p.size != size or p.spatial != 1 for p in parts):
            raise UnsupportedModuleError(path, "cat", "the parts joined along positions carry "
                                         f"{[p.size for p in parts]} features; they must agree")
        out = self._new_set(size, NodeType.SEQUENCE, max(p.depth for p in parts) + 1)
        for p in parts:
            self._one_to_one(p, out, EdgeType.SEQUENCE)
        return self._feat(out)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, pairs: Tensor | None,
               path: str = "") -> Feat:
        """Attention written out in tensor operations: ``q`` ``[heads, d]``, ``k`` ``[kv, d]``
        and ``v`` ``[kv, dv]`` are node ids of fresh linear projections (separate or one fused
        projection); they become the block's ATTN_Q/K/V neurons and their weights ATTN_IN edges,
        as :meth:`attention` builds them for ``nn.MultiheadAttention``. ``pairs`` ``[P, 2]``:
        dimensions of a head that a rotary embedding rotates together (ROTARY edges). Returns
        the value neurons, which the out-projection reads (ATTN_OUT edges).

        Grouped-query (and multi-query) attention: ``kv`` key/value heads, each shared by
        ``r = heads / kv`` consecutive query heads (``repeat_kv``: query head ``h`` reads key
        and value head ``h // r``); keys and values may come repeated to ``heads`` rows. The
        ATTN_QK edges then join query head ``h`` to key head ``h // r``, which ties their maps.
        """
        heads = q.shape[0]
        k, v = (_shared_heads(x, heads, role, path) for x, role in ((k, "key"), (v, "value")))
        kv = k.shape[0]
        if k.shape[1] != q.shape[1] or v.shape[0] != kv or heads % kv:
            raise UnsupportedModuleError(path, "attention", f"{heads} query heads of "
                                         f"{q.shape[1]} dimensions, keys {tuple(k.shape)} and "
                                         f"values {tuple(v.shape)} do not pair up head by head")
        layers = [self._carve(nodes.reshape(-1), ntype, etype, role, path)
                  for nodes, ntype, etype, role in (
                      (q, NodeType.ATTN_Q, EdgeType.ATTN_IN_Q, "query"),
                      (k, NodeType.ATTN_K, EdgeType.ATTN_IN_K, "key"),
                      (v, NodeType.ATTN_V, EdgeType.ATTN_IN_V, "value"))]
        self.attention_groups.append(AttentionGroup(*layers, heads, rotary=pairs is not None,
                                                    kv_heads=kv))
        d, dv, r = q.shape[1], v.shape[1], heads // kv
        k_of_q = k.repeat_interleave(r, 0)  # query head h reads key head h // r
        self._add_block(_Block(q.reshape(-1), k_of_q.reshape(-1), 0, 0, int(EdgeType.ATTN_QK),
                               1, None))
        kv_src = k.view(kv, d, 1).expand(kv, d, dv).reshape(-1)
        kv_dst = v.view(kv, 1, dv).expand(kv, d, dv).reshape(-1)
        self._add_block(_Block(kv_src, kv_dst, 0, 0, int(EdgeType.ATTN_KV), 1, None))
        if pairs is not None:
            for nodes in (q, k):
                src, dst = nodes[:, pairs[:, 0]].reshape(-1), nodes[:, pairs[:, 1]].reshape(-1)
                self._add_block(_Block(src, dst, 0, 0, int(EdgeType.ROTARY), 1, None))
        v_layer = layers[2]
        return Feat(self.sets[v_layer].nodes, v_layer, self.sets[v_layer].depth + 1)

    def _carve(self, nodes: Tensor, ntype: NodeType, etype: EdgeType, role: str,
               path: str) -> int:
        """Turn ``nodes`` (consecutive, of one fresh linear projection) into their own node set
        of type ``ntype``, their weights into ``etype`` edges; returns the set's index."""
        start, n = int(nodes[0]), nodes.numel()
        i = bisect.bisect_right([s.start for s in self.sets], start) - 1
        s = self.sets[i]
        block = self._producer.get(i)
        if not torch.equal(nodes, torch.arange(start, start + n)) or start + n > s.start + s.size:
            raise UnsupportedModuleError(path, "attention", f"the {role} dimensions are not one "
                                         "run of a projection's outputs in (head, dimension) "
                                         "order (an interleaved fused q/k/v layout?)")
        if block is None or s.type != NodeType.HIDDEN or s.stage != 0:
            raise UnsupportedModuleError(path, "attention", f"its {role}s are not read straight "
                                         "from a linear projection (no activation, norm or sum "
                                         "in between)")
        if (start, n) != (s.start, s.size):  # part of a fused projection: split its node set
            if i != len(self.sets) - 1:
                raise UnsupportedModuleError(path, "attention", f"the fused projection of its "
                                             f"{role}s is not the last layer before the attention")
            pieces = [(a, b) for a, b in ((s.start, start), (start, start + n),
                                          (start + n, s.start + s.size)) if b > a]
            self.sets[i:] = [replace(s, start=a, size=b - a) for a, b in pieces]
            for j in range(i, len(self.sets)):
                self._producer[j] = block
            i += pieces.index((start, start + n))
        self.sets[i].type = ntype
        if not isinstance(block.etype, Tensor):
            block.etype = torch.full((block.n_out,), block.etype, dtype=torch.int8)
        block.etype[start - block.dst_start : start - block.dst_start + n] = int(etype)
        return i

    def output(self, x: Feat) -> None:
        """Mark ``x``'s neurons as the network's output."""
        self.outputs.append(x.nodes)

    def _reads_values(self, x: Feat) -> bool:
        """Whether ``x`` is the value neurons of one attention block: the set in order, or read
        once per query head that shares them (grouped-query attention)."""
        i = x.layer if x.layer is not None else \
            bisect.bisect_right([s.start for s in self.sets], int(x.nodes[0])) - 1
        s = self.sets[i]
        return s.type == NodeType.ATTN_V and \
            bool(((x.nodes >= s.start) & (x.nodes < s.start + s.size)).all())

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
        edge_index = memory.empty((2, e), INDEX_DTYPE)
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
        graph = new_graph(
            edge_index=edge_index, edge_value=edge_value, edge_size=edge_size,
            edge_type=edge_type, node_value=node_value, node_mask=node_mask,
            segments=SegmentTable(tuple(self.segments), tuple(unplaced)), num_nodes=n, **fields,
        )
        fixed_sources = [b.src for b in self.blocks if b.values is None] + self.unscaled
        derive_symmetries(graph, self.sets, fixed_sources,
                          self.sign_blocked, self.ties, self.attention_groups,
                          groupings=self.groupings, partial_reads=self.partial_reads,
                          branches=self.branches, ordered=self.ordered)
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
        # the node ids in the index's dtype first, so each large copy is a plain one
        src = b.src.to(INDEX_DTYPE)
        if b.source_major:  # dense, edges ordered (in, out); one edge type
            n_in = src.numel()
            edge_index[0, e0:e1].view(n_in, b.n_out).copy_(src.unsqueeze(1).expand(n_in, b.n_out))
            cols = torch.arange(b.dst_start, b.dst_start + b.n_out, dtype=INDEX_DTYPE)
            edge_index[1, e0:e1].view(n_in, b.n_out).copy_(cols.expand(n_in, b.n_out))
            if isinstance(b.etype, Tensor):  # per output: a carved fused projection
                edge_type[e0:e1].view(n_in, b.n_out).copy_(b.etype.expand(n_in, b.n_out))
            else:
                edge_type[e0:e1] = b.etype
        elif b.dst is None:
            n_in = src.numel()
            edge_index[0, e0:e1].view(b.n_out, n_in).copy_(src.expand(b.n_out, n_in))
            rows = torch.arange(b.dst_start, b.dst_start + b.n_out, dtype=INDEX_DTYPE).unsqueeze(1)
            edge_index[1, e0:e1].view(b.n_out, n_in).copy_(rows.expand(b.n_out, n_in))
            if isinstance(b.etype, Tensor):
                edge_type[e0:e1].view(b.n_out, n_in).copy_(b.etype.unsqueeze(1).expand(b.n_out, n_in))
            else:
                edge_type[e0:e1] = b.etype
        else:
            edge_index[0, e0:e1] = src
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
