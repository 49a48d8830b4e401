"""What does the GNN add to its tree prior? Per method, over its seeds, on one split.

A metanet with a tree prior (``MetaNet(prior=True)``) predicts the trees' prediction plus the
GNN's correction. This script reads each run's ``eval-SPLIT.json`` (which holds both: ``pred``
and the trees' own ``prior_pred``; evaluated here where missing or older, as
``scripts/compare_runs.py`` does) and reports, mean ±
standard deviation over the seeds:

- ``tau`` / ``trees``: Kendall tau of the metanet and of its trees alone;
- ``shift``: the mean of ``|pred - prior_pred|``, how far the GNN moves the trees' prediction
  (accuracy units);
- ``corr``: Pearson correlation of that move with the trees' residual ``true - prior_pred``:
  1 would be a GNN that moves every prediction toward the truth in proportion to the trees'
  error, 0 one whose moves are unrelated to it;
- ``mse gain``: the fraction of the trees' squared error the GNN removes (negative: it adds).

::

    python scripts/probe_prior.py --runs runs/report/gen-cnn \\
        --methods quasi-combo-hard-prior perm-combo-prior strict-combo-prior

Prints a table; ``--out`` writes the per-seed numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # compare_runs.py: which runs are finished


def predictions(ev: dict) -> dict:
    """``{"pred", "prior", "true"}`` arrays of one run's evaluation file."""
    return {k: np.asarray(ev[f], dtype=float)
            for k, f in (("pred", "pred"), ("prior", "prior_pred"), ("true", "true"))}


def gnn_effect(pred: np.ndarray, prior: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """How the GNN's correction ``pred - prior`` relates to the trees' error ``true - prior``."""
    from scipy.stats import kendalltau

    move, residual = pred - prior, true - prior
    corr = (float(np.corrcoef(move, residual)[0, 1])
            if move.std() > 0 and residual.std() > 0 else 0.0)
    trees_sq = float(np.mean(residual ** 2))
    return {"tau": float(kendalltau(pred, true)[0]), "trees": float(kendalltau(prior, true)[0]),
            "shift": float(np.abs(move).mean()), "corr": corr,
            "mse_gain": 1.0 - float(np.mean((true - pred) ** 2)) / trees_sq if trees_sq else 0.0}


def method_effects(runs: Path, method: str, split: str) -> dict[int, dict[str, float]]:
    """``{seed: gnn_effect}`` of every finished ``METHOD-sSEED`` run under ``runs``."""
    from compare_runs import finished_evaluations  # the runs compare_runs.py scores

    out = {}
    for seed, ev in finished_evaluations(runs, method, split, field="prior_pred").items():
        if "prior_pred" not in ev:
            raise SystemExit(f"error: run '{method}-s{seed}' has no tree prior "
                             "(trained with --no-prior?)")
        out[seed] = gnn_effect(**predictions(ev))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, type=Path, help="directory of METHOD-sSEED runs")
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--split", default="test", help="the run split to score (default test)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: none)")
    args = p.parse_args(argv)
    keys = ("tau", "trees", "shift", "corr", "mse_gain")
    print(f"| method | seeds | {' | '.join(keys)} |\n|---|---|{'---|' * len(keys)}")
    report = {}
    for method in args.methods:
        effects = method_effects(args.runs, method, args.split)
        if not effects:
            print(f"error: no finished runs '{method}-sSEED' under {args.runs}", file=sys.stderr)
            return 1
        report[method] = effects
        cells = []
        for k in keys:
            v = np.array([e[k] for e in effects.values()])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}")
        print(f"| {method} | {len(effects)} | {' | '.join(cells)} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
