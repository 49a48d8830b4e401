"""The layout of a parameter graph, without PyTorch Geometric.

The field table (:data:`FIELDS`), the segment table that maps state_dict tensors to slices of the
graph (:class:`Segment`, :class:`SegmentTable`), and :class:`GraphFields`, the methods every
graph has. :class:`~paramgraph.graph.ParamGraph` (a PyG ``Data``, for batching) and
:class:`PlainGraph` (a plain attribute holder) both inherit them.

Why two classes: importing ``torch_geometric`` costs ~3 s (it imports ``torch._dynamo``), more than
torch itself. The command line's conversion, inspection and restore never batch graphs, so they
build :class:`PlainGraph` inside :func:`plain_graphs`; everything else gets ``ParamGraph``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .errors import GraphFormatError
from .types import NODE_SLOTS, WEIGHT_EDGE_TYPES, EdgeType, NodeType

# The floating dtypes a graph's values can have.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPES = {str(t).removeprefix("torch."): t for t in FLOAT_DTYPES}


# The dtype of edge_index. Node ids fit in 32 bits for any network there is (2^31 neurons), and an
# edge list is most of a graph's bytes: int64 ids made filling a GPT-2-sized graph (125M edges)
# take 1.5x as long. Code that scatters along edges (torch's scatter needs int64) widens the ids
# it needs with .long(), batch by batch.
INDEX_DTYPE = torch.int32

# Every tensor field of a ParamGraph: (the dtype a valid graph stores it in, None for the
# network's own floating dtype; what its first dimension counts). The one list of fields:
# ParamGraph.validate, graph files and the metanet's input check read it.
FIELDS: dict[str, tuple[torch.dtype | None, str]] = {
    "edge_index": (INDEX_DTYPE, "2"), "edge_value": (None, "values"),
    "edge_size": (torch.int32, "edges"), "edge_type": (torch.int8, "edges"),
    "node_value": (None, "nodes"), "node_mask": (torch.bool, "nodes"),
    "node_type": (torch.int8, "nodes"), "node_layer": (torch.long, "nodes"),
    "node_act": (torch.int8, "nodes"), "node_norm": (torch.int8, "nodes"),
    "node_scale": (torch.bool, "nodes"), "node_sign": (torch.bool, "nodes"),
    "perm_group": (torch.long, "nodes"), "perm_pos": (torch.long, "nodes"),
    "node_head": (torch.long, "nodes"), "head_role": (torch.int8, "nodes"),
}
# Fields a data set may hang on a graph that are computed from its values (the quasi gauge's
# section and kappa's features, cached once per graph: paramgraph.models.gauge). New values make
# them stale, so with_values removes them; a metanet reads them only where present.
CACHED_VALUE_FIELDS = ("gauge_factor", "gauge_features", "gauge_key")
# The per-node fields with one entry per node ([N]); node_value and node_mask are [N, slots].
NODE_VECTOR_FIELDS = tuple(k for k, (_, per) in FIELDS.items()
                           if per == "nodes" and k not in ("node_value", "node_mask"))


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name` for the floating dtypes a graph can hold."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise GraphFormatError(f"unsupported tensor dtype '{name}'") from None


@dataclass(frozen=True)
class Segment:
    """Where one state_dict tensor lives in the graph.

    ``kind == "edge"``: edges ``start .. start+count`` hold the tensor; its values are
    ``edge_value[value_start : value_start + numel]`` which, viewed as ``view`` and permuted by
    ``permute``, reshape to ``shape``. ``kind == "node"``: nodes ``start .. start+count`` hold it in
    column ``slot`` of ``node_value``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    start: int
    count: int
    value_start: int = 0
    slot: int = 0
    view: tuple[int, ...] | None = None
    permute: tuple[int, ...] | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Segment":
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        for key in ("view", "permute"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass(frozen=True)
class SegmentTable:
    """The segments of one graph, in state_dict order, plus what the converter did not place."""

    segments: tuple[Segment, ...]
    unplaced: tuple[str, ...] = field(default=())

    def __iter__(self):
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    def __getitem__(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"segments": [s.to_dict() for s in self.segments], "unplaced": list(self.unplaced)}

    @classmethod
    def from_dict(cls, d: dict) -> "SegmentTable":
        return cls(tuple(Segment.from_dict(s) for s in d["segments"]), tuple(d.get("unplaced", ())))


class GraphFields:
    """What every parameter graph offers on top of its fields (see :mod:`paramgraph.graph`)."""

    # -- derived views -------------------------------------------------------------------------

    @property
    def num_params(self) -> int:
        """Number of converted parameter and buffer values (learned edges and present slots)."""
        weight = self.weight_edge_mask()
        return int(self.edge_size[weight].sum()) + int(self.node_mask.sum())

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """``(src, dst)``: each edge's source and target node as int64, the index dtype torch's
        scatter operations need (``edge_index`` itself is int32)."""
        src, dst = self.edge_index.long()
        return src, dst

    def edge_offsets(self) -> Tensor:
        """[E] long: where each edge's values start in ``edge_value``."""
        size = self.edge_size.long()
        return torch.cumsum(size, 0) - size

    def value_edges(self) -> Tensor:
        """[V] long: the edge each entry of ``edge_value`` belongs to."""
        size = self.edge_size.long()
        return torch.repeat_interleave(torch.arange(size.numel(), device=size.device), size)

    def weight_edge_mask(self) -> Tensor:
        """[E] bool: which edges carry learned weights (the others are fixed wiring of value 1)."""
        return is_weight_type(self.edge_type)

    def with_values(self, edge_value: Tensor, node_value: Tensor) -> "GraphFields":
        """A copy of this graph with new values in the same layout (structure is shared)."""
        if edge_value.shape != self.edge_value.shape or node_value.shape != self.node_value.shape:
            raise GraphFormatError(
                f"new values have shapes {tuple(edge_value.shape)}/{tuple(node_value.shape)}, the "
                f"graph needs {tuple(self.edge_value.shape)}/{tuple(self.node_value.shape)}"
            )
        out = copy.copy(self)  # shallow: the structure tensors are shared, not duplicated
        out.edge_value = edge_value
        out.node_value = node_value
        for key in CACHED_VALUE_FIELDS:  # computed from the old values: stale now
            if key in out:
                del out[key]
        return out

    def validate(self) -> None:
        """Check internal consistency; raises :class:`GraphFormatError` naming the bad field."""
        n, e = self.num_nodes, self.edge_index.size(1)
        checks = [
            ("edge_index", self.edge_index.dim() == 2 and self.edge_index.size(0) == 2),
            ("edge_size", self.edge_size.shape == (e,)),
            ("edge_type", self.edge_type.shape == (e,)),
            ("edge_value", self.edge_value.numel() == int(self.edge_size.long().sum())),
            ("node_value", tuple(self.node_value.shape) == (n, len(NODE_SLOTS))),
            ("node_mask", tuple(self.node_mask.shape) == (n, len(NODE_SLOTS))),
        ]
        for key in NODE_VECTOR_FIELDS:
            checks.append((key, tuple(getattr(self, key).shape) == (n,)))
        for key, ok in checks:
            if not ok:
                raise GraphFormatError(f"parameter graph field '{key}' has an inconsistent shape")
        if e and (int(self.edge_index.min()) < 0 or int(self.edge_index.max()) >= n):
            raise GraphFormatError("parameter graph field 'edge_index' points outside the nodes")
        for seg in self.segments:
            if seg.kind == "edge":
                end = seg.value_start + seg.numel
                if end > self.edge_value.numel() or seg.start + seg.count > e:
                    raise GraphFormatError(f"segment '{seg.name}' points past the edge values")
            elif seg.start + seg.count > n or seg.count != seg.numel:
                raise GraphFormatError(f"segment '{seg.name}' points past the nodes")

    # -- inspection ------------------------------------------------------------------------------

    def to_networkx(self, values: bool = True):
        """A ``networkx.MultiDiGraph`` with every node and edge field as attributes.

        Node attributes: ``type``, ``layer``, ``activation``, ``norm``, ``scale``, ``sign``,
        ``perm_group``, ``perm_pos``, ``head`` and (with ``values``) one per present slot of
        ``NODE_SLOTS``. Edge attributes: ``type``, ``size`` and (with ``values``) ``value``: a float
        for single-value edges, a list for kernels. Names of enum members are used, not codes.
        """
        import networkx as nx

        from .types import Activation, NormKind

        g = nx.MultiDiGraph()
        ntype = self.node_type.tolist()
        fields = {
            "layer": self.node_layer.tolist(),
            "perm_group": self.perm_group.tolist(),
            "perm_pos": self.perm_pos.tolist(),
            "head": self.node_head.tolist(),
            "scale": self.node_scale.tolist(),
            "sign": self.node_sign.tolist(),
        }
        act, norm = self.node_act.tolist(), self.node_norm.tolist()
        slot_values = self.node_value.double().tolist() if values else None
        mask = self.node_mask.tolist()
        for i in range(self.num_nodes):
            attrs = {k: v[i] for k, v in fields.items()}
            attrs["type"] = NodeType(ntype[i]).name.lower()
            attrs["activation"] = Activation(act[i]).name.lower()
            attrs["norm"] = NormKind(norm[i]).name.lower()
            if values:
                for j, slot in enumerate(NODE_SLOTS):
                    if mask[i][j]:
                        attrs[slot] = slot_values[i][j]
            g.add_node(i, **attrs)
        src, dst = self.edge_index.tolist()
        etype, esize = self.edge_type.tolist(), self.edge_size.tolist()
        flat = self.edge_value.double().tolist() if values else None
        offset = 0
        for k in range(len(src)):
            attrs = {"type": EdgeType(etype[k]).name.lower(), "size": esize[k]}
            if values:
                chunk = flat[offset : offset + esize[k]]
                attrs["value"] = chunk[0] if esize[k] == 1 else chunk
            offset += esize[k]
            g.add_edge(src[k], dst[k], **attrs)
        return g


class PlainGraph(GraphFields):
    """A parameter graph's fields as plain attributes: what :func:`new_graph` builds inside
    :func:`plain_graphs`; never batched."""

    def __init__(self, *, num_nodes: int, **fields):
        self.__dict__.update(fields)
        self.num_nodes = num_nodes

    # The slice of PyG's Data interface that graph files and the command line read.
    def keys(self) -> list[str]:
        return list(vars(self))

    def __getitem__(self, key: str):
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in vars(self)


_PLAIN = contextvars.ContextVar("paramgraph_plain_graphs", default=False)


@contextlib.contextmanager
def plain_graphs():
    """Inside this block the converter and graph files build :class:`PlainGraph` objects, so that
    ``torch_geometric`` is not imported (see the module docstring)."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def new_graph(**fields) -> GraphFields:
    """A ``ParamGraph`` of ``fields`` (and ``num_nodes``, ``segments``); a :class:`PlainGraph`
    inside :func:`plain_graphs`."""
    if _PLAIN.get():
        return PlainGraph(**fields)
    from .graph import ParamGraph

    return ParamGraph(**fields)


def _runs(codes) -> list[tuple[int, int]]:
    """Sorted integer codes as inclusive ``(first, last)`` runs of consecutive values."""
    runs: list[list[int]] = []
    for c in sorted(int(c) for c in codes):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return [(a, b) for a, b in runs]


_WEIGHT_RUNS = _runs(WEIGHT_EDGE_TYPES)


def is_weight_type(edge_type: Tensor) -> Tensor:
    """Bool mask of the entries of ``edge_type`` that are weight edge types.

    A few range comparisons instead of ``torch.isin``, which is several times slower on the tens
    of millions of edges of a large network.
    """
    mask = None
    for lo, hi in _WEIGHT_RUNS:
        run = edge_type == lo if lo == hi else (edge_type >= lo) & (edge_type <= hi)
        mask = run if mask is None else mask.logical_or_(run)
    return mask if mask is not None else torch.zeros_like(edge_type, dtype=torch.bool)
