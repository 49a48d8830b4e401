"""A copy of a made zoo whose every network is moved by a random function-preserving element of
its symmetry group: the same functions, accuracies, runs and splits, other weights.

    python scripts/move_zoo.py --zoo zoos/cnn-2000-s0 --scale-range 4 --out zoos/cnn-2000-s0-moved4

Each network is converted to its parameter graph, moved by ``paramgraph.random_symmetry`` (a
uniform permutation of every permutable neuron set, every scalable neuron's scale log-uniform in
``[1/R, R]``, fair sign flips of every sign-symmetric neuron; seeded per network by ``--seed``
and its id), converted back to a state_dict and written where the source zoo has it, with its
metadata row (new SHA-256). Every moved network is checked to compute what its source computes
(logits on 256 held-out digits within 1e-4 of their scale); a mismatch stops the script and
leaves nothing under ``--out``.

Why: a zoo made by one training recipe holds networks near one point of their orbits (trained
ReLU networks of the cnn zoo sit within a factor 1.2 of the balanced point for half their
neurons), so a metanet that reads raw weights can use where a network sits as if it were a
property of its function. Networks gathered from many sources (other initialisations, other
parametrisations, rescaled or merged checkpoints) do not: this zoo is that case, made from the
same networks, so that the two can be compared run for run (README, "Where the gauge pays").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHECK_INPUTS = 256
CHECK_TOLERANCE = 1e-4  # relative to the logits' scale: float32 rounding of scaled weights


def move_network(zoo, i: int, scale_range: float, seed: int, templates: dict, x) -> dict:
    """Network ``i`` of ``zoo`` moved by a random group element, as a state_dict in the
    architecture's key order; raises ``SystemExit`` if it does not compute what it did."""
    import torch

    import paramgraph
    from paramgraph.tasks.archs import build_model
    from paramgraph.tasks.data import convert_network

    gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
    graph = convert_network(zoo, i, templates)
    moved = paramgraph.random_symmetry(graph, generator=gen,
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
        raise SystemExit(f"move_zoo: network {i} computes another function after the move "
                         f"(logits differ by {gap:.2g} of their scale); nothing written")
    return state


def move_zoo(zoo_dir: Path, out: Path, scale_range: float, seed: int,
             progress: bool = True) -> int:
    """Write the moved copy of ``zoo_dir`` to ``out`` (which must not exist); returns the number
    of networks."""
    import torch
    from tqdm import tqdm

    from paramgraph.tasks.digits import dataset
    from paramgraph.tasks.zoo import Zoo, _csv, _write_network

    if out.exists():
        raise SystemExit(f"move_zoo: '{out}' exists; choose another --out")
    if not scale_range >= 1:
        raise SystemExit(f"move_zoo: --scale-range must be at least 1, got {scale_range}")
    zoo = Zoo(zoo_dir)
    if zoo.imported:
        raise SystemExit(f"move_zoo: '{zoo_dir}' is an imported zoo; it moves made zoos only")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "nets").mkdir(parents=True)
    (tmp / "rows").mkdir()
    x = dataset("test")[0][:CHECK_INPUTS]
    templates: dict = {}
    rows = []
    torch.set_num_threads(1)
    try:
        for i in tqdm(range(len(zoo)), desc="moving", disable=not progress):
            state = move_network(zoo, i, scale_range, seed, templates, x)
            _write_network(tmp, i, state, zoo.rows[i])
            rows.append(json.loads((tmp / "rows" / f"{i:06d}.json").read_text()))
        (tmp / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "metadata.csv").write_text(_csv(rows))
        shutil.copy2(zoo.root / "splits.json", tmp / "splits.json")
        manifest = {**zoo.manifest, "moved": {"source": str(zoo.root),
                                              "scale_range": scale_range, "seed": seed}}
        (tmp / "zoo.json").write_text(json.dumps(manifest, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
        raise
    tmp.rename(out)
    return len(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, required=True, help="the source zoo (a made one)")
    p.add_argument("--out", type=Path, required=True, help="the new zoo directory")
    p.add_argument("--scale-range", type=float, default=4.0, metavar="R",
                   help="scales log-uniform in [1/R, R] (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    n = move_zoo(args.zoo, args.out, args.scale_range, args.seed, not args.no_progress)
    print(f"{args.out}: {n} networks moved (scales in [1/{args.scale_range:g}, "
          f"{args.scale_range:g}], signs, permutations; seed {args.seed})")


if __name__ == "__main__":
    sys.exit(main())
