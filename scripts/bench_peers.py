"""Training throughput side by side with the peer ScaleGMN (Kalogeropoulos et al., NeurIPS'24).

Both sides train on the "small" zoo of ``scripts/bench_train.py`` (``make_cnn_zoo``: 1,069
random-weight CNNs ``bench_cnn``, 1 -> 8 -> 8 -> 8 channels of 3x3 stride-2 convolutions, ReLU or
tanh, global average pooling, ``Linear(8, 10)``; 35 nodes and 216 edges per graph) with a scalar
target (the zoo's ``acc``). One training step: forward, MSE loss, backward, gradient-norm
clipping, AdamW step, scheduler step; batch 64; one thread (``torch.set_num_threads(1)``,
``OMP_NUM_THREADS=1``); one untimed warm-up batch, then ``--steps`` timed batches, the
DataLoader's collation included; every measurement in a fresh process. Reported: graphs per
wall-second and per CPU-second (``time.process_time`` of the process, the steadier number on a
shared machine), as bench_train's throughput child reports them. The table shows, per model, the
medians over ``--repeats`` and the ratio of the CPU-second median to ScaleGMN's. The runs are
interleaved (ScaleGMN, quasi, perm, strict, ScaleGMN, ...) so that a busy machine slows all alike.

    python scripts/bench_peers.py --scalegmn /path/to/scalegmn --repeats 3 --steps 8

prints the table and writes ``bench_results/bench_peers.json`` (``--out``). ``--peer-heap`` adds
runs of ScaleGMN with the allocator setting our training applies to its own process
(:func:`paramgraph.memory.retain_freed_heap`), as the model ``ScaleGMN+heap``; the ratios stay
relative to ScaleGMN as it ships.

Ours: ``bench_train.py --throughput-child``, started by bench_train's own ``_throughput_run`` (the
command of ``bench_train.py --throughput``) for each of ``--modes`` with ``--hidden`` (64),
``--layers`` (3) and ``--channels`` if given, every other option at bench_train's default. Its
clipping norm is our training default (``TrainConfig.clip``, 1.0 today, not ScaleGMN's 10) and
its AdamW the fused one, as in our training.

ScaleGMN (``--scalegmn``: a checkout of github.com/jkalogero/scalegmn, measured at 9cffd4d; the
commit run is recorded): its invariant model ``src.scalegmn.models.ScaleGMN`` built from
``configs/cifar10/scalegmn_relu.yml`` through its own ``overwrite_conf`` with d_hid 64,
num_layers 4, direction forward and symmetry ``permutation`` (its GMN without the scaling
symmetries, the README's ``--scalegmn_args.symmetry=permutation``; ``assert_symms`` accepts it
whatever the activation), layer_layout [1, 8, 8, 8, 10]; the 3x3 kernels make its edge input 9
wide (it sets ``d_in_e`` from ``_max_kernel_height/width`` itself). Input: every checkpoint
``src-small/net*.safetensors`` goes through :func:`to_scalegmn_layout` (checked against its
``NFNZooDataset._transform_weights_biases`` in every run) and its ``cnn_to_tg_data`` with the
arguments of ``NFNZooDataset.__getitem__`` (the class its ``cifar10`` config loads), per item as
that class does; batches come from ``torch_geometric.loader.DataLoader``; the step is
``predicting_generalization.py``'s: ``sigmoid(net(batch)).squeeze(-1)``, ``MSELoss`` to ``y``,
backward, ``clip_grad_norm_`` at 10 (``.item()`` for its log), ``AdamW(lr 1e-3, weight decay
0.01)`` as its ``setup_optimization`` makes it, scheduler step. Differences from its script,
none of which changes the work of a step: ``num_workers=0`` (its default is 8 worker processes:
here the items are built and collated in the measured process, as ours are) and no
``pin_memory`` (no GPU), a fixed item order instead of ``shuffle=True`` (like ours), and
its ``WarmupLRScheduler`` replaced by a ``LambdaLR`` with the same warm-up factor (it passes
``verbose=``, which the ``LRScheduler`` of current torch, 2.13 here, no longer takes). Both ReLU
and tanh networks are used (its relu config trains on ReLU nets only; the graphs are the same).

Stubbed in the ScaleGMN child only (empty modules in ``sys.modules``, and only those that are not
installed; the child's JSON lists them): ``rff``, ``rff.layers``, ``einops``, ``einops.layers``,
``einops.layers.torch``, ``torchvision``, ``torchvision.utils`` (imported at the top of
``src/scalegmn/inr.py`` for its INR models; the GMN uses only its ``Sine``) and ``pandas``
(imported at the top of ``src/data/cifar10_dataset.py`` to read the NFN zoo's CSV files). The
package ``src.data`` is registered without running its ``__init__``, which imports every INR
dataset (``nfn``, ``torchvision``, ...). Reading the config needs PyYAML (``pip install -e
'.[peers]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64  # the small zoo's batch in bench_train (ZOOS["small"]) and ScaleGMN's config's
THREADS = 1
CONFIG = "configs/cifar10/scalegmn_relu.yml"
# ScaleGMN's command-line overrides (its overwrite_conf applies them as its CLI does)
OVERRIDES = {"batch_size": BATCH, "scalegmn_args.d_hid": 64, "scalegmn_args.num_layers": 4,
             "scalegmn_args.direction": "forward", "scalegmn_args.symmetry": "permutation"}
LAYOUT = [1, 8, 8, 8, 10]  # bench_cnn's channels and classes
STUBS = {  # module: names it must provide for the imports to succeed
    "rff": [], "rff.layers": ["GaussianEncoding", "PositionalEncoding"],
    "einops": [], "einops.layers": [], "einops.layers.torch": ["Rearrange"],
    "torchvision": [], "torchvision.utils": ["save_image"],
    "pandas": [],
}
SECTIONS = ("collate", "forward", "backward", "optimizer")


# -- checkpoint -> ScaleGMN's input (no ScaleGMN code needed) -----------------------------------

def _layer_names(state_dict) -> list[str]:
    """The layers' module names in network order: numeric parts compared as numbers, so that
    ``8.weight`` follows ``4.weight`` whatever order the file stored the keys in (safetensors
    sorts them as text; ScaleGMN's datasets take the order they are given)."""
    names = {k.rsplit(".", 1)[0] for k in state_dict if k.endswith(".weight")}
    return sorted(names, key=lambda n: [(0, int(p), "") if p.isdigit() else (1, 0, p)
                                        for p in n.split(".")])


def _pad_and_flatten(kernel, max_kernel):
    """ScaleGMN's ``pad_and_flatten_kernel``: zero-pad (in, out, h, w) to ``max_kernel`` around
    the centre and flatten h, w (row-major). Kept as theirs, which gives the height's padding to
    the width's dimension and back (the same for square kernels)."""
    import torch.nn.functional as F

    full = (max_kernel[0] - kernel.shape[2], max_kernel[1] - kernel.shape[3])
    pad = (full[0] // 2, full[0] - full[0] // 2, full[1] // 2, full[1] - full[1] // 2)
    return F.pad(kernel, pad).flatten(2, 3)


def to_scalegmn_layout(state_dict, max_kernel=(3, 3)):
    """``(weights, biases)`` of one CNN checkpoint as ScaleGMN's ``NFNZooDataset.__getitem__``
    hands them to ``cnn_to_tg_data``: per layer, weights as (in, out, kh*kw) with every kernel
    zero-padded to ``max_kernel`` (convolutions) or (in, out, 1) (linear layers; the layer after
    the global average pooling is an ordinary layer of the layout), biases as (out, 1).
    ``state_dict`` is in PyTorch's layout (out, in, kh, kw) / (out, in)."""
    weights, biases = [], []
    for name in _layer_names(state_dict):
        w = state_dict[f"{name}.weight"].transpose(0, 1)  # edges run from input to output
        w = _pad_and_flatten(w, max_kernel) if w.ndim == 4 else w.unsqueeze(-1)
        weights.append(w)
        biases.append(state_dict[f"{name}.bias"].unsqueeze(-1))
    return tuple(weights), tuple(biases)


def _layer_layout(state_dict) -> list[int]:
    """Input channels, then every layer's outputs (``NFNZooDataset``'s ``layer_layout``)."""
    names = _layer_names(state_dict)
    return ([state_dict[f"{names[0]}.weight"].shape[1]]
            + [state_dict[f"{n}.bias"].shape[0] for n in names])


def conv_mask(state_dict) -> list[int]:
    """Which layers are convolutions (``NFNZooDataset``'s ``conv_mask``)."""
    return [int(state_dict[f"{n}.weight"].ndim == 4) for n in _layer_names(state_dict)]


# -- the ScaleGMN child ---------------------------------------------------------------------------

def _stub_missing() -> list[str]:
    """Empty stand-ins for the INR-only and CSV modules ScaleGMN imports but the benchmark never
    calls; only those not installed. Returns their names."""
    import importlib.machinery
    import importlib.util

    def unusable(*a, **kw):
        raise RuntimeError("stubbed by bench_peers.py")

    stubbed = []
    for name, attrs in STUBS.items():
        top = name.split(".")[0]
        if top not in stubbed and importlib.util.find_spec(top) is not None:
            continue
        module = types.ModuleType(name)
        # a package without files: its submodules' stubs import, and torch's find_spec probes
        # (torch._dynamo lists third-party modules) see a module with no source
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__path__ = []
        for attr in attrs:
            setattr(module, attr, unusable)
        sys.modules[name] = module
        stubbed.append(name)
    return stubbed


def _import_scalegmn(path: Path) -> list[str]:
    """Make ScaleGMN's ``src`` importable (its scripts run from its root); ``src.data`` without
    its ``__init__`` (every INR dataset)."""
    sys.path.insert(0, str(path))
    stubbed = _stub_missing()
    data = types.ModuleType("src.data")
    data.__path__ = [str(path / "src" / "data")]
    sys.modules["src.data"] = data
    return stubbed + ["src.data (package __init__ skipped)"]


def _scalegmn_conf(path: Path) -> dict:
    """Its cifar10 ReLU config with :data:`OVERRIDES`, as its CLI would set them."""
    import yaml
    from src.utils.helpers import assert_symms, overwrite_conf

    with open(path / CONFIG) as f:
        conf = overwrite_conf(yaml.safe_load(f), dict(OVERRIDES))
    assert_symms(conf)
    conf["data"]["layer_layout"] = LAYOUT
    conf["scalegmn_args"]["layer_layout"] = LAYOUT  # as predicting_generalization sets it
    return conf


def _load_zoo(src: Path, count: int) -> list[tuple[dict, float, str]]:
    """(state_dict, acc, activation) of the first ``count`` networks of ``labels.csv`` (all of
    them if it has fewer)."""
    import csv

    from safetensors.torch import load_file

    with open(src / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:count]
    return [(load_file(str(src / r["file"])), float(r["acc"]),
             json.loads(r["arch_kwargs"])["act"]) for r in rows]


def _check_layout(state_dict) -> None:
    """:func:`to_scalegmn_layout` against ScaleGMN's own transform of the same tensors."""
    import torch
    from src.data.cifar10_dataset import NFNZooDataset

    ours = to_scalegmn_layout(state_dict)
    names = _layer_names(state_dict)
    for key, got in zip(("weight", "bias"), ours):
        theirs = [NFNZooDataset._transform_weights_biases(state_dict[f"{n}.{key}"], (3, 3))
                  for n in names]
        if not all(torch.equal(a, b) for a, b in zip(got, theirs)):
            raise SystemExit(f"to_scalegmn_layout disagrees with ScaleGMN's {key}s")


def _zoo_graphs(conf: dict, nets: list, length: int):
    """``length`` items, the networks in turn, as ScaleGMN's ``NFNZooDataset`` serves them:
    parameters in memory, the ``Data`` built per item with the arguments of its
    ``__getitem__``."""
    import torch
    from src.data.cifar10_dataset import NFNZooDataset, cnn_to_tg_data
    from src.data.data_utils import get_edge_types, get_node_types
    from src.utils.helpers import mask_hidden, mask_input

    layout, direction = conf["data"]["layer_layout"], conf["scalegmn_args"]["direction"]
    # what its __init__ prepares once for a zoo of one architecture
    init = types.SimpleNamespace(layer_layout=layout)
    node2type = get_node_types(layout) if conf["data"]["node_pos_embed"] else None
    edge2type = get_edge_types(layout) if conf["data"]["edge_pos_embed"] else None
    hidden = NFNZooDataset.mark_hidden_nodes(init) if mask_hidden(conf) else None
    first = NFNZooDataset.mark_input_nodes(init) if mask_input(conf) else None

    class ZooGraphs(torch.utils.data.Dataset):
        def __len__(self):
            return length

        def __getitem__(self, idx):
            sd, acc, act = nets[idx % len(nets)]  # round the zoo again, as bench_train does
            weights, biases = to_scalegmn_layout(sd)
            return cnn_to_tg_data(weights, biases, conv_mask(sd), direction, fmap_size=1,
                                  y=acc, layer_layout=_layer_layout(sd), node2type=node2type,
                                  edge2type=edge2type, mask_hidden=hidden,
                                  mask_first_layer=first, sign_mask=act == "tanh")

    return ZooGraphs()


def _optimizer(conf: dict, net):
    """AdamW as its ``setup_optimization`` makes it, and its warm-up schedule as a LambdaLR
    (its ``WarmupLRScheduler`` cannot be built on this torch: see the module docstring)."""
    import torch

    opt_conf = conf["optimization"]
    params = [p for p in net.parameters() if p.requires_grad]
    opt = getattr(torch.optim, opt_conf["optimizer_name"])(
        params, **{k: float(v) for k, v in opt_conf["optimizer_args"].items()})
    warmup = opt_conf["scheduler_args"]["warmup_steps"]
    # WarmupLRScheduler: lr * step_count / warmup while step_count < warmup (count from 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup
                                              if s + 1 < warmup else 1.0)
    return opt, sched


class _Clock:
    """Wall and CPU seconds per section of the step."""

    def __init__(self):
        self.wall = {k: 0.0 for k in SECTIONS}
        self.cpu = {k: 0.0 for k in SECTIONS}
        self._mark = None

    def start(self):
        self._mark = (time.perf_counter(), time.process_time())

    def lap(self, name: str):
        w, c = time.perf_counter(), time.process_time()
        self.wall[name] += w - self._mark[0]
        self.cpu[name] += c - self._mark[1]
        self._mark = (w, c)


def _train_step(net, batch, criterion, opt, sched, conf, clock: _Clock, precision: str) -> None:
    """One step of predicting_generalization.py's training loop (device: CPU); the forward at
    ``precision`` as ours runs it (the loss in float32)."""
    import torch
    import torch.nn.functional as F

    from paramgraph.tasks.precision import training_autocast

    batch = batch.to("cpu")
    gt_test_acc = batch.y
    opt.zero_grad()
    with training_autocast(precision, "cpu"):
        pred_acc = F.sigmoid(net(batch)).squeeze(-1)
    pred_acc = pred_acc.float()
    loss = criterion(pred_acc, gt_test_acc)
    clock.lap("forward")
    loss.backward()
    clock.lap("backward")
    if conf["optimization"]["clip_grad"]:
        torch.nn.utils.clip_grad_norm_(net.parameters(),
                                       conf["optimization"]["clip_grad_max_norm"]).item()
    opt.step()
    sched.step()
    clock.lap("optimizer")


def scalegmn_child(args) -> None:
    """One ScaleGMN measurement, in this process: prints one JSON line."""
    import torch

    torch.set_num_threads(THREADS)
    if args.retain_heap:  # the allocator setting our training applies (--peer-heap)
        from paramgraph.memory import retain_freed_heap

        retain_freed_heap()
    stubbed = _import_scalegmn(args.scalegmn)
    import torch_geometric
    from src.scalegmn.models import ScaleGMN
    from src.utils.helpers import set_seed

    conf = _scalegmn_conf(args.scalegmn)
    set_seed(conf["train_args"]["seed"])  # as its script does (deterministic algorithms on)
    steps = 1 + args.steps  # the first (warm-up) batch is not timed
    nets = _load_zoo(args.src, steps * BATCH)
    _check_layout(nets[0][0])
    net = ScaleGMN(conf["scalegmn_args"])
    net.train()
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)  # its count_parameters
    criterion = torch.nn.MSELoss()  # its select_criterion("MSE")
    opt, sched = _optimizer(conf, net)
    loader = torch_geometric.loader.DataLoader(_zoo_graphs(conf, nets, steps * BATCH),
                                               batch_size=BATCH,
                                               shuffle=False, num_workers=0)
    batches, clock = iter(loader), _Clock()
    clock.start()
    precision = args.precisions[0]
    _train_step(net, next(batches), criterion, opt, sched, conf, clock, precision)
    clock = _Clock()
    wall, cpu = time.perf_counter(), time.process_time()
    clock.start()
    graphs = 0
    for _ in range(args.steps):
        batch = next(batches)
        clock.lap("collate")
        graphs += batch.num_graphs
        _train_step(net, batch, criterion, opt, sched, conf, clock, precision)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"graphs": graphs, "seconds": wall, "cpu_seconds": cpu,
                      "graphs_per_s": graphs / wall, "cpu_graphs_per_s": graphs / cpu,
                      "ms_per_step": {k: 1000 * v / args.steps for k, v in clock.wall.items()},
                      "cpu_ms_per_step": {k: 1000 * v / args.steps
                                          for k, v in clock.cpu.items()},
                      "params": params, "stubbed": stubbed,
                      "torch": torch.__version__, "torch_geometric": torch_geometric.__version__}))


# -- the parent: interleaved runs, table, JSON ----------------------------------------------------

def _bench_train():
    """scripts/bench_train.py as a module (scripts are not a package)."""
    import importlib.util

    path = ROOT / "scripts" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scalegmn_run(args, precision: str, retain_heap: bool = False) -> dict:
    """One ScaleGMN measurement in a fresh process (this script's --scalegmn-child), with
    glibc's allocator as it comes or (``retain_heap``) as our training sets it."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--scalegmn-child", "--scalegmn",
           str(args.scalegmn), "--src", str(args.dir / "src-small"), "--steps", str(args.steps),
           "--precisions", precision] + (["--retain-heap"] if retain_heap else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    out = subprocess.run(cmd, env=env, cwd=args.scalegmn, capture_output=True, text=True)
    if out.returncode:  # the child's last line says why (a missing PyYAML, a wrong checkout)
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench_peers.py: the ScaleGMN run failed: {last}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = os.getloadavg()[0]
    return result


def _ours_args(args, bench, precision: str) -> argparse.Namespace:
    """bench_train's options for our runs at ``precision``: its defaults with ours."""
    return argparse.Namespace(**{**vars(bench.build_parser().parse_args([])),
                                 "hidden": args.hidden, "layers": args.layers,
                                 "steps": args.steps, "channels": args.channels,
                                 "edge_width": args.edge_width, "precision": precision})


def _summary(rows: list[dict]) -> list[dict]:
    """Per model: repeats, medians, and the CPU-second median's ratio to ScaleGMN's (at the
    first precision measured)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    med = {m: {k: statistics.median(r[k] for r in rows if r["model"] == m)
               for k in ("graphs_per_s", "cpu_graphs_per_s")} for m in models}
    base = med[next(m for m in models if m.startswith("ScaleGMN"))]["cpu_graphs_per_s"]
    return [{"model": m, "repeats": sum(r["model"] == m for r in rows),
             "median_graphs_per_s": med[m]["graphs_per_s"],
             "median_cpu_graphs_per_s": med[m]["cpu_graphs_per_s"],
             "ratio_to_scalegmn": med[m]["cpu_graphs_per_s"] / base} for m in models]


def _print_table(summary: list[dict]) -> None:
    print(f"\n{'model':10} {'repeats':>7} {'g/s (wall)':>10} {'g/CPU-s':>9} {'vs ScaleGMN':>11}")
    for s in summary:
        print(f"{s['model']:10} {s['repeats']:>7} {s['median_graphs_per_s']:>10.1f} "
              f"{s['median_cpu_graphs_per_s']:>9.1f} {s['ratio_to_scalegmn']:>10.2f}x")


def _commit(path: Path) -> str:
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def run(args) -> None:
    """Every run interleaved, each in a fresh process; prints the table, writes the JSON."""
    if not (args.scalegmn / "src" / "scalegmn" / "models.py").is_file():
        raise SystemExit(f"bench_peers.py: {args.scalegmn} is not a checkout of ScaleGMN "
                         "(no src/scalegmn/models.py); git clone "
                         "https://github.com/jkalogero/scalegmn and pass its path")
    bench = _bench_train()
    zoo = bench.make_cnn_zoo(args.dir, "small")
    commit = _commit(args.scalegmn)
    rows = []
    for rep in range(args.repeats):
        for precision in args.precisions:
            ours = _ours_args(args, bench, precision)
            peers = ["ScaleGMN"] + (["ScaleGMN+heap"] if args.peer_heap else [])
            for model in [*peers, *args.modes]:
                # ours: bench_train's own throughput command, on this checkout's code (None)
                r = (_scalegmn_run(args, precision, model.endswith("+heap"))
                     if model in peers
                     else bench._throughput_run(ours, zoo, "small", model, THREADS, None))
                name = model if precision == "fp32" else f"{model} {precision}"
                rows.append({"model": name, "precision": precision, "repeat": rep, **r})
                print(f"{name:14s} {r['graphs_per_s']:7.1f} graphs/s (wall), "
                      f"{r['cpu_graphs_per_s']:7.1f} per CPU-s, load {r['load']:.1f}",
                      flush=True)
    summary = _summary(rows)
    _print_table(summary)
    peer = next(r for r in rows if r["model"] == "ScaleGMN")
    result = {"batch_size": BATCH, "threads": THREADS, "steps": args.steps,
              "zoo": {"name": "small", "arch": bench.ZOOS["small"][0],
                      "networks": bench.ZOOS["small"][1], "dir": str(zoo)},
              "precisions": args.precisions,
              "ours": {"modes": args.modes, **{  # bench_train's options its command carries
                  k: v for k, v in vars(ours).items()
                  if k in ("hidden", "layers", "channels", "edge_width", "compile", "recipe")}},
              "scalegmn": {"commit": commit, "params": peer["params"], "config": CONFIG,
                           "overrides": OVERRIDES, "layer_layout": LAYOUT,
                           "stubbed": peer["stubbed"]},
              "cpu_count": os.cpu_count(), "summary": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    from paramgraph.tasks.precision import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scalegmn", type=Path, required=True, metavar="PATH",
                        help="a checkout of ScaleGMN's repository")
    parser.add_argument("--modes", nargs="+", default=["quasi", "perm", "strict"])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--channels", type=int, default=None,
                        help="value channels of our metanet (default: bench_train's)")
    parser.add_argument("--edge-width", type=int, default=None,
                        help="hidden edge width of our metanet (default: the metanet's)")
    parser.add_argument("--steps", type=int, default=8, help="timed batches per run")
    parser.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=["fp32"],
                        help="train each model at each of these (bf16: the forward under "
                        "bfloat16 autocast, on both sides; paramgraph train --precision)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / ".cache" / "bench_train",
                        help="where bench_train keeps its zoos (made there if missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "bench_peers.json")
    parser.add_argument("--peer-heap", action="store_true",
                        help="also run ScaleGMN with the allocator setting our training "
                        "applies (paramgraph.memory.retain_freed_heap), as 'ScaleGMN+heap'")
    parser.add_argument("--scalegmn-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--retain-heap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scalegmn, args.dir = args.scalegmn.resolve(), args.dir.resolve()
    if args.scalegmn_child:
        scalegmn_child(args)
        return
    run(args)


if __name__ == "__main__":
    main()
