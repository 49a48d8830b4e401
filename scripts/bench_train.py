"""Training throughput with 1 and N processes (torch.distributed, gloo on CPU / nccl on GPU).

Makes (or reuses) a small hetero zoo, builds its graph cache once, then trains the same run
(generalisation, quasi metanet, same seed and global batch) started by ``torchrun`` with 1 and
with N processes, each process on ``--threads`` torch threads, plus one process on N threads for
reference. Reports training graphs per second (graphs / seconds spent in the training steps,
summed over epochs; validation excluded), the mean epoch wall time (validation included) and the
final validation Kendall tau, which must agree between rows (same global batch and seed).

    python scripts/bench_train.py --size 96 --procs 2 --epochs 3

prints a table and writes ``bench_results/bench_train.json``. ``--device cuda`` measures the GPU.

``--throughput`` measures instead training graphs/s per metanet mode (issue 18) on two zoos of
random-weight CNNs imported with ``paramgraph zoo import``: small graphs (1 -> 8 -> 8 -> 8 -> 10
channels, 35 nodes and 216 edges, like the Small CNN Zoo at width 8) and large ones (3 -> 64 ->
128 -> 256 -> 256 -> 10, 0.96M parameters, 717 nodes, 109k edges). Each configuration (zoo, mode,
threads) runs in a fresh process: the real training step (``distributed.run_epoch`` on the real
DataLoader) over ``--steps`` batches after one warm-up batch, with the time split into
collation, ``GraphStructure`` construction (``prepare``), forward (of which gauge, encoders,
rounds, head), backward and optimizer. One thread and every core (``--thread-counts``). Under
load the process CPU time is the steadier measure (reported as ``cpu_graphs_per_s`` next to the
wall-clock ``graphs_per_s``). ``--compare DIR`` runs every configuration also on the code at
``DIR`` (a copy of an earlier checkout laid out as installed: ``paramgraph/``,
``paramgraph/models``, ``paramgraph/tasks``), before and after in turn, for before/after tables::

    python scripts/bench_train.py --throughput --hidden 64 --compare /tmp/before --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the code measured: this checkout, or an earlier one for --compare (see throughput)
sys.path.insert(0, os.environ.get("BENCH_TRAIN_CODE", str(ROOT)))


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


# -- throughput per mode (issue 18) -------------------------------------------------------------

SMALL_CNN = {"channels": [8, 8, 8], "in_ch": 1}
LARGE_CNN = {"channels": [64, 128, 256, 256], "in_ch": 3}
ZOOS = {  # name: (architecture, networks, input shape, batch size)
    "small": (SMALL_CNN, 1069, "2,1,28,28", 64),
    "large": (LARGE_CNN, 24, "2,3,32,32", 2),
}
SECTIONS = ("collate", "structure", "forward", "gauge", "encode", "rounds", "head", "backward",
            "optimizer")


def bench_cnn(channels=(8, 8, 8), in_ch: int = 1, classes: int = 10, act: str = "relu"):
    """The benchmark zoos' architecture (``--arch scripts/bench_train.py:bench_cnn``): 3x3
    convolutions of stride 2, global average pooling, a linear layer."""
    import torch.nn as nn

    layers, c_in = [], in_ch
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                   nn.ReLU() if act == "relu" else nn.Tanh()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))


def make_cnn_zoo(root: Path, name: str) -> Path:
    """The zoo ``name`` of :data:`ZOOS` under ``root`` (made once): random-weight CNNs (half
    ReLU, half tanh, weights scaled by a random factor in [0.5, 2]) with a random ``acc`` label
    (and its copy ``test_acc``, the generalization task's column), imported with ``paramgraph zoo
    import``."""
    import csv

    import torch
    from safetensors.torch import save_file

    from paramgraph.tasks.importer import import_zoo

    arch, count, shape, _ = ZOOS[name]
    out = root / f"zoo-{name}"
    if (out / "zoo.json").is_file():
        if "test_acc" in (out / "metadata.csv").read_text().partition("\n")[0]:
            return out
        shutil.rmtree(out)  # made by an earlier version of this script, without test_acc
    src = root / f"src-{name}"
    src.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        kwargs = {**arch, "act": "relu" if i % 2 == 0 else "tanh"}
        torch.manual_seed(i)
        net = bench_cnn(**kwargs)
        with torch.no_grad():
            scale = float(torch.empty(()).uniform_(0.5, 2.0, generator=g))
            for p in net.parameters():
                p.mul_(scale)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(src / f"net{i:05d}.safetensors"))
        acc = float(torch.rand((), generator=g))
        rows.append({"file": f"net{i:05d}.safetensors", "acc": acc, "test_acc": acc,
                     "run": i // 4, "arch_kwargs": json.dumps(kwargs)})
    with open(src / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = import_zoo(src, out, arch=f"{Path(__file__).resolve()}:bench_cnn",
                        input_shape=tuple(int(v) for v in shape.split(",")),
                        group_column="run", progress=False)
    if result.zoo is None:
        raise SystemExit(f"import of the {name} zoo failed: {result.failures[:3]}")
    return out


def throughput_child(args) -> None:
    """One configuration, in this process: prints one JSON line."""
    import torch

    from paramgraph.tasks import distributed
    from paramgraph.tasks.averaging import WeightAverage
    from paramgraph.tasks.objectives import get_objective
    from paramgraph.tasks.train import RunData, TrainConfig, build_metanet, with_task_defaults

    torch.set_num_threads(args.threads)
    from paramgraph import memory

    # as train() does (older code, measured with --compare, has no such setting)
    heap = getattr(memory, "retain_freed_heap", lambda: False)()
    kwargs = {"compile": True} if args.compile else {}
    if args.channels is not None:
        kwargs["channels"] = args.channels
    if args.edge_width is not None:
        kwargs["edge_width"] = args.edge_width
    # --recipe generalization: that task (on the zoo's test_acc, a copy of acc) with its
    # training defaults (tree prior included); plain: a regression on acc with no extras
    task, target = ("generalization", None) if args.recipe == "generalization" else \
        ("regression", "acc")
    cfg = TrainConfig(task=task, target=target, zoo=str(args.zoo_dir), mode=args.mode,
                      hidden=args.hidden, layers=args.layers, batch_size=args.batch_size,
                      precision=args.precision, model_kwargs=kwargs)
    task = get_objective(cfg.task, cfg.target)
    cfg = with_task_defaults(cfg, task)
    data = RunData(cfg, task, False)
    objective = data.objective.with_rank_loss(cfg.rank_loss)
    torch.manual_seed(0)
    net = build_metanet(cfg, objective)
    ctx = distributed.Context()
    prior_seconds = None
    if getattr(net, "prior", None) is not None:  # fitted once before training, as train() does
        from paramgraph.tasks.train import _fit_prior

        prior_seconds = time.perf_counter()
        _fit_prior(cfg, data, net, ctx)
        prior_seconds = time.perf_counter() - prior_seconds
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train = data.sets["train"]
    cache_seconds = None
    if hasattr(train, "attach_gauge_inputs"):  # as train() does (older code has no cache)
        cache_seconds = time.perf_counter()
        train.attach_gauge_inputs(net)
        cache_seconds = time.perf_counter() - cache_seconds
    # as train() does around its epochs (older code has no such setting); entered for the rest
    # of this child process, which ends with the measurement
    getattr(memory, "gc_frozen", contextlib.nullcontext)().__enter__()
    timer = _SectionTimer()
    timer.instrument(net, opt, distributed)
    steps = 1 + args.steps  # the first (warm-up) batch is not timed
    order = [i % len(train) for i in range(steps * args.batch_size)]
    loader, plan = distributed.epoch_loader(ctx, train, order, args.batch_size,
                                            train.edge_counts())
    batches = timer.timed_iter(iter(loader))
    average = WeightAverage(net, cfg.ema) if cfg.ema else None
    step = dict(hidden=data.hidden, clip=cfg.clip,
                after_step=(lambda: average.update(net)) if average else None,
                precision=cfg.precision)
    distributed.run_epoch(ctx, net, objective, opt, sched, _take(batches, 1), plan[:1], **step)
    timer.reset()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, cpu = time.perf_counter(), time.process_time()
    sums = distributed.run_epoch(ctx, net, objective, opt, sched, _take(batches, args.steps),
                                 plan[1:], **step)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    graphs = sums["count"]
    print(json.dumps({"graphs": graphs, "seconds": wall, "cpu_seconds": cpu,
                      "graphs_per_s": graphs / wall, "cpu_graphs_per_s": graphs / cpu,
                      "prior_fit_seconds": prior_seconds, "retained_heap": heap,
                      "gauge_cache_seconds": cache_seconds,
                      "page_faults_per_step": faults / args.steps,
                      "ms_per_step": {k: 1000 * v / args.steps for k, v in timer.wall.items()},
                      "cpu_ms_per_step": {k: 1000 * v / args.steps
                                          for k, v in timer.cpu.items()}}))


def _take(iterator, n: int):
    for _ in range(n):
        yield next(iterator)


class _SectionTimer:
    """Wall and CPU seconds per section of a training step, by wrapping what ``run_epoch``
    calls: the loader's ``next`` (collate), ``prepare`` (structure), ``objective.predict``
    (forward; inside it the gauge, ``encode``, the rounds and the head), ``Tensor.backward``
    and the optimizer's ``step`` (with the gradient clipping before it: the rest)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def reset(self) -> None:
        self.wall, self.cpu = {k: 0.0 for k in SECTIONS}, {k: 0.0 for k in SECTIONS}

    def wrap(self, name: str, fn):
        def timed(*a, **kw):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
                self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
        return timed

    def timed_iter(self, iterator):
        nxt = self.wrap("collate", lambda: next(iterator))
        while True:
            try:
                yield nxt()
            except StopIteration:
                return

    def instrument(self, net, opt, distributed) -> None:
        import torch

        distributed.prepare = self.wrap("structure", distributed.prepare)
        net.forward = self.wrap("forward", net.forward)
        if net.gauge is not None:
            net.gauge.gauge = self.wrap("gauge", net.gauge.gauge)
        bb = net.backbone
        bb.encode = self.wrap("encode", bb.encode)
        # around Backbone._round, outside what compile=True compiles (a timer wrapped around
        # the layers' forward was traced by torch.compile: recompiled on the timer's own dicts
        # until dynamo's limit, and the rounds ran eagerly); older code has no _round
        if hasattr(bb, "_round"):
            bb._round = self.wrap("rounds", bb._round)
        else:
            for layer in bb.layers:
                layer.forward = self.wrap("rounds", layer.forward)
        bb.head.forward = self.wrap("head", bb.head.forward)
        torch.Tensor.backward = self.wrap("backward", torch.Tensor.backward)
        opt.step = self.wrap("optimizer", opt.step)


def throughput(args) -> None:
    """Every (zoo, mode, threads) configuration in a fresh process, A B A B with ``--compare``;
    prints the tables and writes the JSON."""
    root = args.dir
    zoos = {name: make_cnn_zoo(root, name) for name in args.zoos}
    codes = [("after", None)] + ([("before", str(args.compare))] if args.compare else [])
    rows = []
    for rep in range(args.repeats):
        for name in args.zoos:
            for mode in args.modes:
                for threads in args.thread_counts:
                    for label, code in reversed(codes):  # before first, then after
                        r = _throughput_run(args, zoos[name], name, mode, threads, code)
                        rows.append({"zoo": name, "mode": mode, "threads": threads,
                                     "code": label, "repeat": rep, **r})
                        print(f"{name:5s} {mode:6s} {threads} thr {label:6s} "
                              f"{r['graphs_per_s']:7.1f} graphs/s (wall), "
                              f"{r['cpu_graphs_per_s']:7.1f} per CPU-s, load {r['load']:.1f}",
                              flush=True)
    _print_breakdown(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"hidden": args.hidden, "layers": args.layers, "steps": args.steps,
              "zoos": {n: {"arch": ZOOS[n][0], "networks": ZOOS[n][1],
                           "batch_size": ZOOS[n][3]} for n in args.zoos},
              "compile": args.compile, "channels": args.channels,
              "edge_width": args.edge_width, "recipe": args.recipe,
              "precision": args.precision,
              "cpu_count": os.cpu_count(),
              "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def _throughput_run(args, zoo: Path, name: str, mode: str, threads: int, code) -> dict:
    cmd = [sys.executable, __file__, "--throughput-child", "--zoo-dir", str(zoo), "--mode", mode,
           "--threads", str(threads), "--hidden", str(args.hidden), "--layers",
           str(args.layers), "--batch-size", str(ZOOS[name][3]), "--steps",
           str(args.steps if name == "small" else max(1, args.steps // 4))]
    if args.compile:
        cmd.append("--compile")
    if args.channels is not None:
        cmd += ["--channels", str(args.channels)]
    if args.edge_width is not None:
        cmd += ["--edge-width", str(args.edge_width)]
    if args.recipe != "plain":
        cmd += ["--recipe", args.recipe]
    if args.precision != "fp32":
        cmd += ["--precision", args.precision]
    code = code if code is not None else str(ROOT)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=code, BENCH_TRAIN_CODE=code)
    out = subprocess.run(cmd, check=True, env=env, cwd="/", capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = os.getloadavg()[0]
    return result


def _print_breakdown(rows: list[dict]) -> None:
    """Median per (zoo, mode, threads, code): graphs/s and CPU ms per step by section."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["zoo"], r["mode"], r["threads"], r["code"]), []).append(r)
    head = " ".join(f"{k[:9]:>9}" for k in SECTIONS)
    print(f"\n{'zoo':5} {'mode':6} {'thr':>3} {'code':6} {'g/s':>7} {'g/CPU-s':>7} | "
          f"CPU ms per step: {head}")
    for (zoo, mode, threads, code), rs in groups.items():
        med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
        parts = " ".join(f"{statistics.median(r['cpu_ms_per_step'].get(k, 0.0) for r in rs):9.1f}"
                         for k in SECTIONS)
        print(f"{zoo:5} {mode:6} {threads:>3} {code:6} {med('graphs_per_s'):7.1f} "
              f"{med('cpu_graphs_per_s'):7.1f} | {parts}")


def build_parser() -> argparse.ArgumentParser:
    """The command line (scripts/bench_peers.py reads its defaults for the runs it starts)."""
    from paramgraph.tasks.precision import PRECISIONS

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
    parser.add_argument("--throughput", action="store_true",
                        help="graphs/s per mode on small- and large-graph CNN zoos (issue 18)")
    parser.add_argument("--zoos", nargs="+", default=list(ZOOS), choices=list(ZOOS))
    parser.add_argument("--modes", nargs="+", default=["perm", "strict", "quasi"])
    parser.add_argument("--steps", type=int, default=8,
                        help="--throughput: timed batches (a quarter of them on large graphs)")
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, os.cpu_count()],
                        help="--throughput: torch threads per run (default: 1 and every core)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--compare", type=Path, default=None, metavar="DIR",
                        help="--throughput: also run the code at DIR, interleaved")
    parser.add_argument("--compile", action="store_true",
                        help="--throughput: MetaNet(compile=True) (torch.compile'd rounds)")
    parser.add_argument("--channels", type=int, default=None,
                        help="--throughput: value channels of the metanet (default hidden // 2)")
    parser.add_argument("--edge-width", type=int, default=None,
                        help="--throughput: width of the metanet's hidden edge features "
                        "(default: the metanet's)")
    parser.add_argument("--recipe", choices=("plain", "generalization"), default="plain",
                        help="--throughput: train with no extras (plain) or with the "
                        "generalization task's recipe (rank term, weight decay, moving average, "
                        "output readout)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                        help="--throughput: of the training forward passes (paramgraph train "
                        "--precision)")
    parser.add_argument("--throughput-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--zoo-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--summary-file", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.child:
        child(args)
        return
    if args.throughput_child:
        throughput_child(args)
        return
    if args.throughput:
        if args.out == ROOT / "bench_results" / "bench_train.json":
            args.out = ROOT / "bench_results" / "bench_train_throughput.json"
        throughput(args)
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
