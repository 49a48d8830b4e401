"""Recognising files by their content, not their suffix: nothing is unpickled or run."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from .errors import CheckpointError, one_line
from .formats import GRAPH_FORMAT


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
            raise CheckpointError(p, f"corrupt or truncated zip archive ({one_line(err)})") \
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
