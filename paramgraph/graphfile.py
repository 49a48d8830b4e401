"""Graph files: parameter graphs on disk (:func:`save_graph`, :func:`load_graph`,
:func:`read_graph_file`).

A graph file is a safetensors file (default suffix ``.pgraph``): every tensor field of the
:class:`~paramgraph.ParamGraph` is a tensor named ``graph/<field>`` (int64 index fields stored as
int32 when they fit, widened again on load), the segment table, the node count and a format
version are JSON in the safetensors metadata, and state_dict entries the graph does not hold
(``num_batches_tracked`` counters, tensors the forward never reads) ride along verbatim as
``extra/<key>`` tensors so that a restored checkpoint is complete. Loading parses a JSON header and
raw little-endian tensor bytes; no pickle is involved, so a graph file written on one machine reads
on any other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .atomic import atomic_path
from .errors import GraphFormatError, one_line
from .formats import GRAPH_FORMAT, GRAPH_FORMAT_VERSION
from .sniff import sniff_format
from .layout import FIELDS, FLOAT_DTYPES, SegmentTable, dtype_from_name, new_graph
from .types import NODE_SLOTS

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph


@dataclass
class GraphFile:
    """What a graph file holds: the graph, the state_dict entries it does not hold, metadata."""

    graph: ParamGraph
    extra: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def save_graph(graph: ParamGraph, path: str | os.PathLike, *, extra: dict[str, Tensor] | None = None,
               metadata: dict[str, str] | None = None) -> Path:
    """Write ``graph`` to ``path`` atomically as a safetensors graph file; returns the path.

    ``extra`` holds state_dict entries that are not in the graph (stored verbatim, given back by
    :func:`read_graph_file` and written by ``paramgraph restore``). ``metadata`` is a dict of
    strings kept with the file (the CLI records the source checkpoint and architecture there).
    Raises :class:`~paramgraph.GraphFormatError` if the graph is inconsistent or has a field that
    cannot be stored (only tensors and JSON scalars can).
    """
    from safetensors.torch import save_file

    graph.validate()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    narrowed: list[str] = []
    for key in graph.keys():
        value = graph[key]
        if key in ("segments", "num_nodes"):
            continue
        if isinstance(value, Tensor):
            tensors[f"graph/{key}"] = storable(value)
            if value.dtype == torch.long and (value.numel() == 0 or (
                    int(value.min()) >= -(2**31) and int(value.max()) < 2**31)):
                narrowed.append(key)  # indices fit in int32: half the bytes on disk
                tensors[f"graph/{key}"] = tensors[f"graph/{key}"].to(torch.int32)
        elif isinstance(value, (bool, int, float, str)) or value is None:
            scalars[key] = value
        else:
            raise GraphFormatError(f"graph field '{key}' of type {type(value).__name__} cannot be "
                                   "saved (only tensors and JSON scalars can)")
    for key in FIELDS:
        if f"graph/{key}" not in tensors:
            raise GraphFormatError(f"graph field '{key}' is missing")
    for key, value in (extra or {}).items():
        if not isinstance(value, Tensor):
            raise GraphFormatError(f"extra entry '{key}' is a {type(value).__name__}, not a tensor")
        tensors[f"extra/{key}"] = storable(value)
    meta = {
        "format": GRAPH_FORMAT,
        "format_version": str(GRAPH_FORMAT_VERSION),
        "num_nodes": str(int(graph.num_nodes)),
        "segments": json.dumps(graph.segments.to_dict(), separators=(",", ":")),
        "scalars": json.dumps(scalars),
        "int64_as_int32": json.dumps(narrowed),
        "metadata": json.dumps(dict(metadata or {})),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def storable(t: Tensor) -> Tensor:
    # safetensors wants contiguous CPU tensors that share no memory with each other.
    return t.detach().to("cpu").contiguous().clone()


def load_graph(path: str | os.PathLike) -> ParamGraph:
    """Read a graph file written by :func:`save_graph`; returns the :class:`ParamGraph`.

    Raises :class:`CheckpointError` if the file is missing or unreadable and
    :class:`~paramgraph.GraphFormatError` (naming the file) if it is not a valid graph file.
    """
    return read_graph_file(path).graph


def read_graph_file(path: str | os.PathLike) -> GraphFile:
    """Read a graph file: the graph, its extra state_dict entries and its metadata.

    Raises :class:`CheckpointError` for a missing/unreadable file and
    :class:`~paramgraph.GraphFormatError` naming the file for anything that is not a valid graph
    file of a format version this library reads.
    """
    from safetensors import safe_open

    p = Path(path)
    kind = sniff_format(p)
    if kind != "graph":
        what = {"safetensors": "a safetensors checkpoint", "torch": "a torch.save file",
                "pt2": "a torch.export program", "pickle": "a pickle file"}.get(kind, "unknown")
        raise GraphFormatError(f"{p}: not a paramgraph graph file ({what}); convert it first with "
                               "'paramgraph convert'")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for broken files
        raise GraphFormatError(f"{p}: corrupt or truncated graph file ({one_line(err)})") from err
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise GraphFormatError(f"{p}: graph file has no valid format version") from None
    if version > GRAPH_FORMAT_VERSION:
        raise GraphFormatError(f"{p}: graph file format {version} is newer than this paramgraph "
                               f"reads (up to {GRAPH_FORMAT_VERSION}); upgrade paramgraph")
    try:
        segments = SegmentTable.from_dict(json.loads(meta["segments"]))
        num_nodes = int(meta["num_nodes"])
        scalars = json.loads(meta.get("scalars", "{}"))
        narrowed = set(json.loads(meta.get("int64_as_int32", "[]")))
        user_meta = json.loads(meta.get("metadata", "{}"))
        for seg in segments:
            dtype_from_name(seg.dtype)
            if seg.kind not in ("edge", "node") or not 0 <= seg.slot < len(NODE_SLOTS):
                raise GraphFormatError(f"segment '{seg.name}' is malformed")
    except (KeyError, TypeError, ValueError, AttributeError, GraphFormatError) as err:
        raise GraphFormatError(f"{p}: graph file has a malformed header ({one_line(err)})") \
            from err
    fields, extra = {}, {}
    for name, t in tensors.items():
        if name.startswith("graph/"):
            key = name[len("graph/"):]
            if key in narrowed and t.dtype == torch.int32:  # back to the field's dtype
                t = t.to(FIELDS[key][0] or torch.long) if key in FIELDS else t.long()
            fields[key] = t
        elif name.startswith("extra/"):
            extra[name[len("extra/"):]] = t
    for key, (dtype, _) in FIELDS.items():
        if key not in fields:
            raise GraphFormatError(f"{p}: graph file lacks field '{key}'")
        t = fields[key]
        if (dtype is None and t.dtype not in FLOAT_DTYPES) or (dtype is not None and t.dtype != dtype):
            raise GraphFormatError(f"{p}: graph field '{key}' has dtype {t.dtype}")
    graph = new_graph(**fields, **scalars, segments=segments, num_nodes=num_nodes)
    try:
        graph.validate()
    except GraphFormatError as err:
        raise GraphFormatError(f"{p}: {err}") from err
    return GraphFile(graph, extra, {str(k): str(v) for k, v in user_meta.items()})
