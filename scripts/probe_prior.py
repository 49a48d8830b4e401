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

Prints a table; ``--out`` writes the per-seed numbers as JSON. ``ens`` is the Kendall tau of the
seeds' mean prediction (an ensemble of the runs): whether two methods' order survives averaging
out the seeds' noise. ``--zoo ZOO --by KEY`` scores each group of networks with the same value of
metadata ``KEY`` (a dotted path into the zoo's rows, e.g. ``spec.act``) on its own::

    python scripts/probe_prior.py --runs runs/report/gen-cnn --zoo zoos/cnn-2000-s0 \
        --by spec.act --methods quasi-combo-hard-prior perm-combo-prior
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# compare_runs.py (which runs are finished), subset_zoo.py (dotted metadata paths)
sys.path.insert(0, str(ROOT / "scripts"))


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


def method_runs(runs: Path, method: str, split: str) -> dict[int, dict]:
    """``{seed: eval-SPLIT.json}`` of every finished ``METHOD-sSEED`` run under ``runs``."""
    from compare_runs import finished_evaluations  # the runs compare_runs.py scores

    out = finished_evaluations(runs, method, split, field="prior_pred")
    for seed, ev in out.items():
        if "prior_pred" not in ev:
            raise SystemExit(f"error: run '{method}-s{seed}' has no tree prior "
                             "(trained with --no-prior?)")
    return out


def ensemble_tau(evaluations: dict[int, dict], keep=None) -> float:
    """Kendall tau of the seeds' mean prediction (networks ``keep``, a mask; default all)."""
    from scipy.stats import kendalltau

    pred = np.mean([np.asarray(ev["pred"], dtype=float) for ev in evaluations.values()], 0)
    true = np.asarray(next(iter(evaluations.values()))["true"], dtype=float)
    keep = np.ones(len(true), bool) if keep is None else keep
    return float(kendalltau(pred[keep], true[keep])[0])


def _mean_std(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def print_groups(evaluations: dict[str, dict[int, dict]], zoo, key: str) -> None:
    """Per group of networks with the same metadata ``key``: each method's Kendall tau, its
    trees', and what the GNN adds (mean over seeds), and the seed ensemble's tau."""
    from scipy.stats import kendalltau
    from subset_zoo import metadata_value  # the dotted metadata path --where reads too

    print(f"\n| {key} | method | networks | tau | trees | GNN adds | ens |\n"
          f"|{'---|' * 7}")
    for method, evs in evaluations.items():
        ids = next(iter(evs.values()))["net_id"]
        values = np.array([str(metadata_value(zoo.rows[i], key)) for i in ids])
        for value in sorted(set(values)):
            keep = values == value
            tau = [kendalltau(np.asarray(ev["pred"])[keep], np.asarray(ev["true"])[keep])[0]
                   for ev in evs.values()]
            trees = [kendalltau(np.asarray(ev["prior_pred"])[keep],
                                np.asarray(ev["true"])[keep])[0] for ev in evs.values()]
            print(f"| {value} | {method} | {int(keep.sum())} | {_mean_std(tau)} | "
                  f"{_mean_std(trees)} | {np.mean(tau) - np.mean(trees):+.3f} | "
                  f"{ensemble_tau(evs, keep):.3f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, type=Path, help="directory of METHOD-sSEED runs")
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--split", default="test", help="the run split to score (default test)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: none)")
    p.add_argument("--zoo", type=Path, default=None, help="the runs' zoo (for --by)")
    p.add_argument("--by", default=None, metavar="KEY",
                   help="also score groups of networks by metadata KEY (e.g. spec.act)")
    args = p.parse_args(argv)
    if args.by and args.zoo is None:
        p.error("--by needs --zoo (the zoo whose metadata names the groups)")
    keys = ("tau", "trees", "shift", "corr", "mse_gain")
    print(f"| method | seeds | {' | '.join(keys)} | ens |\n|---|---|{'---|' * (len(keys) + 1)}")
    report, evaluations = {}, {}
    for method in args.methods:
        evs = method_runs(args.runs, method, args.split)
        if not evs:
            print(f"error: no finished runs '{method}-sSEED' under {args.runs}", file=sys.stderr)
            return 1
        evaluations[method] = evs
        effects = report[method] = {seed: gnn_effect(**predictions(ev))
                                    for seed, ev in evs.items()}
        cells = [_mean_std([e[k] for e in effects.values()]) for k in keys]
        print(f"| {method} | {len(effects)} | {' | '.join(cells)} | {ensemble_tau(evs):.3f} |")
    if args.by:
        from paramgraph.tasks.zoo import Zoo

        print_groups(evaluations, Zoo(args.zoo), args.by)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
