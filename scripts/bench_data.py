"""Reading zoos larger than memory: the sharded graph store against raw checkpoint files.

Builds a synthetic zoo of ``--size`` small CNNs (the Small-CNN-Zoo architecture, ~5k parameters,
random weights: only the I/O is measured), as one safetensors file per network, converts it once
into a :class:`paramgraph.store.GraphStore`, then reads every graph back through a PyTorch
DataLoader with ``--workers`` worker processes, twice per source (the first ``--size // 10``
graphs, then all of them) so that you can see whether memory grows with the zoo.

Each read runs in a fresh subprocess; its peak resident memory is ``ru_maxrss`` of that process
and, separately, the largest of its DataLoader workers (``RUSAGE_CHILDREN``).

    python scripts/bench_data.py --size 100000 --workers 2

prints a table and writes ``bench_results/bench_data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILES_PER_DIR = 1000


def _template():
    import torch

    import paramgraph as pg
    from paramgraph.tasks.archs import build_model, example_input
    from paramgraph.tasks.zoo import SMALL_CNN

    spec = {**SMALL_CNN, "act": "relu"}
    return pg.from_module(build_model(spec).eval(), example_input(spec)), build_model(spec), torch


def _raw_path(root: Path, i: int) -> Path:
    return root / "raw" / f"{i // FILES_PER_DIR:04d}" / f"{i:06d}.safetensors"


def make_raw(root: Path, size: int) -> float:
    """Write ``size`` random-weight checkpoints (skipping those already there); returns seconds."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    _, model, torch = _template()
    shapes = {k: v.shape for k, v in model.state_dict().items() if "num_batches" not in k}
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for i in tqdm(range(size), desc="raw zoo", mininterval=2):
        path = _raw_path(root, i)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        gen.manual_seed(i)
        state = {k: torch.randn(s, generator=gen) * 0.3 for k, s in shapes.items()}
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)
    return time.perf_counter() - start


def make_store(root: Path, size: int) -> float:
    """Convert the raw zoo into a graph store (once); returns seconds."""
    from safetensors.torch import load_file
    from tqdm import tqdm

    import paramgraph as pg
    from paramgraph.store import write_store

    store = root / f"store-{size}"
    if (store / "index.json").exists():
        return 0.0
    template, _, _ = _template()
    start = time.perf_counter()
    graphs = (pg.from_state_dict(template, load_file(str(_raw_path(root, i))))
              for i in tqdm(range(size), desc="graph store", mininterval=2))
    write_store(graphs, store, shard_size=1024)
    return time.perf_counter() - start


class _RawDataset:
    def __init__(self, root: Path, n: int):
        self.root, self.n, self.template = root, n, None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from safetensors.torch import load_file

        import paramgraph as pg

        if self.template is None:  # traced once per worker process
            self.template = _template()[0]
        return pg.from_state_dict(self.template, load_file(str(_raw_path(self.root, i))))


class _StoreSubset:
    def __init__(self, store, n: int):
        self.store, self.n = store, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.store[i]


def read_once(root: Path, source: str, n: int, size: int, workers: int) -> dict:
    """Read ``n`` graphs from ``source`` through a DataLoader (run in a subprocess)."""
    import torch
    from torch.utils.data import DataLoader
    from torch_geometric.data import Batch

    from paramgraph.store import GraphStore

    torch.set_num_threads(1)
    data = _StoreSubset(GraphStore(root / f"store-{size}"), n) if source == "store" \
        else _RawDataset(root, n)
    loader = DataLoader(data, batch_size=64, num_workers=workers, collate_fn=Batch.from_data_list,
                        persistent_workers=False)
    start, graphs, edges = time.perf_counter(), 0, 0
    for batch in loader:
        graphs += batch.num_graphs
        edges += batch.edge_index.shape[1]
    seconds = time.perf_counter() - start
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    return {
        "source": source, "graphs": graphs, "seconds": seconds, "graphs_per_s": graphs / seconds,
        "edges": edges, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib,
        "peak_worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=ROOT / ".cache" / "bench_data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "bench_data.json")
    parser.add_argument("--read", nargs=2, metavar=("SOURCE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.read:  # child mode: one measured read
        print(json.dumps(read_once(args.dir, args.read[0], int(args.read[1]), args.size,
                                   args.workers)))
        return

    args.dir.mkdir(parents=True, exist_ok=True)
    build = {"raw_seconds": make_raw(args.dir, args.size),
             "store_seconds": make_store(args.dir, args.size)}
    store_bytes = sum(p.stat().st_size for p in (args.dir / f"store-{args.size}").iterdir())
    rows = []
    for source in ("store", "raw"):
        for n in (max(1, args.size // 10), args.size):
            out = subprocess.run(
                [sys.executable, __file__, "--size", str(args.size), "--workers", str(args.workers),
                 "--dir", str(args.dir), "--read", source, str(n)],
                check=True, capture_output=True, text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nzoo of {args.size} small CNNs; store {store_bytes / 2**20:.0f} MiB; "
          f"DataLoader workers={args.workers}, batch 64, one thread each")
    print(f"{'source':8} {'graphs':>8} {'graphs/s':>10} {'main RSS MiB':>13} {'worker RSS MiB':>15}")
    for r in rows:
        print(f"{r['source']:8} {r['graphs']:>8} {r['graphs_per_s']:>10.0f} "
              f"{r['peak_rss_mib']:>13.0f} {r['peak_worker_rss_mib']:>15.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"size": args.size, "workers": args.workers, "store_bytes": store_bytes, **build,
              "reads": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
