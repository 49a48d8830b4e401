#!/usr/bin/env python
"""Conversion benchmark: parameters per second to a graph and back, and peak memory.

Networks (scripts/bench_models.py): a ResNet-18 (11.7M parameters), a ViT-S-sized transformer
(22.0M) and a wide MLP (25.1M). Each runs in a fresh subprocess on ONE thread
(``torch.set_num_threads(1)``), with a small example input (batch 1-2, 32x32 images).

Timing: ``paramgraph.from_module(model, x)`` (tracing, shape pass, graph construction and the
symmetry analysis) and ``paramgraph.to_state_dict(graph)``; the first call in the process is
reported as ``cold`` (it pays for the process's first touch of that much memory), then the median
and best of ``--repeats`` further calls. Throughput = converted parameter and buffer values
(``num_batches_tracked`` excluded) / seconds. Targets are judged on the median.

Peak memory: the subprocess reads its resident set size from ``/proc/self/status``. Before each
measured call it resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) and
reads ``VmRSS``; after the call ``VmHWM - VmRSS_before`` is the most extra memory the call held
at any moment, its result included (the graph, or the state_dict). The model itself and the
interpreter are outside the measurement. (tracemalloc does not see torch's allocations; the
high-water mark of the whole process, ``ru_maxrss``, cannot be reset, which is why the kernel's
resettable one is used; where it is unavailable the script falls back to ``ru_maxrss`` and says so.)
The memory target: peak <= 3 x the parameters' bytes + the graph's index bytes (every graph
tensor except ``edge_value`` and ``node_value``: ``edge_index``, ``edge_type``, ``edge_size``,
node fields, masks).

Usage::

    python scripts/bench_convert.py [--models resnet18 vit_small wide_mlp] [--repeats 5]
                                    [--out bench_results/bench_convert.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TARGET_TO_GRAPH = 50e6  # parameters / s
TARGET_BACK = 200e6  # parameters / s
TARGET_MEMORY_FACTOR = 3.0  # x parameter bytes, plus index bytes


# -- memory ------------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Extra resident memory (bytes) held at the peak of a ``with`` block."""

    def __enter__(self):
        gc.collect()
        self.resettable = _reset_peak() and _status_kib("VmHWM") is not None
        if self.resettable:
            self.before = _status_kib("VmRSS") * 1024
        else:  # ru_maxrss (KiB on Linux) cannot be reset: only growth past it is seen
            self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        if self.resettable:
            peak = _status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max(0, peak - self.before)
        self.method = "VmHWM after clear_refs" if self.resettable else "ru_maxrss growth"
        return False


# -- one case, in its own process --------------------------------------------------------------------------

def run_case(name: str, repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import bench_models

    import paramgraph as pg

    # warm up imports and torch.fx on a tiny network, so the cold call measures the conversion
    pg.to_state_dict(pg.from_module(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                                                        torch.nn.Linear(4, 2)), torch.randn(1, 3)))
    model, x = bench_models.ALL_MODELS[name]()
    reference = {k: v for k, v in model.state_dict().items()
                 if not k.endswith("num_batches_tracked")}
    n_params = sum(t.numel() for t in reference.values())
    param_bytes = sum(t.numel() * t.element_size() for t in reference.values())

    with PeakMemory() as mem_graph:
        t0 = time.perf_counter()
        graph = pg.from_module(model, x)
        cold_graph = time.perf_counter() - t0
    with PeakMemory() as mem_back:
        t0 = time.perf_counter()
        state = pg.to_state_dict(graph)
        cold_back = time.perf_counter() - t0

    exact = list(state) == list(reference) and all(
        state[k].dtype == reference[k].dtype and torch.equal(state[k], reference[k])
        for k in reference)
    value_keys = {"edge_value", "node_value"}
    index_bytes = sum(v.numel() * v.element_size() for k, v in graph.items()
                      if isinstance(v, torch.Tensor) and k not in value_keys)
    value_bytes = sum(getattr(graph, k).numel() * getattr(graph, k).element_size()
                      for k in value_keys)
    nodes, edges = graph.num_nodes, graph.edge_index.size(1)
    del state, graph

    to_graph, back = [], []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        graph = pg.from_module(model, x)
        to_graph.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        state = pg.to_state_dict(graph)
        back.append(time.perf_counter() - t0)
        del graph, state

    limit = TARGET_MEMORY_FACTOR * param_bytes + index_bytes
    med_graph, med_back = statistics.median(to_graph), statistics.median(back)
    return {
        "model": name,
        "params": n_params,
        "param_bytes": param_bytes,
        "nodes": nodes,
        "edges": edges,
        "index_bytes": index_bytes,
        "value_bytes": value_bytes,
        "input_shape": list(x.shape),
        "round_trip_exact": exact,
        "to_graph_seconds": {"cold": cold_graph, "median": med_graph, "best": min(to_graph),
                             "all": to_graph},
        "to_state_dict_seconds": {"cold": cold_back, "median": med_back, "best": min(back),
                                  "all": back},
        "to_graph_params_per_s": {"cold": n_params / cold_graph, "median": n_params / med_graph,
                                  "best": n_params / min(to_graph)},
        "to_state_dict_params_per_s": {"cold": n_params / cold_back, "median": n_params / med_back,
                                       "best": n_params / min(back)},
        "peak_bytes_to_graph": mem_graph.peak,
        "peak_bytes_to_state_dict": mem_back.peak,
        "memory_limit_bytes": limit,
        "memory_method": mem_graph.method,
        "targets": {
            "to_graph": n_params / med_graph >= TARGET_TO_GRAPH,
            "to_state_dict": n_params / med_back >= TARGET_BACK,
            "memory": mem_graph.peak <= limit,
        },
        "threads": torch.get_num_threads(),
    }


# -- driver ------------------------------------------------------------------------------------------------

def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def _rate(r: float) -> str:
    return f"{r / 1e6:,.0f}"


def table(results: list[dict]) -> str:
    head = ("| network | params | nodes | edges | to graph M/s (median / cold) | back M/s "
            "(median / cold) | peak MiB to graph / back | limit MiB | targets |")
    rule = "|" + "---|" * 9
    rows = [head, rule]
    for r in results:
        t = r["targets"]
        met = ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in t.items())
        rows.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['nodes']:,} | {r['edges']:,} | "
            f"{_rate(r['to_graph_params_per_s']['median'])} / "
            f"{_rate(r['to_graph_params_per_s']['cold'])} | "
            f"{_rate(r['to_state_dict_params_per_s']['median'])} / "
            f"{_rate(r['to_state_dict_params_per_s']['cold'])} | "
            f"{_mb(r['peak_bytes_to_graph'])} / {_mb(r['peak_bytes_to_state_dict'])} | "
            f"{_mb(r['memory_limit_bytes'])} | {met} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    import bench_models  # noqa: F401  (fail early if the models do not import)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(bench_models.MODELS),
                        choices=list(bench_models.ALL_MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "bench_convert.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_case(args.worker, args.repeats)))
        return 0

    results = []
    for name in args.models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--repeats",
                               str(args.repeats)], capture_output=True, text=True, env=env,
                              cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            print(f"bench_convert: case '{name}' failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    import torch

    report = {
        "benchmark": "paramgraph conversion (from_module) and inverse (to_state_dict)",
        "threads": 1,
        "repeats": args.repeats,
        "targets": {"to_graph_params_per_s": TARGET_TO_GRAPH,
                    "to_state_dict_params_per_s": TARGET_BACK,
                    "peak_memory": f"<= {TARGET_MEMORY_FACTOR} x parameter bytes + index bytes"},
        "memory_method": "fresh subprocess per network; extra resident memory at the peak of the "
                         "call: /proc/self/status VmHWM after resetting it through "
                         "/proc/self/clear_refs, minus VmRSS before the call",
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine(), "cpus": os.cpu_count(),
                        "platform": platform.platform()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)  # atomic

    print(table(results))
    all_met = all(all(r["targets"].values()) and r["round_trip_exact"] for r in results)
    print(f"\nround trip bit-exact: {all(r['round_trip_exact'] for r in results)}; "
          f"all targets met: {all_met}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
