"""The demo (``make demo`` = ``python -m paramgraph.tasks.demo``): the whole story on a small zoo.

1. Make a small heterogeneous zoo of digit classifiers (MLPs, CNNs, ViTs; cached under
   ``.cache/demo/`` after the first run, so later runs skip this step).
2. Fit the statistics baseline (per-tensor weight statistics + gradient boosting).
3. Train quasi, strict and perm metanets to predict each network's test accuracy (two at a time,
   one thread each).
4. Print one table: test Kendall tau, R² and time per method, and draw predicted against true
   accuracy for every method into one PNG.

It is sized to finish in well under 10 minutes on 2 CPU cores, zoo included. The numbers come
from a small zoo and short training: they show the pipeline working, not the best each method
can do (see ``scripts/make_report.py`` for the full-size table).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

DEMO_SIZE = 400  # networks: 100 training runs x 4 checkpoints
DEMO_EPOCHS = 10
DEMO_SEED = 0
MODES = ("quasi", "strict", "perm")
METANET = dict(hidden=32, layers=3, batch_size=32, lr=2e-3)


def _train_job(job: tuple[str, str, str, int, int]) -> dict:
    """Train and evaluate one metanet (in a worker process, one thread)."""
    mode, zoo_dir, run_dir, epochs, seed = job
    from .train import TrainConfig, evaluate_run, train

    t0 = time.time()
    cfg = TrainConfig(task="generalization", zoo=zoo_dir, mode=mode, epochs=epochs, seed=seed,
                      **METANET)
    train(cfg, run_dir, threads=1, progress=False)
    result = evaluate_run(run_dir, "test", threads=1)
    return {"method": mode, **result["metrics"], "seconds": time.time() - t0, "run": run_dir}


def _count_epochs(run_dirs: list[Path]) -> int:
    import json

    done = 0
    for run in run_dirs:
        try:
            done += len(json.loads((run / "metrics.json").read_text()))
        except (OSError, ValueError):
            pass
    return done


def _train_all(zoo_dir: Path, out: Path, epochs: int, seed: int, workers: int) -> list[dict]:
    from tqdm import tqdm

    jobs, runs = [], []
    for mode in MODES:
        run = out / mode
        if run.exists():
            shutil.rmtree(run)  # the demo's own output from an earlier demo
        jobs.append((mode, str(zoo_dir), str(run), epochs, seed))
        runs.append(run)
    bar = tqdm(total=epochs * len(jobs), desc="train quasi/strict/perm", unit="epoch")
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

    panels = [("statistics baseline", baseline["true"], baseline["pred"],
               baseline["metrics"])]
    for r in results:
        ev = json.loads((Path(r["run"]) / "eval-test.json").read_text())
        panels.append((r["method"], ev["true"], ev["pred"], ev["metrics"]))
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


def format_table(rows: list[dict]) -> str:
    """The demo's table: method | test Kendall tau | R² | time."""
    lines = [f"{'method':<22} {'test Kendall tau':>16} {'R²':>8} {'time':>9}",
             "-" * 58]
    for r in rows:
        lines.append(f"{r['method']:<22} {r['kendall_tau']:>16.3f} {r['r2']:>8.3f} "
                     f"{r['seconds']:>8.1f}s")
    return "\n".join(lines)


def run_demo(size: int = DEMO_SIZE, epochs: int = DEMO_EPOCHS, out: str = "runs/demo",
             zoo_dir: str | None = None, workers: int = 2, seed: int = DEMO_SEED) -> list[dict]:
    """Run the demo (see the module docstring); prints the table and returns its rows."""
    from .baseline import fit_predict
    from .data import load_graphs
    from .zoo import make_zoo, zoo_summary_text

    start = time.time()
    zoo_path = Path(zoo_dir or f".cache/demo/zoo-hetero-{size}-s{seed}")
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] zoo: {zoo_path} ({'cached' if (zoo_path / 'metadata.jsonl').is_file() else 'making it now'})",
          flush=True)
    t0 = time.time()
    zoo = make_zoo(zoo_path, "hetero", size, workers=workers, seed=seed)
    zoo_seconds = time.time() - t0
    print(zoo_summary_text(zoo), flush=True)
    load_graphs(zoo)  # convert once here, so the training processes share the cache

    print("[2/4] statistics baseline (per-tensor weight statistics + gradient boosting)",
          flush=True)
    base = fit_predict("generalization", zoo, "train", "test", seed=seed)
    base_row = {"method": "statistics baseline", **base["metrics"], "seconds": base["seconds"]}

    print(f"[3/4] metanets: {epochs} epochs each, hidden {METANET['hidden']}, "
          f"{METANET['layers']} layers, {len(zoo.split('train'))} training networks", flush=True)
    results = _train_all(zoo_path, out_path, epochs, seed, workers)

    print("[4/4] results on the test networks", flush=True)
    png = _plot(results, base, out_path / "demo.png")
    rows = [base_row] + results
    n_test = len(zoo.split("test"))
    print()
    print(f"Generalisation prediction on a hetero digits zoo ({len(zoo)} networks; "
          f"{n_test} test networks from unseen training runs)")
    print(format_table(rows))
    print()
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
