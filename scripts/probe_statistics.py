"""Why the statistics baseline beats every metanet: the same weight statistics under other models.

The statistics baseline (``paramgraph baseline``, :mod:`paramgraph.tasks.baseline`) is histogram
gradient boosting on per-tensor statistics. This probe separates the two things it could owe its
lead to:

* **the features** — are the statistics of *raw* weights more informative than those of the
  exactly invariant canonical networks the ``quasi``/``strict`` metanets read? The same
  statistics are computed on each network's raw weights, on its unit-norm canonical form and on
  its balanced canonical form (``GaugeMap(learned=False, section=...)``, the section of
  ``quasi`` without the learned factor; both are functionally identical to the raw network);
* **the learner** — on the very same features, how do a neural network (an MLP on
  quantile-normalised features), a linear model and another tree ensemble do?

Optionally (``--runs``) it blends the baseline's test predictions with finished metanet runs'
(``eval-test.json`` of ``scripts/make_report.py``): ``a * metanet + (1 - a) * baseline``.

    python scripts/probe_statistics.py --zoo zoos/cnn-2000-s0 --seeds 0 1 2 \\
        --runs runs/report/gen-cnn

prints a table (test split, Kendall tau and R², mean ± std over the seeds) and writes
``bench_results/probe_statistics.json``. It takes ~2 minutes on 2 cores for a 2,000-network zoo.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("raw", "unit", "balanced")
BLEND_WEIGHTS = (0.3, 0.5)


def section_features(zoo, hetero: bool) -> dict[str, np.ndarray]:
    """``{section: [n, F]}``: the baseline's features of every network, raw and canonicalised."""
    import torch

    from paramgraph.inverse import to_state_dict
    from paramgraph.models import prepare
    from paramgraph.models.gauge import GaugeMap
    from paramgraph.tasks.baseline import features
    from paramgraph.tasks.data import load_graphs

    graphs = load_graphs(zoo, progress=False)
    maps = {s: GaugeMap(learned=False, section=s) for s in SECTIONS[1:]}
    out = {s: [] for s in SECTIONS}
    with torch.no_grad():
        for i in range(len(zoo)):
            g = graphs[i]
            out["raw"].append(features(to_state_dict(g), hetero))
            batch, st = prepare(g)
            for name, gauge in maps.items():
                ev, nv, _ = gauge(st, batch.edge_value, batch.node_value, batch.node_mask)
                out[name].append(features(to_state_dict(g.with_values(ev, nv)), hetero))
    return {k: np.stack(v) for k, v in out.items()}


def learners(seed: int) -> dict:
    """The models compared on the same features (scikit-learn defaults unless noted)."""
    from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import QuantileTransformer

    # quantile-normalised inputs: plain standardisation gave the MLP far worse scores (tau 0.70),
    # as the statistics are heavy-tailed
    def qt():
        return QuantileTransformer(n_quantiles=200, random_state=seed)

    return {
        "gradient boosting (the baseline)": HistGradientBoostingRegressor(random_state=seed),
        "extra trees": ExtraTreesRegressor(300, min_samples_leaf=2, random_state=seed),
        "MLP 128-128": make_pipeline(qt(), MLPRegressor(
            hidden_layer_sizes=(128, 128), alpha=1e-3, max_iter=500, early_stopping=True,
            random_state=seed)),
        "ridge": make_pipeline(qt(), RidgeCV()),
    }


def blends(runs: Path, zoo, pred_base: np.ndarray, seed: int, objective) -> dict[str, dict]:
    """The baseline blended with each finished metanet run of ``seed`` under ``runs``."""
    test_ids = list(zoo.split("test"))
    y = objective.targets(zoo).numpy()[test_ids]
    out = {}
    for ev_file in sorted(runs.glob(f"*-s{seed}/eval-test.json")):
        ev = json.loads(ev_file.read_text())
        if list(ev["net_id"]) != test_ids:
            raise SystemExit(f"{ev_file}: its networks are not this zoo's test split")
        method = ev_file.parent.name[: -len(f"-s{seed}")]
        pred = np.asarray(ev["pred"])
        out[f"{method} alone"] = objective.metrics(pred, y)
        for a in BLEND_WEIGHTS:
            out[f"{a:g} {method} + {1 - a:g} baseline"] = objective.metrics(
                a * pred + (1 - a) * pred_base, y)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, type=Path, help="a hetero or cnn zoo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, help="make_report runs of this zoo (optional blends)")
    p.add_argument("--out", type=Path, default=ROOT / "bench_results" / "probe_statistics.json")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from paramgraph.tasks.objectives import get_objective
    from paramgraph.tasks.zoo import RECIPES, Zoo

    zoo = Zoo(args.zoo)
    objective = get_objective("generalization")
    y = objective.targets(zoo).numpy()
    tr, te = zoo.split("train"), zoo.split("test")
    t0 = time.time()
    with threadpool_limits(1):
        feats = section_features(zoo, RECIPES[zoo.kind].heterogeneous)
    print(f"features of {len(zoo)} networks: {time.time() - t0:.0f} s", flush=True)
    scores: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for section, x in feats.items():
            for name, model in learners(seed).items():
                with threadpool_limits(1):
                    pred = model.fit(x[tr], y[tr]).predict(x[te])
                scores.setdefault(f"{name} | {section}", []).append(objective.metrics(pred, y[te]))
                if args.runs and section == "raw" and name.endswith("(the baseline)"):
                    for k, m in blends(args.runs, zoo, pred, seed, objective).items():
                        scores.setdefault(f"blend | {k}", []).append(m)
    rows = []
    for key, ms in scores.items():
        tau = np.array([m["kendall_tau"] for m in ms])
        r2 = np.array([m["r2"] for m in ms])
        rows.append({"row": key, "n": len(ms), "kendall_tau": tau.mean(), "tau_std": tau.std(),
                     "r2": r2.mean(), "r2_std": r2.std()})
    print("| model \\| features | Kendall tau | R² | n |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['row']} | {r['kendall_tau']:.3f} ± {r['tau_std']:.3f} | "
              f"{r['r2']:.3f} ± {r['r2_std']:.3f} | {r['n']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"zoo": str(args.zoo), "seeds": args.seeds, "rows": rows},
                                   indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
