"""Training throughput with 1 and N processes (torch.distributed, gloo on CPU / nccl on GPU).

Makes (or reuses) a small hetero zoo, builds its graph cache once, then trains the same run
(generalisation, quasi metanet, same seed and global batch) started by ``torchrun`` with 1 and
with N processes, each process on ``--threads`` torch threads, plus one process on N threads for
reference. Reports training graphs per second (graphs / seconds spent in the training steps,
summed over epochs; validation excluded), the mean epoch wall time (validation included) and the
final validation Kendall tau, which must agree between rows (same global batch and seed).

    python scripts/bench_train.py --size 96 --procs 2 --epochs 3

prints a table and writes ``bench_results/bench_train.json``. ``--device cuda`` measures the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child(args) -> None:
    """One training process (started by torchrun): train, and rank 0 writes the summary."""
    from paramgraph.tasks.train import TrainConfig, train

    cfg = TrainConfig(task="generalization", zoo=str(args.zoo_dir), mode=args.mode,
                      hidden=args.hidden, layers=args.layers, epochs=args.epochs,
                      batch_size=args.batch_size, seed=0)
    summary = train(cfg, args.run_dir, threads=args.threads, progress=False, device=args.device,
                    workers=args.workers)
    if int(os.environ.get("RANK", "0")) == 0:
        history = json.loads((Path(args.run_dir) / "metrics.json").read_text())
        summary["epoch_seconds"] = [h["seconds"] for h in history]
        summary["val_kendall_tau"] = history[-1]["val_kendall_tau"]
        summary["train_loss"] = history[-1]["train_loss"]
        Path(args.summary_file).write_text(json.dumps(summary))


def measure(args, procs: int, threads: int, tag: str) -> dict:
    run = args.dir / f"run-{tag}"
    shutil.rmtree(run, ignore_errors=True)
    summary = args.dir / f"summary-{tag}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
           "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           __file__, "--child", "--zoo-dir", str(args.zoo_dir), "--run-dir", str(run),
           "--summary-file", str(summary), "--threads", str(threads), "--device", args.device,
           "--workers", str(args.workers), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--mode", args.mode]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=not args.verbose)
    wall = time.perf_counter() - start
    out = json.loads(summary.read_text())
    epochs = out["epoch_seconds"]
    return {"processes": procs, "threads_per_process": threads, "device": out["device"],
            "graphs_per_s": out["graphs_per_s"], "epoch_seconds_mean": sum(epochs) / len(epochs),
            "epoch_seconds": epochs, "val_kendall_tau": out["val_kendall_tau"],
            "train_loss": out["train_loss"], "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="hetero zoo size (default 96)")
    parser.add_argument("--procs", type=int, default=2, help="processes to compare with 1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (default 16)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--mode", default="quasi")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", type=Path, default=ROOT / ".cache" / "bench_train")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "bench_train.json")
    parser.add_argument("--verbose", action="store_true", help="show the runs' output")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--zoo-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--summary-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from paramgraph.tasks.data import load_graphs
    from paramgraph.tasks.zoo import make_zoo

    args.dir.mkdir(parents=True, exist_ok=True)
    args.zoo_dir = args.dir / f"zoo-hetero-{args.size}"
    zoo = make_zoo(args.zoo_dir, "hetero", args.size, seed=0, workers=2)
    cache = load_graphs(zoo)  # built once here, not inside a timed run
    edges = cache.edge_counts()
    rows = [measure(args, 1, args.threads, "1p"),
            measure(args, args.procs, args.threads, f"{args.procs}p"),
            measure(args, 1, args.threads * args.procs, f"1p{args.procs}t")]
    train_n = len(zoo.split("train"))
    print(f"\nhetero zoo of {len(zoo)} networks ({train_n} training graphs, edges per graph "
          f"{min(edges)}-{max(edges)}); {args.mode} metanet hidden {args.hidden}, "
          f"{args.layers} layers; global batch {args.batch_size}; {args.epochs} epochs; "
          f"{os.cpu_count()} CPU cores")
    print(f"{'processes':>9} {'threads':>7} {'device':>6} {'graphs/s':>9} {'epoch s':>8} "
          f"{'speed-up':>8} {'val tau':>8}")
    base = rows[0]["graphs_per_s"]
    for r in rows:
        print(f"{r['processes']:>9} {r['threads_per_process']:>7} {r['device']:>6} "
              f"{r['graphs_per_s']:>9.1f} {r['epoch_seconds_mean']:>8.2f} "
              f"{r['graphs_per_s'] / base:>8.2f} {r['val_kendall_tau']:>8.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"zoo_size": len(zoo), "train_graphs": train_n, "batch_size": args.batch_size,
              "epochs": args.epochs, "mode": args.mode, "hidden": args.hidden,
              "layers": args.layers, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
