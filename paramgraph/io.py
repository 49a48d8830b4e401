"""Files: parameter graphs on disk, checkpoints in, state_dicts out. Nothing here runs code from a file.

**Graph files** (:func:`save_graph`, :func:`load_graph`, :func:`read_graph_file`) are safetensors
files (default suffix ``.pgraph``): every tensor field of the :class:`~paramgraph.ParamGraph` is a
tensor named ``graph/<field>`` (int64 index fields stored as int32 when they fit, widened again on
load), the segment table, the node count and a format version are JSON in
the safetensors metadata, and state_dict entries the graph does not hold (``num_batches_tracked``
counters, tensors the forward never reads) ride along verbatim as ``extra/<key>`` tensors so that a
restored checkpoint is complete. Loading parses a JSON header and raw little-endian tensor bytes; no
pickle is involved, so a graph file written on one machine reads on any other.

**Checkpoints** (:func:`load_checkpoint`) are recognised by their content, not their suffix:

* safetensors: read with ``safetensors``;
* ``torch.save`` files: read with ``torch.load(..., weights_only=True)``, which only rebuilds
  tensors and plain containers. Anything else in the pickle (a whole ``nn.Module``, or a crafted
  ``__reduce__``) makes it refuse; :class:`CheckpointError` says so, and only ``trust_pickle=True``
  unpickles such a file with code execution;
* ``torch.export`` programs (``.pt2``): ``torch.export.load`` is **not** safe for untrusted files
  (checked in torch 2.13: it unpickles weights and constants marked ``use_pickle`` and sample inputs
  that fail a weights-only load with ``weights_only=False``, ``pickle.loads`` opaque objects, loads
  AOTInductor shared libraries, and passes shape expressions from the file to ``sympy.sympify``,
  which evaluates them). :func:`audit_pt2` therefore first checks the archive, without running
  anything from it, and only a program made of plain data (JSON graph, raw weight bytes,
  weights-only sample inputs, arithmetic shape expressions) is handed to ``torch.export.load``;
  anything else needs ``trust_pickle=True``. The bytes are read once and the audited bytes are the
  ones loaded.

Every write is atomic (:func:`atomic_path`): data goes to a temporary file in the target's
directory, which is renamed over the target only when complete; on any failure (or interrupt) the
temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import pickle
import re
import struct
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .errors import GraphFormatError, ParamGraphError
from .graph import ParamGraph, SegmentTable, dtype_from_name
from .types import NODE_SLOTS

GRAPH_FORMAT = "paramgraph-graph"
GRAPH_FORMAT_VERSION = 1
GRAPH_SUFFIX = ".pgraph"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".pt2", ".bin", ".ckpt")

# Every graph field, with the dtype a valid file stores it in.
GRAPH_FIELDS: dict[str, torch.dtype | None] = {
    "edge_index": torch.long, "edge_value": None, "edge_size": torch.int32,
    "edge_type": torch.int8, "node_value": None, "node_mask": torch.bool,
    "node_type": torch.int8, "node_layer": torch.long, "node_act": torch.int8,
    "node_norm": torch.int8, "node_scale": torch.bool, "node_sign": torch.bool,
    "perm_group": torch.long, "perm_pos": torch.long, "node_head": torch.long,
    "head_role": torch.int8,
}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CheckpointError(ParamGraphError):
    """A checkpoint file that is missing, unreadable, corrupt, unsafe to load, or does not fit.

    The message starts with the file's path and says what is wrong.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# -- atomic writes ---------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    Write the whole output to the yielded path. When the ``with`` block ends normally the file
    gets ordinary permissions (as ``open`` would give it) and replaces ``path`` in one
    ``os.replace``; when it raises (including ``KeyboardInterrupt``) the temporary file is removed
    and ``path`` is left as it was. Missing parent directories are created (and removed again on
    failure).
    """
    target = Path(path)
    created = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        for d in created:  # deepest first; only the directories made here, and only if empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs):
    """``open(path, mode)`` that only appears at ``path`` once the ``with`` block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- graph files -----------------------------------------------------------------------------------


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
            tensors[f"graph/{key}"] = _storable(value)
            if value.dtype == torch.long and (value.numel() == 0 or (
                    int(value.min()) >= -(2**31) and int(value.max()) < 2**31)):
                narrowed.append(key)  # indices fit in int32: half the bytes on disk
                tensors[f"graph/{key}"] = tensors[f"graph/{key}"].to(torch.int32)
        elif isinstance(value, (bool, int, float, str)) or value is None:
            scalars[key] = value
        else:
            raise GraphFormatError(f"graph field '{key}' of type {type(value).__name__} cannot be "
                                   "saved (only tensors and JSON scalars can)")
    for key in GRAPH_FIELDS:
        if f"graph/{key}" not in tensors:
            raise GraphFormatError(f"graph field '{key}' is missing")
    for key, value in (extra or {}).items():
        if not isinstance(value, Tensor):
            raise GraphFormatError(f"extra entry '{key}' is a {type(value).__name__}, not a tensor")
        tensors[f"extra/{key}"] = _storable(value)
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


def _storable(t: Tensor) -> Tensor:
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
        raise GraphFormatError(f"{p}: corrupt or truncated graph file ({_one_line(err)})") from err
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
        raise GraphFormatError(f"{p}: graph file has a malformed header ({_one_line(err)})") \
            from err
    fields, extra = {}, {}
    for name, t in tensors.items():
        if name.startswith("graph/"):
            key = name[len("graph/"):]
            fields[key] = t.long() if key in narrowed and t.dtype == torch.int32 else t
        elif name.startswith("extra/"):
            extra[name[len("extra/"):]] = t
    for key, dtype in GRAPH_FIELDS.items():
        if key not in fields:
            raise GraphFormatError(f"{p}: graph file lacks field '{key}'")
        t = fields[key]
        if (dtype is None and t.dtype not in _FLOATS) or (dtype is not None and t.dtype != dtype):
            raise GraphFormatError(f"{p}: graph field '{key}' has dtype {t.dtype}")
    graph = ParamGraph(**fields, **scalars, segments=segments, num_nodes=num_nodes)
    try:
        graph.validate()
    except GraphFormatError as err:
        raise GraphFormatError(f"{p}: {err}") from err
    return GraphFile(graph, extra, {str(k): str(v) for k, v in user_meta.items()})


# -- recognising files -----------------------------------------------------------------------------


def sniff_format(path: str | os.PathLike) -> str:
    """What a file is, from its first bytes and (for zips) its member names; nothing is unpickled.

    Returns ``"graph"`` (a paramgraph graph file), ``"safetensors"``, ``"torch"`` (a
    ``torch.save`` zip), ``"pt2"`` (a ``torch.export`` archive), ``"pickle"`` (a bare or legacy
    ``torch.save`` pickle), or ``"unknown"``. Raises :class:`CheckpointError` if the file is missing,
    unreadable or a directory, and for a zip or safetensors header that is cut short.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise CheckpointError(p, "is a directory")
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) == 8 and not head.startswith(b"PK"):
                (n,) = struct.unpack("<Q", head)
                first = f.read(1)
                if first == b"{" and n >= 2:
                    if n > size - 8:
                        raise CheckpointError(p, "truncated safetensors file (its header runs "
                                              "past the end of the file)")
                    header = first + f.read(n - 1)
                    return _safetensors_kind(p, header)
    except FileNotFoundError:
        raise CheckpointError(p, "no such file") from None
    except PermissionError:
        raise CheckpointError(p, "permission denied") from None
    except IsADirectoryError:
        raise CheckpointError(p, "is a directory") from None
    if size == 0:
        raise CheckpointError(p, "empty file")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
                for n in names:
                    if n == "archive_format" or n.endswith("/archive_format"):
                        if z.read(n).strip() == b"pt2":
                            return "pt2"
                    if n.rsplit("/", 1)[-1] == "serialized_exported_program.json":
                        return "pt2"  # the layout of torch.export.save before torch 2.8
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise CheckpointError(p, f"corrupt or truncated zip archive ({_one_line(err)})") \
                from None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "unknown"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _safetensors_kind(p: Path, header: bytes) -> str:
    try:
        parsed = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(p, "corrupt safetensors file (its header is not valid JSON)") \
            from None
    meta = parsed.get("__metadata__") if isinstance(parsed, dict) else None
    if isinstance(meta, dict) and meta.get("format") == GRAPH_FORMAT:
        return "graph"
    return "safetensors"


def is_graph_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a paramgraph graph file (judged from its header; nothing is loaded)."""
    try:
        return sniff_format(path) == "graph"
    except CheckpointError:
        return False


# -- checkpoints -----------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False):
    """Load a checkpoint file without running code from it (unless ``trust_pickle``).

    Returns a state_dict (``dict`` of name -> tensor) for safetensors files and ``torch.save``d
    state_dicts (also when nested under a ``"state_dict"``, ``"model_state_dict"`` or ``"model"``
    key of a training checkpoint), an :class:`~torch.export.ExportedProgram` for ``.pt2`` programs,
    and, only with ``trust_pickle=True``, whatever a full unpickle gives (a pickled
    ``nn.Module``, say).

    Raises :class:`CheckpointError` naming the file for a missing, empty, truncated or corrupt
    file, an unknown format, a graph file, content that is not a state_dict, and for a pickle or
    ``.pt2`` archive that holds more than plain data (refused unless ``trust_pickle``; the message
    says what it holds and why it was refused).
    """
    p = Path(path)
    kind = sniff_format(p)
    if kind == "graph":
        raise CheckpointError(p, "is a paramgraph graph file, not a checkpoint")
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as err:
            raise CheckpointError(p, f"corrupt or truncated safetensors file "
                                  f"({_one_line(err)})") from None
    if kind in ("torch", "pickle"):
        return _load_torch(p, trust_pickle)
    if kind == "pt2":
        return _load_pt2(p, trust_pickle)
    raise CheckpointError(p, "unknown format: not a safetensors file, a torch.save file or a "
                          "torch.export program")


def _load_torch(p: Path, trust_pickle: bool):
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "Weights only load failed" not in message:
            raise CheckpointError(p, f"corrupt pickle ({_one_line(err)})") from None
        if not trust_pickle:
            found = re.search(r"GLOBAL ([\w.]+)", message)
            if found:
                raise CheckpointError(p, f"refusing to unpickle: the file holds Python objects "
                                      f"({found.group(1)}), not only tensors, and unpickling "
                                      "them can run arbitrary code; pass --trust-pickle "
                                      "(trust_pickle=True) only if you trust where the file "
                                      "came from") from None
            detail = message[message.find("WeightsUnpickler error:"):].split("\n\n")
            detail = _one_line(" ".join(detail[:2])).removeprefix("WeightsUnpickler error:")
            raise CheckpointError(p, f"corrupt, or a pickle that only a full unpickle could read "
                                  f"(weights-only unpickler: {detail.strip()}); a full unpickle "
                                  "(--trust-pickle) can run code from the file") from None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise CheckpointError(p, f"unpickling failed ({_one_line(err2)})") from None
    except Exception as err:  # zip/stream errors, bad magic numbers, cut-off data
        raise CheckpointError(p, f"corrupt or truncated torch.save file ({_one_line(err)})") \
            from None
    if isinstance(obj, nn.Module):
        return obj
    state = _find_state_dict(obj)
    if state is None:
        raise CheckpointError(p, f"holds a {type(obj).__name__}, not a state_dict (a dict of "
                              "tensors) or a module")
    return state


def _find_state_dict(obj) -> dict[str, Tensor] | None:
    def is_state(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, Tensor)
                                                 for k, v in d.items())

    if is_state(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if is_state(obj.get(key)):
                return dict(obj[key])
    return None


def _load_pt2(p: Path, trust_pickle: bool):
    try:
        data = p.read_bytes()
    except OSError as err:
        raise CheckpointError(p, f"cannot read ({err.strerror})") from None
    if not trust_pickle:
        audit_pt2(data, p)
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    try:
        with warnings.catch_warnings(), _quiet_logging(quiet):
            warnings.simplefilter("ignore")
            return torch.export.load(io.BytesIO(data))
    except Exception as err:
        raise CheckpointError(p, f"corrupt or unreadable torch.export program "
                              f"({_one_line(err)})") from None


@contextlib.contextmanager
def _quiet_logging(quiet: bool):
    # torch.export.load logs a multi-line traceback at WARNING level before raising.
    if not quiet:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


_PT2_PLAIN = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|"
                        r"\.data/serialization_id|models/[^/]+\.json|"
                        r"data/weights/[^/]+_weights_config\.json|data/weights/weight_\d+|"
                        r"data/constants/[^/]+_constants_config\.json|data/constants/tensor_\d+|"
                        r"data/sample_inputs/[^/]+\.pt|extra/.+)")
_SYMPY_NAMES = frozenset({
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo", "Symbol", "Integer", "Rational",
    "Float", "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
    "zero", "nonzero", "even", "odd", "rational", "commutative",
})
# Tokens of a plain shape expression, e.g. "Symbol('s77', positive=True, integer=True)" or
# "2*s0 + FloorDiv(s1, 3)": names, numbers, quoted symbol names, operators. No attribute access,
# no underscores, no other strings.
_EXPR_TOKEN = re.compile(r"\s*(?:([A-Za-z][A-Za-z0-9]*)|(\d+(?:\.\d+)?(?:e[+-]?\d+)?)|"
                         r"('[a-z]+\d*'|\"[a-z]+\d*\")|(\*\*|//|[-+*/%(),<>=!&|~]))")


def audit_pt2(data: bytes, path: str | os.PathLike = "<pt2>") -> None:
    """Check that a ``.pt2`` archive is plain data that ``torch.export.load`` reads without code.

    Nothing from the archive is executed: the zip directory and JSON members are parsed, and the
    sample inputs are read with ``torch.load(weights_only=True)``. Refused: members outside the
    plain layout (AOTInductor libraries, ExecuTorch programs, legacy pickled state), weights or
    constants stored as pickles, script/opaque objects, sample inputs that are not weights-only,
    extension operators, and shape expressions that are not plain arithmetic on size symbols
    (``torch.export.load`` evaluates them with ``sympy.sympify``). Returns None; raises
    :class:`CheckpointError` naming the file and the first problem found.
    """
    p = Path(path)
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
    except (zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(p, f"corrupt or truncated zip archive ({_one_line(err)})") from None

    def refuse(what: str):
        raise CheckpointError(p, f"refusing to load this torch.export program: {what}, which "
                              "torch.export.load would unpickle or execute; pass --trust-pickle "
                              "(trust_pickle=True) only if you trust where the file came from")

    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        refuse("its members are not under one archive folder (an unknown or legacy layout)")
    root = roots.pop() + "/"
    for name in names:
        rel = name[len(root):]
        if rel and not rel.endswith("/") and not _PT2_PLAIN.fullmatch(rel):
            refuse(f"it contains '{rel}'")
    try:
        for name in names:
            rel = name[len(root):]
            if rel.endswith(("_weights_config.json", "_constants_config.json")):
                config = json.loads(z.read(name)).get("config", {})
                for key, entry in config.items():
                    if entry.get("use_pickle"):
                        refuse(f"entry '{key}' is stored as a pickle")
                    if rel.endswith("_constants_config.json") and \
                            not str(entry.get("path_name", "")).startswith("tensor_"):
                        refuse(f"constant '{key}' is a script or opaque object")
            elif rel.startswith("models/"):
                _audit_program_json(json.loads(z.read(name)), refuse)
            elif rel.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(z.read(name)), map_location="cpu", weights_only=True)
                except Exception:
                    refuse(f"its sample inputs '{rel}' are not plain tensors")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, AttributeError, OSError) as err:
        raise CheckpointError(p, f"corrupt torch.export archive ({_one_line(err)})") from None


def _audit_program_json(obj, refuse) -> None:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "expr_str" and isinstance(v, str):
                    _check_expression(v, refuse)
                elif k == "target" and isinstance(v, str) and v.startswith("#"):
                    refuse(f"it uses extension operator '{v}'")
                else:
                    stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)


def _check_expression(expr: str, refuse) -> None:
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                return
            refuse(f"shape expression {expr[:60]!r} is not plain arithmetic")
        name = m.group(1)
        if name and not (re.fullmatch(r"[a-z]+\d+", name) or name in _SYMPY_NAMES):
            refuse(f"shape expression {expr[:60]!r} uses the name '{name}'")
        pos = m.end()


def check_finite(tensors: dict[str, Tensor], source: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` if any floating tensor holds NaN or infinity.

    The message names each offending tensor with its counts (at most 5 named, then how many
    more) and says that ``--allow-nonfinite`` converts anyway.
    """
    bad = []
    for name, t in tensors.items():
        if not isinstance(t, Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(t).sum())
        inf = int((~finite).sum()) - nan
        parts = [f"{nan} NaN"] * bool(nan) + [f"{inf} inf"] * bool(inf)
        bad.append(f"{name} ({', '.join(parts)})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(source, f"non-finite weights in {', '.join(bad[:5])}{more}; pass "
                              "--allow-nonfinite to convert anyway")


# -- architectures ---------------------------------------------------------------------------------


def build_architecture(spec: str, kwargs: dict | None = None) -> nn.Module:
    """Build a network from ``"package.module:callable"`` (or ``"path/to/file.py:callable"``).

    The callable (a function or an ``nn.Module`` class; dotted names reach attributes) is called
    with ``kwargs`` and must return an ``nn.Module``. The current directory is importable, as
    with ``python -m``. This imports and runs the named code: it is the user's own choice, unlike
    anything inside a checkpoint. Raises :class:`~paramgraph.ParamGraphError` with one line
    saying what failed (bad spec, import error, missing attribute, failing call, wrong type).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ParamGraphError(f"--arch '{spec}' must look like 'package.module:callable' or "
                              "'file.py:callable'")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            file = Path(module_name)
            if not file.is_file():
                raise ParamGraphError(f"--arch '{spec}': no such file '{module_name}'")
            mod_spec = importlib.util.spec_from_file_location(f"_pg_arch_{file.stem}", file)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            cwd = os.getcwd()
            if cwd not in sys.path and "" not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(module_name)
    except ParamGraphError:
        raise
    except Exception as err:
        raise ParamGraphError(f"--arch '{spec}': cannot import '{module_name}' "
                              f"({type(err).__name__}: {_one_line(err)})") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ParamGraphError(f"--arch '{spec}': '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ParamGraphError(f"--arch '{spec}': '{attr}' is not callable")
    try:
        net = obj(**(kwargs or {}))
    except Exception as err:
        raise ParamGraphError(f"--arch '{spec}': calling {attr}(**{kwargs or {}}) failed "
                              f"({type(err).__name__}: {_one_line(err)})") from err
    if not isinstance(net, nn.Module):
        raise ParamGraphError(f"--arch '{spec}': {attr}() returned a {type(net).__name__}, not "
                              "an nn.Module")
    return net


def fit_state_dict(module: nn.Module, state: dict[str, Tensor], source: str | os.PathLike,
                   arch: str = "the architecture") -> nn.Module:
    """Put the checkpoint's tensors into ``module`` as they are (same objects, dtypes kept).

    Returns ``module``. Raises :class:`CheckpointError` naming the file and listing, by name,
    the keys the architecture needs but the checkpoint lacks (``num_batches_tracked`` counters
    excepted), the keys the architecture does not have, and tensors of the wrong shape.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} (checkpoint {list(state[k].shape)}, architecture {list(own[k].shape)})"
             for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", wrong)):
            if names:
                more = f" and {len(names) - 8} more" if len(names) > 8 else ""
                parts.append(f"{label}: {', '.join(names[:8])}{more}")
        raise CheckpointError(source, f"does not fit {arch}: {'; '.join(parts)}")
    module.load_state_dict(state, strict=False, assign=True)
    return module


# -- conversion of a checkpoint file ----------------------------------------------------------------


@dataclass
class Converted:
    """A converted checkpoint: its graph, the state_dict entries not in it, and provenance."""

    graph: ParamGraph
    extra: dict[str, Tensor]
    metadata: dict[str, str]


def convert_checkpoint(path: str | os.PathLike, *, arch: str | None = None,
                       arch_kwargs: dict | None = None, input_shape: tuple[int, ...] | None = None,
                       trust_pickle: bool = False, allow_nonfinite: bool = False) -> Converted:
    """Convert one checkpoint file into a parameter graph.

    ``.pt2`` programs carry their architecture; a state_dict (safetensors or ``torch.save``)
    needs ``arch`` (see :func:`build_architecture`) and ``input_shape`` to trace it; a pickled
    module (only with ``trust_pickle``) needs ``input_shape``. Returns a :class:`Converted` whose
    ``extra`` holds the state_dict entries the graph does not hold, so that graph + extra give back
    the whole state_dict.

    Raises :class:`CheckpointError` for file problems, a state_dict that does not fit ``arch`` and
    non-finite weights (unless ``allow_nonfinite``), :class:`~paramgraph.ParamGraphError` for a
    bad ``arch``, and :class:`~paramgraph.UnsupportedModuleError` (prefixed with the file) for a
    network the converter cannot represent.
    """
    from .export import from_exported, state_dict_order
    from .trace import from_module

    p = Path(path)
    obj = load_checkpoint(p, trust_pickle=trust_pickle)
    meta = {"source": p.name}
    if isinstance(obj, torch.export.ExportedProgram):
        state = {k: obj.state_dict[k] for k in state_dict_order(obj)}
        meta["keys"] = json.dumps(list(state))
        meta["source_format"] = "torch.export"
        if not allow_nonfinite:
            check_finite(state, p)
        graph = _in_file(p, from_exported, obj)
    else:
        if isinstance(obj, nn.Module):
            module = obj
            meta["source_format"] = "pickled module"
            meta["keys"] = json.dumps(list(module.state_dict()))
        else:
            if arch is None:
                raise CheckpointError(p, "holds a state_dict without its architecture; name a "
                                      "callable that builds it with --arch MODULE:CALLABLE")
            meta["keys"] = json.dumps(list(obj))
            module = _in_file(p, build_architecture, arch, arch_kwargs)
            fit_state_dict(module, obj, p, f"--arch {arch}")
            meta.update(source_format="state_dict", arch=arch,
                        arch_kwargs=json.dumps(arch_kwargs or {}))
        # The checkpoint's own entries (a counter it lacks is not invented from the module).
        state = obj if isinstance(obj, dict) else module.state_dict()
        if not allow_nonfinite:
            check_finite(state, p)
        if input_shape is None:
            raise CheckpointError(p, "tracing the architecture needs an example input shape; "
                                  "give it with --input-shape, e.g. --input-shape 2,1,8,8")
        meta["input_shape"] = ",".join(map(str, input_shape))
        dtype = next((t.dtype for t in module.state_dict().values() if t.is_floating_point()),
                     torch.float32)
        example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        graph = _in_file(p, from_module, module, example)
    placed = set(graph.segments.names())
    extra = {k: v.detach() for k, v in state.items() if k not in placed}
    return Converted(graph, extra, meta)


def _in_file(p: Path, fn, *args):
    try:
        return fn(*args)
    except ParamGraphError as err:
        if str(err).startswith(str(p)):
            raise
        raise _prefixed(err, p) from err


def _prefixed(err: ParamGraphError, p: Path) -> ParamGraphError:
    """A copy of ``err`` (same class where possible) whose message starts with the file."""
    try:
        new = type(err).__new__(type(err))
        Exception.__init__(new, f"{p}: {err}")
        new.__dict__.update(err.__dict__)
        return new
    except Exception:
        return ParamGraphError(f"{p}: {err}")


# -- state_dicts out -------------------------------------------------------------------------------


def save_state_dict(state: dict[str, Tensor], path: str | os.PathLike) -> Path:
    """Write a state_dict atomically: safetensors for ``.safetensors``, ``torch.save`` for
    ``.pt``/``.pth``/``.bin``. Returns the path; raises :class:`~paramgraph.ParamGraphError` for
    another suffix."""
    from safetensors.torch import save_file

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        tensors = {k: _storable(v) for k, v in state.items()}
        with atomic_path(p) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    elif suffix in (".pt", ".pth", ".bin"):
        with atomic_path(p) as tmp:
            torch.save({k: v.detach().clone() for k, v in state.items()}, tmp)
    else:
        raise ParamGraphError(f"{p}: unknown output format '{suffix}' (use .safetensors, .pt or "
                              ".pth)")
    return p


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "") if text else type(err).__name__


__all__ = [
    "CHECKPOINT_SUFFIXES", "CheckpointError", "Converted", "GRAPH_FORMAT", "GRAPH_FORMAT_VERSION",
    "GRAPH_SUFFIX", "GraphFile", "atomic_path", "atomic_write", "audit_pt2", "build_architecture",
    "check_finite", "convert_checkpoint", "fit_state_dict", "is_graph_file", "load_checkpoint",
    "load_graph", "read_graph_file", "save_graph", "save_state_dict", "sniff_format",
]
