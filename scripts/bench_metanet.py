"""Benchmark the metanet: forward+backward throughput and peak memory per mode.

Workloads (hidden 64, 4 layers, invariant head, float32, CPU):

* ``small``: a batch of 64 small-CNN graphs (conv 1->16->16->16, 3x3, ReLU, global average
  pooling, linear to 10 classes; 4,970 parameters, 688 edges each);
* ``large``: a batch of 8 CNN graphs of ~1M parameters each (conv 1->64->128->256->256, 3x3,
  ReLU, pooling, linear; 962,954 parameters, ~109k edges each);
* ``vit``: a batch of 16 small vision transformers of the zoo's family (``tasks/archs.py``:
  width 16, 2 encoder layers, 2 heads, feed-forward 32; 64 attention heads in the batch), where
  ``quasi``'s gauge also runs the attention head section (issue 15). Not in the default run:
  ``--workloads vit``.

For each workload and thread count (1 and 2), one child process builds the batch and times every
mode *interleaved* (perm, strict, quasi, perm, ...) so that a busy machine slows all modes alike;
the reported time is the median of the repeats (wall clock; the process's CPU time is recorded
too, which is steadier on a shared machine). The gauge's share is measured two ways: the
quasi-minus-perm difference relative to perm, and the gauge map's own forward+backward (timed
alone, with a random cotangent on its outputs) relative to perm. Peak memory is measured per mode
in a separate child process: the peak resident set size during the timed steps minus the
resident size just before the first forward of the batch, taken after one step on a single graph
(so it counts activations, gradients and workspace, not the Python runtime, the libraries or the
input graphs). Children run with ``OMP_WAIT_POLICY=PASSIVE`` unless ``--omp-active-wait``: on a
2-core machine shared with other work, spinning OpenMP threads made 2-thread runs 2-5x slower
than 1-thread runs.

Usage::

    .venv/bin/python scripts/bench_metanet.py               # full run, ~10 minutes on 2 cores
    .venv/bin/python scripts/bench_metanet.py --quick       # small workload only, 1 repeat

Writes a table to stdout and JSON to ``bench_results/bench_metanet.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACTIVE_WAIT = False
MODES = ("perm", "strict", "quasi")
WORKLOADS = {
    "small": dict(count=64, channels=(16, 16, 16), pool=None),
    "large": dict(count=8, channels=(64, 128, 256, 256), pool=2),
    "vit": dict(count=16, vit=dict(family="vit", width=16, layers=2, heads=2, ff=32)),
}
DEFAULT_WORKLOADS = ("small", "large")


def _build_batch(workload: str):
    import torch
    from torch import nn
    from torch_geometric.data import Batch

    import paramgraph

    spec = WORKLOADS[workload]
    graphs = []
    if "vit" in spec:
        from paramgraph.tasks.archs import build_model

        for i in range(spec["count"]):
            torch.manual_seed(i)
            graphs.append(paramgraph.from_module(build_model(spec["vit"]).eval(),
                                                 torch.randn(2, 1, 8, 8)))
        return Batch.from_data_list(graphs), graphs
    for i in range(spec["count"]):
        torch.manual_seed(i)
        layers, c_in = [], 1
        for j, c in enumerate(spec["channels"]):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            if spec["pool"] and j == 1:
                layers.append(nn.MaxPool2d(spec["pool"]))
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10)]
        graphs.append(paramgraph.from_module(nn.Sequential(*layers), torch.randn(2, 1, 8, 8)))
    return Batch.from_data_list(graphs), graphs


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _step(net, batch):
    net.zero_grad(set_to_none=True)
    y = net(batch)
    y.square().mean().backward()


def _child_time(workload: str, threads: int, repeats: int, hidden: int, layers: int) -> dict:
    import torch

    from paramgraph import models
    from paramgraph.models.structure import GraphStructure

    torch.set_num_threads(threads)
    batch, graphs = _build_batch(workload)
    nets = {}
    for mode in MODES:
        torch.manual_seed(0)
        nets[mode] = models.MetaNet(mode=mode, hidden=hidden, layers=layers)
    for mode in MODES:  # warm-up
        _step(nets[mode], batch)
    times = {m: [] for m in MODES}
    cpu = {m: [] for m in MODES}
    gauge_times = []
    gauge = nets["quasi"].gauge
    st = GraphStructure.of(batch)  # shared by the gauge and the backbone: not the gauge's cost
    for _ in range(repeats):
        for mode in MODES:
            t0, c0 = time.perf_counter(), time.process_time()
            _step(nets[mode], batch)
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
        t0 = time.perf_counter()
        ev, nv, alpha = gauge(st, batch.edge_value, batch.node_value, batch.node_mask)
        (ev.sum() + nv.sum() + alpha.sum()).backward()
        gauge_times.append(time.perf_counter() - t0)
    edges = int(batch.edge_index.size(1))
    params = sum(g.num_params for g in graphs)
    out = {"workload": workload, "threads": threads, "graphs": len(graphs), "edges": edges,
           "params": params, "repeats": repeats, "modes": {}}
    for mode in MODES:
        t = statistics.median(times[mode])
        out["modes"][mode] = {"seconds": t, "seconds_all": times[mode],
                              "cpu_seconds": statistics.median(cpu[mode]),
                              "graphs_per_s": len(graphs) / t, "edges_per_s": edges / t}
    t_perm = out["modes"]["perm"]["seconds"]
    out["gauge_seconds"] = statistics.median(gauge_times)
    out["gauge_share_of_perm"] = out["gauge_seconds"] / t_perm
    out["quasi_minus_perm_share"] = (out["modes"]["quasi"]["seconds"] - t_perm) / t_perm
    return out


def _child_memory(workload: str, mode: str, hidden: int, layers: int,
                  checkpoint: bool = False) -> dict:
    import torch

    from paramgraph import models

    from torch_geometric.data import Batch

    torch.set_num_threads(1)
    batch, graphs = _build_batch(workload)
    torch.manual_seed(0)
    net = models.MetaNet(mode=mode, hidden=hidden, layers=layers, checkpoint=checkpoint)
    _step(net, Batch.from_data_list(graphs[:1]))  # loads kernels and libraries: not the batch's
    base = _rss_mb()
    _step(net, batch)
    t0 = time.perf_counter()
    _step(net, batch)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"workload": workload, "mode": mode, "checkpoint": checkpoint,
            "peak_mb": peak - base, "seconds_1_thread": seconds}


def _run_child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not ACTIVE_WAIT:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"benchmark child {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small workload, 1 repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS),
                   choices=list(WORKLOADS))
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "bench_results" / "bench_metanet.json"))
    p.add_argument("--omp-active-wait", action="store_true",
                   help="keep OpenMP's default spin-waiting (faster on an idle machine, much "
                        "slower with 2 threads when other processes share the cores)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    global ACTIVE_WAIT
    ACTIVE_WAIT = a.omp_active_wait
    if a.child:
        kind, *rest = a.child
        if kind == "time":
            print(json.dumps(_child_time(rest[0], int(rest[1]), a.repeats, a.hidden, a.layers)))
        else:
            print(json.dumps(_child_memory(rest[0], rest[1], a.hidden, a.layers,
                                           rest[2:] == ["checkpoint"])))
        return
    if a.quick:
        a.workloads, a.repeats = ["small"], 1
    common = ["--repeats", str(a.repeats), "--hidden", str(a.hidden), "--layers", str(a.layers)]
    timing, memory, checkpointed = [], {}, []
    for w in a.workloads:
        for t in a.threads:
            print(f"timing {w} with {t} thread(s) ...", file=sys.stderr, flush=True)
            timing.append(_run_child(["time", w, str(t), *common]))
        for m in MODES:
            print(f"memory {w} {m} ...", file=sys.stderr, flush=True)
            memory[(w, m)] = _run_child(["memory", w, m, *common])["peak_mb"]
        if w == "large":
            print("memory large quasi with checkpointing ...", file=sys.stderr, flush=True)
            checkpointed.append(_run_child(["memory", w, "quasi", "checkpoint", *common]))

    lines = ["| workload | graphs | edges | threads | mode | fwd+bwd s | CPU s | graphs/s | "
             "edges/s | peak MB | gauge share |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in timing:
        for m in MODES:
            d = r["modes"][m]
            share = (f"{100 * r['gauge_share_of_perm']:.1f}% (diff "
                     f"{100 * r['quasi_minus_perm_share']:+.1f}%)") if m == "quasi" else ""
            lines.append(f"| {r['workload']} | {r['graphs']} | {r['edges']:,} | {r['threads']} | "
                         f"{m} | {d['seconds']:.3f} | {d['cpu_seconds']:.3f} | "
                         f"{d['graphs_per_s']:.1f} | {d['edges_per_s']:,.0f} | "
                         f"{memory[(r['workload'], m)]:.0f} | {share} |")
    for c in checkpointed:
        lines.append(f"| {c['workload']} | | | 1 | quasi, checkpoint=True | "
                     f"{c['seconds_1_thread']:.3f} | | | | {c['peak_mb']:.0f} | |")
    table = "\n".join(lines)
    print(table)
    result = {
        "hidden": a.hidden, "layers": a.layers, "repeats": a.repeats,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "timing": timing,
        "peak_memory_mb": [{"workload": w, "mode": m, "peak_mb": v}
                           for (w, m), v in memory.items()],
        "checkpointed": checkpointed,
        "load_average": os.getloadavg(),
        "omp_wait_policy": "default (active)" if ACTIVE_WAIT else "PASSIVE",
        "table": table,
    }
    try:
        import torch
        result["machine"]["torch"] = torch.__version__
    except ImportError:
        pass
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
