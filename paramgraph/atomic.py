"""Atomic writes: every file paramgraph writes appears whole or not at all.

Data goes to a temporary file in the target's directory, which is renamed over the target only
when complete; on any failure (or interrupt) the temporary file is removed and the target is
untouched. The one home of this logic for the whole project (zoos, runs, graph files, caches).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


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
