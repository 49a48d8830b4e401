"""Sharded on-disk storage of many parameter graphs, read lazily (zoos larger than memory).

A store is a directory::

    DIR/index.json                 format version, shard list, graphs per shard, sha256 per shard
    DIR/shard-00000.safetensors    the graphs of shard 0, concatenated field by field

Inside a shard every tensor field of the graphs is concatenated (``edge_index`` along its edge
dimension, the rest along dimension 0, indices kept graph-local) and ``ptr.<field>`` records where
each graph's rows start. Segment tables, which repeat across a zoo of one architecture, are stored
once per distinct table in the shard's metadata. Reading graph ``i`` memory-maps its shard and
slices exactly its rows, so resident memory stays flat however large the store grows, and no
pickle is involved anywhere.

A shard whose bytes do not match the checksum written with it raises :class:`CorruptShardError`
naming the file; :meth:`GraphStore.verify` lists every bad shard so a data set can rebuild them.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from .errors import GraphFormatError
from .graph import ParamGraph
from .layout import SegmentTable
from .atomic import atomic_path, atomic_write

FORMAT = "paramgraph-store/1"
INDEX = "index.json"
_EDGE_DIM_ONE = ("edge_index",)


class CorruptShardError(GraphFormatError):
    """A shard file that is missing, truncated or altered since it was written."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        super().__init__(f"{path}: corrupt graph-store shard ({reason}); rebuild it")


def write_store(graphs: Iterable[ParamGraph], directory: str | os.PathLike,
                shard_size: int = 1024) -> Path:
    """Write ``graphs`` into a new store at ``directory`` in shards of ``shard_size`` graphs.

    Returns the directory. Each shard and the index are written atomically; the index last, so an
    interrupted write leaves no index and is not mistaken for a store.
    Raises :class:`GraphFormatError` if the graphs do not all have the same fields.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards, pending = [], []
    for graph in graphs:
        pending.append(graph)
        if len(pending) == shard_size:
            shards.append(_write_shard(directory, len(shards), pending))
            pending = []
    if pending or not shards:
        shards.append(_write_shard(directory, len(shards), pending))
    _write_index(directory, shards)
    return directory


def rewrite_shard(directory: str | os.PathLike, shard: int, graphs: Sequence[ParamGraph]) -> None:
    """Replace shard ``shard`` of an existing store (e.g. after :class:`CorruptShardError`)."""
    directory = Path(directory)
    index = _read_index(directory)
    if not 0 <= shard < len(index["shards"]):
        raise GraphFormatError(f"{directory}: the store has no shard {shard}")
    if len(graphs) != index["shards"][shard]["count"]:
        raise GraphFormatError(f"{directory}: shard {shard} holds {index['shards'][shard]['count']} "
                               f"graphs, {len(graphs)} were given")
    index["shards"][shard] = _write_shard(directory, shard, list(graphs))
    _write_index(directory, index["shards"])


class GraphStore(Sequence):
    """Read-only, lazily loaded sequence of the graphs in a store directory.

    ``store[i]`` returns a :class:`ParamGraph`. A shard's checksum is checked the first time it is
    read (``verify_on_read``). Safe to use from DataLoader worker processes: file handles are
    opened per process.
    """

    def __init__(self, directory: str | os.PathLike, verify_on_read: bool = True,
                 max_open_shards: int = 2):
        self.directory = Path(directory)
        self.index = _read_index(self.directory)
        self.counts = [s["count"] for s in self.index["shards"]]
        self.starts = [0]
        for c in self.counts:
            self.starts.append(self.starts[-1] + c)
        self.verify_on_read = verify_on_read
        # Shards stay mapped while in use; unmapping the least recent keeps resident memory
        # bounded by max_open_shards shards however many shards a pass reads.
        self.max_open_shards = max(1, max_open_shards)
        self._open: OrderedDict[int, tuple[int, dict]] = OrderedDict()
        self._verified: tuple[int, set[int]] = (os.getpid(), set())  # checked once per process

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"graph {i} is out of range for a store of {len(self)}")
        shard = _bisect(self.starts, i)
        return self._read(shard, i - self.starts[shard])

    def edge_counts(self) -> list[int]:
        """The number of edges of every graph, in order, read from the shards' row pointers
        only (no graph is materialised; shards are not checksummed here)."""
        counts: list[int] = []
        for info in self.index["shards"]:
            path = self.directory / info["file"]
            try:
                tensors, _ = _map_safetensors(path)
                ptr = tensors["ptr.edge_index"] if info["count"] else torch.zeros(1, dtype=torch.long)
            except Exception as err:
                raise CorruptShardError(path, f"unreadable ({err})") from err
            counts += (ptr[1:] - ptr[:-1]).tolist()
        if len(counts) != len(self):
            raise GraphFormatError(f"{self.directory}: shards hold {len(counts)} graphs, the index "
                                   f"says {len(self)}")
        return counts

    def verify(self) -> list[Path]:
        """Paths of the shards whose contents do not match their checksum (empty if all good)."""
        bad = []
        for k, info in enumerate(self.index["shards"]):
            try:
                self._check(k, info)
            except CorruptShardError as err:
                bad.append(err.path)
        return bad

    # -- internals -------------------------------------------------------------------------------

    def _check(self, shard: int, info: dict) -> None:
        path = self.directory / info["file"]
        if not path.is_file():
            raise CorruptShardError(path, "file is missing")
        if path.stat().st_size != info["bytes"]:
            raise CorruptShardError(path, f"{path.stat().st_size} bytes, {info['bytes']} expected")
        if _sha256(path) != info["sha256"]:
            raise CorruptShardError(path, "checksum mismatch")

    def _handle(self, shard: int) -> dict:
        pid = os.getpid()
        cached = self._open.get(shard)
        if cached is not None and cached[0] == pid:
            self._open.move_to_end(shard)
            return cached[1]
        info = self.index["shards"][shard]
        if self._verified[0] != pid:
            self._verified = (pid, set())
        if self.verify_on_read and shard not in self._verified[1]:
            # once per process: a shard unmapped by the LRU and mapped again is not re-hashed
            self._check(shard, info)
            self._verified[1].add(shard)
        path = self.directory / info["file"]
        try:
            tensors, metadata = _map_safetensors(path)
            meta = json.loads(metadata["paramgraph"])
            meta["tensors"] = tensors
            meta["ptrs"] = {key: tensors[f"ptr.{key}"].tolist() for key in meta["fields"]}
        except Exception as err:  # a bad header, a short file, missing fields
            raise CorruptShardError(path, f"unreadable ({err})") from err
        self._open[shard] = (pid, meta)
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return meta

    def _read(self, shard: int, j: int) -> ParamGraph:
        meta = self._handle(shard)
        fields = {}
        for key in meta["fields"]:
            ptr = meta["ptrs"][key]
            t = meta["tensors"][key]
            a, b = ptr[j], ptr[j + 1]
            fields[key] = t[:, a:b] if key in _EDGE_DIM_ONE else t[a:b]
        extra = meta["graphs"][j]
        table = meta.setdefault("parsed_tables", {}).get(extra["table"])
        if table is None:
            table = SegmentTable.from_dict(meta["tables"][extra["table"]])
            meta["parsed_tables"][extra["table"]] = table
        return ParamGraph(segments=table, num_nodes=extra["num_nodes"], **fields,
                          **extra.get("scalars", {}))


_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _map_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Memory-map a safetensors file: tensors are copy-on-write views of the page cache, so
    reading one graph touches only its own bytes (and a process never holds a whole shard)."""
    raw = np.memmap(path, dtype=np.uint8, mode="c")
    (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
    header = json.loads(raw[8 : 8 + header_len].tobytes())
    metadata = header.pop("__metadata__", {})
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        if base + end > raw.size:
            raise ValueError(f"tensor '{name}' runs past the end of the file")
        if info["dtype"] == "BF16":  # numpy has no bfloat16: map the bits, then reinterpret
            array = raw[base + start : base + end].view(np.int16).reshape(info["shape"])
            tensors[name] = torch.from_numpy(array).view(torch.bfloat16)
        else:
            array = raw[base + start : base + end].view(_NP_DTYPES[info["dtype"]])
            tensors[name] = torch.from_numpy(array.reshape(info["shape"]))
    return tensors, metadata


def _write_shard(directory: Path, shard: int, graphs: list[ParamGraph]) -> dict:
    fields = sorted(k for k, v in graphs[0].items() if isinstance(v, Tensor)) if graphs else []
    tensors: dict[str, Tensor] = {}
    tables: list[dict] = []
    table_ids: dict[str, int] = {}
    per_graph = []
    for g in graphs:
        keys = sorted(k for k, v in g.items() if isinstance(v, Tensor))
        if keys != fields:
            raise GraphFormatError(f"graphs in one store must have the same fields: {keys} vs {fields}")
        table = json.dumps(g.segments.to_dict(), sort_keys=True)
        tid = table_ids.setdefault(table, len(tables))
        if tid == len(tables):
            tables.append(g.segments.to_dict())
        scalars = {k: v for k, v in g.items() if isinstance(v, (int, float, str, bool))
                   and k not in ("num_nodes",)}
        per_graph.append({"table": tid, "num_nodes": g.num_nodes, "scalars": scalars})
    for key in fields:
        parts = [g[key] for g in graphs]
        dim = 1 if key in _EDGE_DIM_ONE else 0
        sizes = torch.tensor([0] + [p.shape[dim] for p in parts], dtype=torch.long)
        tensors[f"ptr.{key}"] = torch.cumsum(sizes, 0)
        tensors[key] = torch.cat(parts, dim=dim).contiguous()
    meta = {"fields": fields, "tables": tables, "graphs": per_graph}
    name = f"shard-{shard:05d}.safetensors"
    path = directory / name
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"paramgraph": json.dumps(meta), "format": FORMAT})
    return {"file": name, "count": len(graphs), "bytes": path.stat().st_size,
            "sha256": _sha256(path)}


def _write_index(directory: Path, shards: list[dict]) -> None:
    index = {"format": FORMAT, "shards": shards, "graphs": sum(s["count"] for s in shards)}
    with atomic_write(directory / INDEX, "w") as f:
        json.dump(index, f, indent=1)


def _read_index(directory: Path) -> dict:
    path = directory / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise GraphFormatError(f"{directory}: not a graph store (no {INDEX})") from None
    except json.JSONDecodeError as err:
        raise GraphFormatError(f"{path}: corrupt store index ({err})") from None
    if index.get("format") != FORMAT:
        raise GraphFormatError(f"{path}: unknown store format {index.get('format')!r}")
    return index


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bisect(starts: list[int], i: int) -> int:
    return bisect.bisect_right(starts, i) - 1
