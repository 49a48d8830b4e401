"""The full-size results table: quasi, strict and perm metanets and the statistics baseline on
zoos of 2,000 networks (hetero, cnn) and 1,797 SIRENs (one per digit), over several seeds.

    .venv/bin/python scripts/make_report.py                  # everything, resumable
    .venv/bin/python scripts/make_report.py --table-only     # re-print the table from results

Steps (each resumable: run it again after an interruption and finished work is kept):

1. ``paramgraph zoo make`` the three zoos under ``--zoos`` (default ``zoos/``); the column
   ``gen-cnn-moved`` also writes the cnn zoo moved along its orbits
   (:mod:`paramgraph.tasks.zoo_move`, scales in [1/4, 4]) beside it.
2. For every task column, seed and mode, ``paramgraph train`` a metanet into
   ``--runs/<column>/<mode>-s<seed>`` (two runs at a time, one thread each) and
   ``paramgraph eval`` it on the test split; fit the statistics baseline once per seed.
3. Write ``--runs/results.json`` (every score) and ``--runs/REPORT.md`` (mean ± standard
   deviation over the seeds, and the commands that reproduce it), and print the table.

The zoo seed is fixed (the zoo and its splits are the data set); the seed varies the metanet's
initialisation and data order, and the baseline's ``random_state`` (gradient boosting without
early stopping is deterministic, so its spread is 0).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paramgraph.tasks.io import atomic_write_json, atomic_write_text  # noqa: E402

COLUMNS = {
    # column: (task, zoo kind, metric, higher is better)
    "gen-hetero": ("generalization", "hetero", "kendall_tau", True),
    "gen-cnn": ("generalization", "cnn", "kendall_tau", True),
    # the cnn zoo with every network moved along its orbit (scripts/move_zoo.py): same functions
    # and accuracies, other weights (README, "Where the gauge pays")
    "gen-cnn-moved": ("generalization", "cnn-moved4", "kendall_tau", True),
    "inr-class": ("inr-class", "inr", "accuracy", True),
    "inr-edit": ("inr-edit", "inr", "mse", False),
}
# A method is a row of the table: a metanet mode with model and training settings. The first
# three are the README's comparison; the others are the ablations of the gauge (README,
# "What makes the gauge pay").
BEFORE_WD = {"weight_decay": 0.01}  # the default weight decay until weight decay 0.1
# The generalization task's defaults until the combination became its default (issue 10): every
# row below was defined and measured against them, so a row trains with them on a
# generalization column unless it sets its own (the combo rows set all four). Other tasks'
# defaults did not change.
COMBO_TRAIN = {"rank_loss": 1.0, "weight_decay": 0.3, "ema": 0.99}
BEFORE_COMBO = {"train": {"weight_decay": 0.1, "ema": 0.0, "rank_loss": 0.0},
                "model": {"output_readout": False}}
# quasi's soft signs were on by default until hard signs measured better (issue 10): every row
# is pinned to them unless it sets soft_signs itself (they act on quasi's invariant head only).
BEFORE_HARD_SIGNS = {"soft_signs": True}
# The tree prior became the generalization default in the release that measured it (issue 10):
# every earlier row is pinned to no prior on generalization columns. Today's defaults are the
# rows quasi-combo-hard-prior, perm-combo-prior and strict-combo-prior.
BEFORE_PRIOR = {"prior": False}


def _probe(mode: str, **model) -> dict:
    """A single-seed ablation of the previous release's default (weight decay 0.01), one change
    from it each, kept at that weight decay so that the README's probe table reproduces."""
    return {"mode": mode, "model": model, "train": BEFORE_WD}


# the defaults on generalization columns before the tree prior, one row per mode (today's:
# their -prior rows)
METHODS_TODAY = {
    "quasi-combo-hard": {"mode": "quasi", "model": {"output_readout": True, "soft_signs": False},
                         "train": COMBO_TRAIN},
    **{f"{mode}-combo": {"mode": mode, "model": {"output_readout": True}, "train": COMBO_TRAIN}
       for mode in ("perm", "strict")},
}


def _quasi_prior(**model) -> dict:
    """Today's quasi default (quasi-combo-hard with the tree prior), one model option changed."""
    return {"mode": "quasi", "train": COMBO_TRAIN,
            "model": {**METHODS_TODAY["quasi-combo-hard"]["model"], "prior": True, **model}}


METHODS = {
    "quasi": {"mode": "quasi"},
    "strict": {"mode": "strict"},
    "perm": {"mode": "perm"},
    # the previous default weight decay (0.1 since this release)
    "quasi-wd0.01": {"mode": "quasi", "train": BEFORE_WD},
    "perm-wd0.01": {"mode": "perm", "train": BEFORE_WD},
    "strict-wd0.01": {"mode": "strict", "train": BEFORE_WD},
    # the exact section without the learned factor kappa, at the defaults: does kappa pay?
    "quasi-fixed": {"mode": "quasi", "model": {"learn_gauge": False}},
    # ablations (README, "What makes the gauge pay")
    "perm-stats": _probe("perm", statistics=True),
    "quasi-stats": _probe("quasi", statistics=True),
    "quasi-raw": _probe("quasi", compress=False),
    "quasi-hardsigns": _probe("quasi", soft_signs=False),
    "quasi-unit": _probe("quasi", section="unit"),
    "quasi-stats-hardsigns": _probe("quasi", statistics=True, soft_signs=False),
    "quasi-raw-hardsigns": _probe("quasi", compress=False, soft_signs=False),
    "quasi-raw-stats-hardsigns": _probe("quasi", compress=False, statistics=True,
                                        soft_signs=False),
    # the quasi metanet before this work: unit-norm section, raw reads, hard signs
    "quasi-before": _probe("quasi", section="unit", compress=False, soft_signs=False),
    # a moving average of the weights (decay 0.99 per step, ~2 epochs), evaluated and kept
    "quasi-ema": {"mode": "quasi", "train": {"ema": 0.99}},
    "perm-ema": {"mode": "perm", "train": {"ema": 0.99}},
    "strict-ema": {"mode": "strict", "train": {"ema": 0.99}},
    # the invariant head also reads the mean of the output neurons (inr-class's default)
    "quasi-out": {"mode": "quasi", "model": {"output_readout": True}},
    "perm-out": {"mode": "perm", "model": {"output_readout": True}},
    "strict-out": {"mode": "strict", "model": {"output_readout": True}},
    # hard sign canonicalisation at the default weight decay (soft signs fade near-jump neurons)
    "quasi-hard": {"mode": "quasi", "model": {"soft_signs": False}},
    # the unit-norm section (the network's scale in its last layer) read by the output readout
    "quasi-unit-out": {"mode": "quasi", "model": {"section": "unit", "output_readout": True}},
    # no value channels: the plain edge/node GNN of the same width (strict needs channels)
    "quasi-c0": {"mode": "quasi", "model": {"channels": 0}},
    "perm-c0": {"mode": "perm", "model": {"channels": 0}},
    # three times the default weight decay (0.1 lifted quasi over 0.01, not perm or strict)
    "quasi-wd0.3": {"mode": "quasi", "train": {"weight_decay": 0.3}},
    "perm-wd0.3": {"mode": "perm", "train": {"weight_decay": 0.3}},
    # the learned factor's log-scale bound s_max at twice the default (2)
    "quasi-bound4": {"mode": "quasi", "model": {"gauge_bound": 4.0}},
    # the pairwise rank term (a surrogate of Kendall tau) beside the squared error
    "quasi-rank": {"mode": "quasi", "train": {"rank_loss": 1.0}},
    "perm-rank": {"mode": "perm", "train": {"rank_loss": 1.0}},
    "strict-rank": {"mode": "strict", "train": {"rank_loss": 1.0}},
    # the four levers that each lifted a metanet by less than its noise, together: the rank
    # term, weight decay 0.3, the moving average of the weights and the output readout
    "quasi-combo": {"mode": "quasi", "model": {"output_readout": True}, "train": COMBO_TRAIN},
    # what the sign canonicaliser costs on the combination (quasi trails perm on tanh
    # networks, where the gauge fixes signs only): hard signs (no fading near the jump; the
    # row quasi-combo-hard of METHODS_TODAY), and no sign flips at all (a diagnostic: the
    # metanet is then not invariant to sign flips)
    **METHODS_TODAY,
    "quasi-combo-nosigns": {"mode": "quasi", "train": COMBO_TRAIN,
                            "model": {"output_readout": True, "soft_signs": False,
                                      "gauge_signs": "none"}},
    # signs canonicalised by the sum of a neuron's incoming weights instead of its bias (which
    # the canonical form then shows positive on every tanh neuron, unlike any ReLU network's)
    "quasi-combo-insign": {"mode": "quasi", "train": COMBO_TRAIN,
                           "model": {"output_readout": True, "soft_signs": False,
                                     "gauge_signs": "incoming"}},
    # perm trained on networks moved by random scales in [1/4, 4] and signs every step: can it
    # still read what the function does not determine (where a network sits in its orbit)?
    "perm-combo-aug": {"mode": "perm", "model": {"output_readout": True},
                       "train": {**COMBO_TRAIN, "augment": 4.0}},
    # today's defaults trained with bfloat16 matrix products (--precision bf16; ~1.5x the
    # steps per CPU-second at width 64 on a CPU with AVX512-BF16): does the precision cost
    # accuracy?
    **{f"{name}-bf16": {**METHODS_TODAY[name],
                        "train": {**METHODS_TODAY[name]["train"], "precision": "bf16"}}
       for name in METHODS_TODAY},
    # today's defaults with 16 value channels (at --hidden 64, where the default is 32: what
    # the channels' half of the step buys)
    **{f"{name}-c16": {**METHODS_TODAY[name],
                       "model": {**METHODS_TODAY[name]["model"], "channels": 16}}
       for name in METHODS_TODAY},
    # today's defaults correcting the cross-fitted tree prior (models/prior.py)
    **{f"{name}-prior": {**METHODS_TODAY[name],
                         "model": {**METHODS_TODAY[name]["model"], "prior": True}}
       for name in METHODS_TODAY},
    # ... with hidden edge features W wide (MetaNet(edge_width=W); the default is min(hidden,
    # 32); edges outnumber neurons 6x in a small CNN's graph, so their width sets most of a
    # step's cost)
    **{f"{name}-prior-e{w}": {**METHODS_TODAY[name],
                              "model": {**METHODS_TODAY[name]["model"], "prior": True,
                                        "edge_width": w}}
       for name in METHODS_TODAY for w in (16, 32, 64)},
    # ... perm trained on networks moved by random scales and signs every step: what it gains
    # over the invariant modes from where a network sits in its orbit
    "perm-combo-aug-prior": {"mode": "perm", "model": {"output_readout": True, "prior": True},
                             "train": {**COMBO_TRAIN, "augment": 4.0}},
    # ... quasi with the gauged network moved by random scales in [1/4, 4] and signs while
    # training (MetaNet(gauge_jitter=4)): perm-combo-aug-prior's regularisation, kept exactly
    # invariant
    "quasi-combo-hard-prior-jitter": _quasi_prior(gauge_jitter=4.0),
    # ... quasi with the prior and without the learned factor kappa (the bare balanced section):
    # does kappa still pay once the trees carry the statistics?
    "quasi-combo-hard-prior-fixed": _quasi_prior(learn_gauge=False),
    # ... and with a richer kappa (the factor is what lets quasi's GNN correct its trees):
    # twice its log-scale bound, or twice its network's width
    "quasi-combo-hard-prior-bound4": _quasi_prior(gauge_bound=4.0),
    "quasi-combo-hard-prior-gh32": _quasi_prior(gauge_hidden=32),
    # ... every mode's head also reading its trees' prediction (MetaNet(prior_input=True))
    **{f"{name}-prior-stack": {**METHODS_TODAY[name],
                               "model": {**METHODS_TODAY[name]["model"], "prior": True,
                                         "prior_input": True}}
       for name in METHODS_TODAY},
    # ... quasi averaged over several exact sections (MetaNet(gauge_frames=...)): one drawn per
    # training batch, all averaged in evaluation; fr2: the two sign statistics, fr4: both
    # sections with both
    "quasi-combo-hard-prior-fr2": _quasi_prior(gauge_frames=("balanced/bias",
                                                             "balanced/incoming")),
    "quasi-combo-hard-prior-fr4": _quasi_prior(gauge_frames=(
        "balanced/bias", "balanced/incoming", "unit/bias", "unit/incoming")),
    # inr tasks: probe features, every neuron's values on a 4x4 grid of coordinates (the first
    # probe runs, before inr-class read the output neuron)
    "quasi-probes": {"mode": "quasi", "model": {"probes": 16, "output_readout": False}},
    "perm-probes": {"mode": "perm", "model": {"probes": 16, "output_readout": False}},
    # ... on an 8x8 grid, and the head also reads the output neuron (whose probes are the image):
    # inr-class's defaults since issue 11; these rows are its ablations
    "quasi-probes64-out": {"mode": "quasi", "model": {"probes": 64, "output_readout": True}},
    "quasi-probes16-out": {"mode": "quasi", "model": {"probes": 16, "output_readout": True}},
    "quasi-probes64-noout": {"mode": "quasi", "model": {"probes": 64, "output_readout": False}},
    "quasi-noprobes": {"mode": "quasi", "model": {"probes": 0, "output_readout": False}},
    # inr-edit: output channel expansion (8 SIRENs averaged), on the first 1,000 training SIRENs
    "quasi-k8": {"mode": "quasi", "model": {"copies": 8}, "train": {"max_train": 1000}},
    "perm-k8": {"mode": "perm", "model": {"copies": 8}, "train": {"max_train": 1000}},
    "strict-k8": {"mode": "strict", "model": {"copies": 8}, "train": {"max_train": 1000}},
    # editing with 64 probe features (strict cannot read them)
    "quasi-k8-p64": {"mode": "quasi", "model": {"copies": 8, "probes": 64},
                     "train": {"max_train": 1000}},
    "perm-k8-p64": {"mode": "perm", "model": {"copies": 8, "probes": 64},
                    "train": {"max_train": 1000}},
}
# Every method's twin M-swap: the same training with --splits swap, which keeps the epoch best
# on the test split and scores the validation split, a second held-out estimate
# (scripts/compare_runs.py --two-fold pools M and M-swap)
METHODS.update({f"{name}-swap": {**method, "train": {**method.get("train", {}), "splits": "swap"}}
                for name, method in list(METHODS.items())})
MODES = ("quasi", "strict", "perm")
ZOO_SIZES = {"hetero": 2000, "cnn": 2000, "inr": 4000}  # inr: 16x16 views (issue 11)
# zoo kinds of COLUMNS that are moved copies of another: (source kind, scale range R)
MOVED_ZOOS = {"cnn-moved4": ("cnn", 4.0)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoos", default="zoos", help="zoo root (default zoos/)")
    p.add_argument("--runs", default="runs/report", help="runs root (default runs/report)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    p.add_argument("--methods", "--modes", nargs="+", default=list(MODES), choices=list(METHODS),
                   help="rows of the table (see METHODS)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--epochs", type=json.loads,
                   default={"gen-hetero": 6, "gen-cnn": 25, "gen-cnn-moved": 25, "inr-class": 30,
                            "inr-edit": 30},
                   help="epochs per column as JSON")
    p.add_argument("--zoo-seed", type=int, default=0)
    p.add_argument("--zoo-sizes", type=json.loads, default=ZOO_SIZES,
                   help="networks per zoo kind as JSON (smaller for a smoke test)")
    p.add_argument("--inr-init", choices=("independent", "shared"), default="independent",
                   help="the inr zoo's SIREN initialisations (default: one per network)")
    p.add_argument("--table-only", action="store_true")
    return p.parse_args(argv)


def make_zoos(args) -> dict[str, Path]:
    from paramgraph.tasks.zoo import make_zoo

    kinds = sorted({COLUMNS[c][1] for c in args.columns})
    kinds = sorted({MOVED_ZOOS.get(k, (k,))[0] for k in kinds}) + [k for k in kinds
                                                                  if k in MOVED_ZOOS]
    paths = {}
    for kind in kinds:
        if kind in MOVED_ZOOS:  # a moved copy of a zoo made above
            from paramgraph.tasks.zoo_move import move_zoo

            source, scale_range = MOVED_ZOOS[kind]
            path = paths[source].with_name(f"{paths[source].name}-moved{scale_range:g}")
            if not path.exists():
                move_zoo(paths[source], path, scale_range, args.zoo_seed, progress=False)
            print(f"zoo {path}: ready", flush=True)
            paths[kind] = path
            continue
        size = args.zoo_sizes[kind]
        path = Path(args.zoos) / f"{kind}-{size}-s{args.zoo_seed}"
        extra = {}
        if kind == "inr":  # views of 16x16 digits, independent initialisations by default
            path = path.with_name(f"{path.name}-{args.inr_init}")
            extra = {"inr_init": args.inr_init}
        t0 = time.time()
        make_zoo(path, kind, size, workers=args.workers, seed=args.zoo_seed, **extra)
        print(f"zoo {path}: ready ({time.time() - t0:.0f} s)", flush=True)
        paths[kind] = path
    return paths


def job_config(job: dict):
    """The ``TrainConfig`` of one run: its method's settings over the defaults the method was
    measured against (``BEFORE_HARD_SIGNS``; ``BEFORE_COMBO`` and ``BEFORE_PRIOR`` on
    generalization columns)."""
    from paramgraph.tasks.train import TrainConfig

    method = METHODS[job["mode"]]
    base = ({"train": BEFORE_COMBO["train"], "model": {**BEFORE_COMBO["model"], **BEFORE_PRIOR}}
            if job["task"] == "generalization" else {})
    return TrainConfig(task=job["task"], zoo=job["zoo"], mode=method["mode"],
                       hidden=job["hidden"], layers=job["layers"], epochs=job["epochs"],
                       seed=job["seed"],
                       model_kwargs={**BEFORE_HARD_SIGNS, **base.get("model", {}),
                                     **method.get("model", {})},
                       **{**base.get("train", {}), **method.get("train", {})})


def _job(job: dict) -> dict:
    """Train (or resume, or skip if finished) one run and evaluate it on the test split."""
    from paramgraph.tasks.train import evaluate_run, train

    run = Path(job["run"])
    done_file = run / "eval-test.json"
    if done_file.is_file():
        ev = json.loads(done_file.read_text())
        summary = json.loads((run / "summary.json").read_text())
        return {**job, "metrics": ev["metrics"], "seconds": summary["seconds"]}
    cfg = job_config(job)
    resume = (run / "config.json").is_file()
    summary = train(None if resume else cfg, run, resume=resume, threads=1, progress=False)
    result = evaluate_run(run, "test", threads=1)
    atomic_write_json(run / "summary.json", summary)
    return {**job, "metrics": result["metrics"], "seconds": summary["seconds"]}


def _baseline(job: dict) -> dict:
    """Fit and score the statistics baseline for one column and seed (one thread)."""
    from threadpoolctl import threadpool_limits

    from paramgraph.tasks.baseline import fit_predict
    from paramgraph.tasks.zoo import Zoo

    path = Path(job["run"])
    if path.is_file():
        return json.loads(path.read_text())
    task = COLUMNS[job["column"]][0]
    with threadpool_limits(1):
        r = fit_predict(task, Zoo(job["zoo"]), "train", "test", seed=job["seed"])
    result = {"column": job["column"], "mode": "baseline", "seed": job["seed"],
              "metrics": r["metrics"], "seconds": r["seconds"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    return result


def _any_job(job: dict) -> dict:
    return _baseline(job) if job["mode"] == "baseline" else _job(job)


def run_all(args, zoos: dict[str, Path]) -> list[dict]:
    """Every run, seed by seed (so that a partial table covers every column)."""
    results, jobs = [], []
    for seed in args.seeds:
        for column in args.columns:
            task, kind, _, _ = COLUMNS[column]
            out = Path(args.runs) / column
            jobs.append({"column": column, "mode": "baseline", "seed": seed, "zoo": str(zoos[kind]),
                         "run": str(out / f"baseline-s{seed}.json")})
            for mode in args.methods:
                jobs.append({"column": column, "task": task, "zoo": str(zoos[kind]),
                             "mode": mode, "seed": seed, "run": str(out / f"{mode}-s{seed}"),
                             "epochs": args.epochs[column], "hidden": args.hidden,
                             "layers": args.layers})
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
        for r in pool.imap_unordered(_any_job, jobs):
            print(f"{r['column']} {r['mode']} s{r['seed']}: {r['metrics']} "
                  f"({r['seconds']:.0f} s)", flush=True)
            results.append(r)
            atomic_write_json(Path(args.runs) / "results.json", results)
    return results


def collect(args) -> list[dict]:
    """Every finished result under the runs root (for --table-only)."""
    results = []
    for column in args.columns:
        out = Path(args.runs) / column
        for seed in args.seeds:
            b = out / f"baseline-s{seed}.json"
            if b.is_file():
                results.append(json.loads(b.read_text()))
            for mode in args.methods:
                run = out / f"{mode}-s{seed}"
                if (run / "eval-test.json").is_file() and (run / "summary.json").is_file():
                    results.append({"column": column, "mode": mode, "seed": seed,
                                    "metrics": json.loads((run / "eval-test.json").read_text())["metrics"],
                                    "seconds": json.loads((run / "summary.json").read_text())["seconds"]})
    return results


def _cell(vals: list[float], metric: str) -> str:
    import numpy as np

    if not vals:
        return "—"
    scale = 100 if metric == "accuracy" else 1
    fmt = "{:.4f}" if metric == "mse" else ("{:.1f}" if scale == 100 else "{:.3f}")
    m, s = np.mean(vals) * scale, np.std(vals) * scale
    return f"{fmt.format(m)} ± {fmt.format(s)} (n={len(vals)})"


HEADERS = {"gen-hetero": "hetero Kendall tau", "gen-cnn": "cnn Kendall tau",
           "gen-cnn-moved": "moved cnn Kendall tau",
           "inr-class": "INR accuracy", "inr-edit": "INR-edit MSE"}


def table(results: list[dict], args) -> str:
    """The results table: a row per method (the baseline first), a column per task column and,
    for generalisation, its R² beside the Kendall tau."""
    import numpy as np

    cols = [c for c in COLUMNS if c in args.columns]
    header = ["method"]
    for c in cols:
        header.append(HEADERS[c])
        if COLUMNS[c][0] == "generalization":
            header.append(HEADERS[c].split()[0] + " R²")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    names = {"baseline": "statistics baseline (HGB)"}
    for mode in ["baseline", *args.methods]:
        cells = [names.get(mode, mode)]
        for c in cols:
            mine = [r for r in results if r["column"] == c and r["mode"] == mode]
            metric = COLUMNS[c][2]
            cells.append(_cell([r["metrics"][metric] for r in mine], metric))
            if COLUMNS[c][0] == "generalization":
                cells.append(_cell([r["metrics"]["r2"] for r in mine], "r2"))
        lines.append("| " + " | ".join(cells) + " |")
    ident = [r["metrics"].get("identity_mse") for r in results
             if r["column"] == "inr-edit" and r["mode"] != "baseline"]
    ident = [v for v in ident if v is not None]
    if ident and "inr-edit" in cols:
        cells = ["no edit (SIREN as it is)"] + ["—"] * (len(header) - 2) + [f"{ident[0]:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    secs = []
    for c in cols:
        for mode in ["baseline", *args.methods]:
            v = [r["seconds"] for r in results if r["column"] == c and r["mode"] == mode]
            if v:
                secs.append(f"{c}/{mode} {np.mean(v):.0f}s")
    return "\n".join(lines) + "\n\nMean time per run (train + validation; baseline: fit + " \
        "predict): " + ", ".join(secs) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    if args.table_only:
        results = collect(args)
    else:
        t0 = time.time()
        zoos = make_zoos(args)
        results = run_all(args, zoos)
        print(f"all runs done in {time.time() - t0:.0f} s", flush=True)
    text = table(results, args)
    import shlex

    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--table-only"]
    cmd = "python scripts/make_report.py " + shlex.join(given)
    sizes = args.zoo_sizes
    report = (f"# Results (mean ± std over seeds {args.seeds})\n\nZoos: hetero "
              f"{sizes['hetero']} and cnn {sizes['cnn']} networks, inr {sizes['inr']} SIRENs; test splits "
              f"by run (15% of the runs). Metanets: hidden {args.hidden}, {args.layers} layers, "
              f"epochs {json.dumps(args.epochs)}.\n\n{text}\nReproduce: `{cmd.strip()}`\n")
    atomic_write_text(Path(args.runs) / "REPORT.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
