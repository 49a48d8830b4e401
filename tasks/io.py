"""Small file helpers: atomic writes of JSON, text and safetensors files, and hashing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from paramgraph.atomic import atomic_path, atomic_write

from .errors import TaskError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :mod:`paramgraph.atomic`)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file"):
    """The parsed JSON of ``path``. Raises :class:`TaskError` naming the file if it is missing or
    not valid JSON."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise TaskError(f"{what} '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TaskError(f"{what} '{path}' is corrupt (not valid JSON: {err})") from None


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> None:
    """Save ``tensors`` (made contiguous) to a safetensors file atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically (training state: model, optimizer, RNG)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_safetensors(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file. Raises :class:`TaskError` naming the file if it is
    missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{what} '{path}' does not exist")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise TaskError(f"{what} '{path}' is not a readable safetensors file: {err}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
