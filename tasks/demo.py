"""The demo (``make demo`` = ``paramgraph demo``): the whole story on a small zoo.

1. Make a small zoo of digit classifiers: one small CNN trained again and again with random
   hyperparameters (ReLU or tanh, optimiser, learning rate, weight decay, initial scale, ...),
   several checkpoints per run (cached under ``.cache/demo/`` after the first run).
2. Train quasi, perm and strict metanets (two at a time, one thread each) to predict, from a
   network's weights alone, its accuracy on held-out digits; fit the statistics baseline.
3. Print one table, quasi first, scored on networks from training runs the metanets never saw:
   Kendall tau (how well the predicted order of the networks matches the true order: 1 is
   perfect, 0 is chance) and R² (the share of the accuracies' variance the predictions
   explain: 1 is perfect, 0 is no better than predicting the mean); and draw predicted against
   true accuracy for every method into one PNG.
4. Score the same trained methods once more on the same test networks moved along their orbits
   (:mod:`paramgraph.tasks.zoo_move`: every network rescaled, sign-flipped and permuted so that
   it computes exactly what it computed): what the learned gauge's exact invariance is for.

Sized to finish within 8 minutes on 2 CPU cores, zoo included (measured: 6 min 14 s on an
earlier machine with two other training runs on the same cores; 1 min 20 s on an idle 2-core
machine of this release, with the generalization task's new training defaults). One seed on a
small zoo: the
numbers show the pipeline working and vary by a few hundredths between seeds; the README's
results table (``scripts/make_report.py``) has the 3-seed comparison on full-size zoos.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

DEMO_KIND = "cnn"
DEMO_SIZE = 400  # networks: 100 training runs x 4 checkpoints
DEMO_EPOCHS = 15
DEMO_SEED = 0
MODES = ("quasi", "perm", "strict")
MOVE_RANGE = 4.0  # the moved test networks: scales log-uniform in [1/4, 4]
METANET = dict(hidden=32, layers=3, batch_size=32, lr=2e-3)


def _train_job(job: tuple[str, str, str, int, int, str]) -> dict:
    """Train and evaluate one metanet (in a worker process, one thread), on its zoo's test
    networks and on the same networks moved (``moved_zoo``)."""
    mode, zoo_dir, run_dir, epochs, seed, moved_zoo = job
    from .train import TrainConfig, evaluate_run, train

    t0 = time.time()
    cfg = TrainConfig(task="generalization", zoo=zoo_dir, mode=mode, epochs=epochs, seed=seed,
                      **METANET)
    train(cfg, run_dir, threads=1, progress=False)
    result = evaluate_run(run_dir, "test", threads=1)
    seconds = time.time() - t0
    moved = evaluate_run(run_dir, "test", threads=1, zoo=moved_zoo)
    alone = result.get("prior_only", {}).get("kendall_tau")
    return {"method": mode, **result["metrics"], "seconds": seconds, "run": run_dir,
            "trees_alone": alone, "moved_tau": moved["metrics"]["kendall_tau"]}


def _recipe() -> str:
    """The generalization task's training defaults, as the demo's runs use them."""
    from .objectives import get_objective

    task = get_objective("generalization")
    settings = {**task.training_settings("quasi"), **task.model_defaults("quasi")}
    return ", ".join(f"{RECIPE_WORDS.get(name, name)} {value:g}" if not isinstance(value, bool)
                     else RECIPE_WORDS.get(name, name) + ("" if value else " off")
                     for name, value in settings.items())


RECIPE_WORDS = {"weight_decay": "weight decay", "ema": "weight average", "rank_loss": "rank term",
                "output_readout": "output readout", "prior": "tree prior"}


def _count_epochs(run_dirs: list[Path]) -> int:
    import json

    done = 0
    for run in run_dirs:
        try:
            done += len(json.loads((run / "metrics.json").read_text()))
        except (OSError, ValueError):
            pass
    return done


def _train_all(zoo_dir: Path, out: Path, epochs: int, seed: int, workers: int,
               moved_zoo: Path) -> list[dict]:
    from tqdm import tqdm

    jobs, runs = [], []
    for mode in MODES:
        run = out / mode
        if run.exists():
            shutil.rmtree(run)  # the demo's own output from an earlier demo
        jobs.append((mode, str(zoo_dir), str(run), epochs, seed, str(moved_zoo)))
        runs.append(run)
    bar = tqdm(total=epochs * len(jobs), desc="train " + "/".join(MODES), unit="epoch")
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(min(workers, len(jobs))) as pool:
        pending = pool.map_async(_train_job, jobs)
        while not pending.ready():
            pending.wait(1.0)
            bar.n = _count_epochs(runs)
            bar.refresh()
        results = pending.get()
    bar.n = _count_epochs(runs)
    bar.close()
    return results


def _plot(results: list[dict], baseline: dict, path: Path) -> Path:
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .train import save_figure

    panels = []
    for r in results:  # quasi first, the baseline last, as in the table
        ev = json.loads((Path(r["run"]) / "eval-test.json").read_text())
        panels.append((r["method"], ev["true"], ev["pred"], ev["metrics"]))
    panels.append(("statistics baseline", baseline["true"], baseline["pred"],
                   baseline["metrics"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), sharey=True)
    for ax, (name, true, pred, m) in zip(axes, panels):
        ax.scatter(true, pred, s=10, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="grey", lw=1)
        ax.set(title=f"{name}\ntau {m['kendall_tau']:.3f}  R2 {m['r2']:.3f}",
               xlabel="true test accuracy", xlim=(0, 1.02), ylim=(-0.05, 1.1))
    axes[0].set_ylabel("predicted test accuracy")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


DESCRIPTIONS = {
    "quasi": "learned gauge, exactly invariant",
    "perm": "plain graph metanet",
    "strict": "scale/sign-equivariant layers",
    "statistics baseline": "gradient boosting on weight stats",
}


def format_table(rows: list[dict]) -> str:
    """The demo's table: method | what it is | test Kendall tau | R² | Kendall tau on the moved
    test networks | time."""
    lines = [f"{'method':<20} {'':<34} {'Kendall tau':>11} {'R²':>7} {'moved':>7} {'time':>8}",
             "-" * 92]
    for r in rows:
        moved = f"{r['moved_tau']:>7.3f}" if r.get("moved_tau") is not None else f"{'-':>7}"
        lines.append(f"{r['method']:<20} {DESCRIPTIONS.get(r['method'], ''):<34} "
                     f"{r['kendall_tau']:>11.3f} {r['r2']:>7.3f} {moved} {r['seconds']:>7.0f}s")
    return "\n".join(lines)


def moved_note(rows: list[dict]) -> str:
    """What moving the test networks along their orbits did to each method's ranking."""
    changes = ", ".join(f"{r['method']} {r['moved_tau'] - r['kendall_tau']:+.3f}" for r in rows
                        if r.get("moved_tau") is not None)
    return (f"moved: the same test networks, each rescaled (neuron scales in [1/{MOVE_RANGE:g}, "
            f"{MOVE_RANGE:g}]), sign-flipped and\npermuted so that it computes exactly what it "
            "computed, as networks from other training recipes\nwould be. Kendall tau change: "
            f"{changes}.\nquasi and strict are exactly invariant; perm and the baseline read "
            "where a network sits in its orbit.")


def verdict(rows: list[dict]) -> str:
    """One honest sentence: which method ranks the test networks best, and by how much."""
    ranked = sorted(rows, key=lambda r: r["kendall_tau"], reverse=True)
    best, second = ranked[0], ranked[1]
    quasi = next(r for r in rows if r["method"] == "quasi")
    if best is quasi:
        return (f"quasi ranks the test networks best: Kendall tau {quasi['kendall_tau']:.3f}, "
                f"{quasi['kendall_tau'] - second['kendall_tau']:+.3f} over {second['method']}.")
    return (f"{best['method']} ranks the test networks best here (Kendall tau "
            f"{best['kendall_tau']:.3f}); quasi is {quasi['kendall_tau'] - best['kendall_tau']:+.3f} "
            f"behind it. One seed on a small zoo: see the README's 3-seed table.")


def prior_note(results: list[dict]) -> str:
    """What the metanets' tree prior scores alone (empty where the runs had none)."""
    alone = [f"{r['method']} {r['trees_alone']:.3f}" for r in results
             if r.get("trees_alone") is not None]
    if not alone:
        return ""
    return ("Each metanet corrects gradient-boosted trees on weight statistics fitted on its "
            "training networks\n(the tree prior; quasi's and strict's read the canonical "
            "network, so they stay exactly invariant).\nThe trees alone, Kendall tau: "
            + ", ".join(alone) + ".")


def run_demo(size: int = DEMO_SIZE, epochs: int = DEMO_EPOCHS, out: str = "runs/demo",
             zoo_dir: str | None = None, workers: int = 2, seed: int = DEMO_SEED) -> list[dict]:
    """Run the demo (see the module docstring); prints the table and returns its rows."""
    from .baseline import fit_predict
    from .data import load_graphs
    from .zoo import Zoo, make_zoo, zoo_summary_text
    from .threads import threads as thread_count
    from .zoo_move import move_zoo

    start = time.time()
    zoo_path = Path(zoo_dir or f".cache/demo/zoo-{DEMO_KIND}-{size}-s{seed}")
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    print(f"[1/3] zoo: {zoo_path} ({'cached' if (zoo_path / 'metadata.jsonl').is_file() else 'making it now'})",
          flush=True)
    t0 = time.time()
    zoo = make_zoo(zoo_path, DEMO_KIND, size, workers=workers, seed=seed)
    zoo_seconds = time.time() - t0
    print(zoo_summary_text(zoo), flush=True)
    load_graphs(zoo)  # convert once here, so the training processes share the cache
    moved_path = zoo_path.with_name(f"{zoo_path.name}-moved{MOVE_RANGE:g}")
    # one thread before the workers fork: a thread team started here would hang their OpenMP
    with thread_count(1):
        moved = (Zoo(moved_path) if (moved_path / "zoo.json").is_file()
                 else move_zoo(zoo_path, moved_path, MOVE_RANGE, seed, progress=False))
        load_graphs(moved, progress=False)

    print(f"[2/3] metanets: {epochs} epochs each, hidden {METANET['hidden']}, "
          f"{METANET['layers']} rounds, {len(zoo.split('train'))} training networks, the "
          f"task's defaults ({_recipe()}); and the statistics baseline", flush=True)
    results = _train_all(zoo_path, out_path, epochs, seed, workers, moved_path)
    base = fit_predict("generalization", zoo, "train", "test", seed=seed)
    base_moved = fit_predict("generalization", zoo, "train", "test", seed=seed, eval_zoo=moved)
    base_row = {"method": "statistics baseline", **base["metrics"], "seconds": base["seconds"],
                "moved_tau": base_moved["metrics"]["kendall_tau"]}

    print("[3/3] results on the test networks", flush=True)
    png = _plot(results, base, out_path / "demo.png")
    rows = results + [base_row]
    n_test = len(zoo.split("test"))
    print()
    print(f"Each method reads only the weights of a digit classifier and predicts its accuracy "
          f"on held-out digits.\nScored on {n_test} networks from {n_test // 4} training runs "
          f"that no method saw ({len(zoo)} networks in the zoo).")
    print("Kendall tau: agreement of the predicted and true order of the networks (1 perfect, "
          "0 chance).\nR²: share of the accuracies' variance explained (1 perfect, 0 = "
          "always predicting the mean).\n")
    print(format_table(rows))
    print()
    print(verdict(rows))
    print(moved_note(rows))
    print(prior_note(results))
    print(f"plot: {png}")
    print(f"runs: {', '.join(r['run'] for r in results)} (paramgraph plot RUN for curves)")
    print(f"zoo {'made' if zoo_seconds > 5 else 'reused'} in {zoo_seconds:.0f} s; "
          f"demo wall time {time.time() - start:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m paramgraph.tasks.demo``: run the demo; errors print one line and exit 2."""
    from paramgraph.errors import ParamGraphError

    try:
        run_demo()
    except ParamGraphError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
