"""A copy of a made zoo whose every network is moved by a random function-preserving element of
its symmetry group: the same functions, accuracies, runs and splits, other weights
(:mod:`paramgraph.tasks.zoo_move` says how, and why).

    python scripts/move_zoo.py --zoo zoos/cnn-2000-s0 --scale-range 4 --out zoos/cnn-2000-s0-moved4

Errors (an existing ``--out``, a moved network that computes another function, ...) print one
line and exit 1, leaving nothing under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paramgraph.errors import ParamGraphError  # noqa: E402
from paramgraph.tasks.zoo_move import move_zoo  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, required=True, help="the source zoo (a made one)")
    p.add_argument("--out", type=Path, required=True, help="the new zoo directory")
    p.add_argument("--scale-range", type=float, default=4.0, metavar="R",
                   help="scales log-uniform in [1/R, R] (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        zoo = move_zoo(args.zoo, args.out, args.scale_range, args.seed, not args.no_progress)
    except ParamGraphError as err:
        raise SystemExit(f"move_zoo: error: {err}") from None
    print(f"{args.out}: {len(zoo)} networks moved (scales in [1/{args.scale_range:g}, "
          f"{args.scale_range:g}], signs, permutations; seed {args.seed})")


if __name__ == "__main__":
    sys.exit(main())
