"""Are two metanets' Kendall taus different, or is it the test split? A paired bootstrap over runs.

A zoo's test split holds a few dozen training *runs* (several checkpoints each), and which runs
it holds moves every method's score. This script resamples the split's runs with replacement and
recomputes each method's Kendall tau (mean over its seeds) on every resample, so that each
difference between two methods comes with the interval the choice of test runs allows::

    python scripts/compare_runs.py --zoo zoos/cnn-2000-s0 --runs runs/report/gen-cnn \\
        --methods quasi perm strict --split test

``--two-fold`` scores the test and the validation split together (twice the runs): each method's
validation predictions come from its ``METHOD-swap`` runs, which kept the epoch best on the test
split (``--splits swap``), so every prediction is of a network its model was not selected on.

``--runs`` holds ``METHOD-sSEED`` run directories (``scripts/make_report.py`` lays them out
so); their predictions are ``RUN/eval-SPLIT.json`` (written by ``paramgraph eval RUN --split
SPLIT`` or by this script where missing). ``baseline`` as a method is the statistics baseline,
fitted on the training split here. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def finished_evaluations(runs: Path, method: str, split: str,
                         field: str = "pred") -> dict[int, dict]:
    """``{seed: the run's eval-SPLIT.json}`` of every finished ``METHOD-sSEED`` run under
    ``runs``; a run whose file is missing or lacks ``field`` is evaluated first (with this code)."""
    from paramgraph.tasks.train import evaluate_run

    out = {}
    for run in sorted(runs.glob(f"{method}-s*")):
        seed = run.name[len(method) + 2:]
        file = run / f"eval-{split}.json"
        # finished: evaluated, or trained to the end (make_report writes summary.json then)
        if not seed.isdigit() or not (file.is_file() or (run / "summary.json").is_file()):
            continue
        ev = json.loads(file.read_text()) if file.is_file() else {}
        if field not in ev:
            evaluate_run(run, split, threads=1)  # writes the file
            ev = json.loads(file.read_text())
        out[int(seed)] = ev
    return out


def method_predictions(runs: Path, method: str, split: str) -> dict[int, dict[int, float]]:
    """``{seed: {network id: prediction}}`` of every ``METHOD-sSEED`` run under ``runs`` on the
    run's ``split`` (which zoo split that is depends on the run's split set)."""
    out = {seed: dict(zip(ev["net_id"], ev["pred"], strict=True))
           for seed, ev in finished_evaluations(runs, method, split).items()}
    if not out:
        raise SystemExit(f"no finished runs '{method}-sSEED' under {runs}")
    return out


def baseline_predictions(zoo, split: str, features: np.ndarray) -> dict[int, dict[int, float]]:
    """The statistics baseline fitted on the training split, on ``split`` (``features``: the
    zoo's :func:`~paramgraph.tasks.baseline.zoo_features`, computed once for every split)."""
    from paramgraph.tasks.baseline import fit_predict

    result = fit_predict("generalization", zoo, "train", split, seed=0, x_all=features)
    return {0: dict(zip(zoo.split(split), (float(p) for p in result["pred"]), strict=True))}


def _merged(parts: list[dict[int, dict[int, float]]]) -> dict[int, dict[int, float]]:
    """The seeds every part has, each with the predictions of all parts."""
    seeds = set.intersection(*(set(p) for p in parts))
    return {s: {k: v for p in parts for k, v in p[s].items()} for s in sorted(seeds)}


def seed_mean_tau(preds: dict[int, np.ndarray], true: np.ndarray, index: np.ndarray) -> float:
    """The mean over seeds of Kendall tau on the networks ``index``."""
    from paramgraph.tasks.metrics import kendall_tau

    return float(np.mean([kendall_tau(p[index], true[index]) for p in preds.values()]))


def bootstrap(methods: dict, true: np.ndarray, groups: np.ndarray, draws: int,
              seed: int) -> dict[str, np.ndarray]:
    """Each method's seed-mean Kendall tau on ``draws`` resamples of the groups (runs)."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    scores = {m: np.empty(draws) for m in methods}
    for b in range(draws):
        picked = rng.integers(len(members), size=len(members))
        index = np.concatenate([members[i] for i in picked])
        for m, preds in methods.items():
            scores[m][b] = seed_mean_tau(preds, true, index)
    return scores


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, help="the zoo the runs trained on")
    p.add_argument("--runs", required=True, type=Path, help="directory of METHOD-sSEED runs")
    p.add_argument("--methods", nargs="+", required=True,
                   help="run name prefixes (the first is the reference); 'baseline' for the "
                   "statistics baseline")
    p.add_argument("--split", default="test", help="the zoo split to score (default test)")
    p.add_argument("--run-split", default=None,
                   help="the runs' name for that split (default: the same; 'test' for runs "
                   "trained with --splits swap, which score the zoo's val split)")
    p.add_argument("--two-fold", action="store_true",
                   help="score the test and validation splits together: each method's test "
                   "predictions from its runs METHOD-sSEED, its validation predictions from "
                   "METHOD-swap-sSEED (trained with --splits swap); the baseline fits both")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: none)")
    args = p.parse_args(argv)

    from paramgraph.tasks.zoo import Zoo

    zoo = Zoo(args.zoo)
    # what is scored: (the zoo split, the runs' name for it, the suffix of the runs' names)
    parts = [(args.split, args.run_split or args.split, "")]
    label = args.split
    if args.two_fold:
        label = "test+val"
        parts = [("test", "test", ""), ("val", "test", "-swap")]
    ids = [i for zoo_split, _, _ in parts for i in zoo.split(zoo_split)]
    true = np.asarray(zoo.column("test_acc"), dtype=np.float64)[ids]
    groups = np.asarray([zoo.rows[i]["run"] for i in ids])
    if "baseline" in args.methods:
        from paramgraph.tasks.baseline import zoo_features

        features = zoo_features(zoo)
    methods = {}
    for m in args.methods:
        raw = _merged([baseline_predictions(zoo, zoo_split, features) if m == "baseline" else
                       method_predictions(args.runs, m + suffix, run_split)
                       for zoo_split, run_split, suffix in parts])
        for seed, by_id in raw.items():
            if set(by_id) != set(ids):
                raise SystemExit(f"{m} seed {seed}: its predictions are not of the zoo's "
                                 f"'{label}' split")
        methods[m] = {s: np.asarray([by_id[i] for i in ids]) for s, by_id in raw.items()}
    full = {m: seed_mean_tau(preds, true, np.arange(len(ids))) for m, preds in methods.items()}
    boot = bootstrap(methods, true, groups, args.draws, args.seed)
    ref = args.methods[0]
    rows = []
    print(f"{label} split: {len(ids)} networks of {len(np.unique(groups))} runs; "
          f"{args.draws} resamples of the runs; 95% intervals")
    print(f"{'method':18} {'seeds':>5} {'Kendall tau':>11} {'interval':>17} | "
          f"{'minus ' + ref:>16} {'interval':>17} {'P(> 0)':>7}")
    for m in args.methods:
        lo, hi = np.percentile(boot[m], [2.5, 97.5])
        diff = boot[m] - boot[ref]
        dlo, dhi = np.percentile(diff, [2.5, 97.5])
        row = {"method": m, "seeds": sorted(methods[m]), "kendall_tau": full[m],
               "interval": [lo, hi], "minus_reference": full[m] - full[ref],
               "difference_interval": [dlo, dhi], "p_above": float((diff > 0).mean())}
        rows.append(row)
        print(f"{m:18} {len(methods[m]):>5} {full[m]:>11.3f} [{lo:6.3f}, {hi:6.3f}] | "
              f"{full[m] - full[ref]:>+16.3f} [{dlo:+6.3f}, {dhi:+6.3f}] "
              f"{row['p_above'] if m != ref else float('nan'):>7.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"split": label, "draws": args.draws,
                                        "reference": ref, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
