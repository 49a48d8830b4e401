"""A copy of a made zoo whose every network is moved by a random function-preserving element of
its symmetry group: the same functions, accuracies, runs and splits, other weights
(``scripts/move_zoo.py``, and the demo's last column).

Each network is converted to its parameter graph, moved by
:func:`paramgraph.random_symmetry` (a uniform permutation of every permutable neuron set, every
scalable neuron's scale log-uniform in ``[1/R, R]``, fair sign flips of every sign-symmetric
neuron; seeded by ``seed`` and the network's id), converted back to a state_dict and written
where the source zoo has it, with its metadata row (new SHA-256). Every moved network is checked
to compute what its source computes (logits on :data:`CHECK_INPUTS` held-out digits within
:data:`CHECK_TOLERANCE` of their scale); a mismatch raises and leaves nothing behind.

Why: a zoo made by one training recipe holds networks near one point of their orbits (half the
hidden ReLU neurons of the cnn zoo sit within a factor 1.21 of the balanced section), so a
metanet that reads raw weights can take where a network sits for a property of its function.
Networks gathered from many sources (other initialisations and parametrisations, rescaled or
merged checkpoints) do not sit there; a moved zoo is that case, made from the same networks, so
that the two compare run for run (README, "Where the gauge pays").
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import ZooError

CHECK_INPUTS = 256
CHECK_TOLERANCE = 1e-4  # relative to the logits' scale: float32 rounding of scaled weights


def move_network(zoo, i: int, scale_range: float, seed: int, templates: dict, x) -> dict:
    """Network ``i`` of ``zoo`` moved by a random group element, as a state_dict in the
    architecture's key order. Raises :class:`ZooError` if it does not compute what it did."""
    import torch

    import paramgraph

    from .archs import build_model
    from .data import convert_network

    gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
    moved = paramgraph.random_symmetry(convert_network(zoo, i, templates), generator=gen,
                                       scale_range=(1 / scale_range, scale_range))
    source = zoo.state_dict(i)
    state = paramgraph.to_state_dict(moved)
    state = {k: state[k].to(v.dtype).contiguous() for k, v in source.items()}
    model = build_model(zoo.rows[i]["spec"])
    model.load_state_dict(state)
    with torch.no_grad():
        want, got = zoo.model(i)(x), model.eval()(x)
    gap = float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))
    if not gap <= CHECK_TOLERANCE:
        raise ZooError(f"zoo '{zoo.root}' network {i} computes another function after the move "
                       f"(logits differ by {gap:.2g} of their scale); nothing written")
    return state


def move_zoo(zoo_dir: str | os.PathLike, out: str | os.PathLike, scale_range: float = 4.0,
             seed: int = 0, progress: bool = True):
    """Write the moved copy of the made zoo ``zoo_dir`` to ``out`` and return it as a
    :class:`~paramgraph.tasks.zoo.Zoo`. Raises :class:`ZooError` if ``out`` exists, the range is
    below 1, the zoo is imported (no architectures to check the functions with) or a moved
    network computes another function; nothing half-written is left."""
    import torch
    from tqdm import tqdm

    from .digits import dataset
    from .threads import threads
    from .zoo import Zoo, _write_network, write_metadata

    out = Path(out)
    if out.exists():
        raise ZooError(f"'{out}' exists; choose another directory for the moved zoo")
    if not scale_range >= 1:
        raise ZooError(f"the scale range of a move must be at least 1, got {scale_range}")
    zoo = Zoo(zoo_dir)
    if zoo.imported:
        raise ZooError(f"'{zoo_dir}' is an imported zoo; only made zoos can be moved (their "
                       "architectures check that every moved network computes the same)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "nets").mkdir(parents=True)
        (tmp / "rows").mkdir()
        x = dataset("test")[0][:CHECK_INPUTS]
        templates: dict = {}
        with threads(1):  # tiny networks: threads cost more than they give
            rows = [_write_network(tmp, i, move_network(zoo, i, scale_range, seed, templates, x),
                                   zoo.rows[i])
                    for i in tqdm(range(len(zoo)), desc="moving", disable=not progress)]
        write_metadata(tmp, rows)
        shutil.copy2(zoo.root / "splits.json", tmp / "splits.json")
        manifest = {**zoo.manifest, "moved": {"source": str(zoo.root),
                                              "scale_range": scale_range, "seed": seed}}
        (tmp / "zoo.json").write_text(json.dumps(manifest, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
        raise
    tmp.rename(out)
    return Zoo(out)
