"""Making one zoo with many processes or machines: ``paramgraph zoo make ... --shard I/N``.

Shard ``I`` of ``N`` makes the work units (training runs; SIREN chunks for inr zoos) whose index is
``I`` modulo ``N``. Every unit draws everything from its own seed (:func:`paramgraph.tasks.zoo.run_seed`), so
the shards together write exactly the networks that one unsharded ``zoo make`` with the same seed
writes, byte for byte, and they never write the same file. They share the zoo directory (a shared
file system across machines): each writes its networks and rows, then a marker
``shards/shard-I-of-N.json``. The shard that finds all N markers present merges the zoo (metadata
table, CSV, splits, ``complete`` in the manifest: :func:`paramgraph.tasks.zoo.merge_zoo`);
``paramgraph zoo merge DIR`` does the same by hand and says which networks are still missing.

This module keeps the shards' bookkeeping; :mod:`paramgraph.tasks.zoo` makes and merges the zoo
with it (and this module imports nothing of the zoo's).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import ZooError
from .io import atomic_write_json, read_json


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with ``0 <= I < N``; raises :class:`ZooError` otherwise."""
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ZooError(f"--shard '{text}': expected I/N, e.g. 0/4 (shard I of N, from 0)") from None
    check_shard((i, n))
    return i, n


def check_shard(shard: tuple[int, int]) -> None:
    """Raise :class:`ZooError` unless ``shard == (I, N)`` with ``N >= 1`` and ``0 <= I < N``."""
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ZooError(f"--shard {i}/{n}: need N >= 1 and 0 <= I < N")


def select_units(units: list, shard: tuple[int, int] | None) -> list:
    """The units of ``shard`` (every unit when ``shard`` is None): index ``I`` modulo ``N``."""
    if shard is None:
        return units
    i, n = shard
    return [u for u in units if u.index % n == i]


def marker_path(root: Path, shard: tuple[int, int]) -> Path:
    return Path(root) / "shards" / f"shard-{shard[0]}-of-{shard[1]}.json"


def finish_shard(root: Path, shard: tuple[int, int], units: list, seconds: float) -> bool:
    """Record that ``shard`` is done (its marker); return whether every shard of the N is."""
    atomic_write_json(marker_path(root, shard), {
        "shard": shard[0], "of": shard[1], "units": len(units),
        "networks": sum(len(u.ids) for u in units), "seconds": round(seconds, 2),
        "host": os.uname().nodename, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return all(marker_path(root, (k, shard[1])).is_file() for k in range(shard[1]))


def shard_markers(root: Path) -> list[Path]:
    """The markers of the shards of the zoo in ``root`` that have finished, by name."""
    shards = Path(root) / "shards"
    return sorted(shards.glob("shard-*.json")) if shards.is_dir() else []


def shard_seconds(root: Path) -> float:
    """The seconds the finished shards of the zoo in ``root`` took, summed."""
    return round(sum(read_json(m, "shard marker").get("seconds", 0.0)
                     for m in shard_markers(root)), 2)
