"""The graph-wise edit commands: ``align``, ``merge``, ``canonicalize``, ``prune``.

No training: each command moves checkpoints within (or, for prune, out of) their symmetry group,
using the parameter graph's record of it::

    paramgraph align A B [-o OUT] --arch M:C --input-shape S [--match weights|activations
                     --data DATA] [--no-scales]                 (B may be a directory)
    paramgraph merge A B [C ...] -o OUT --arch ... --input-shape ... [--alpha 0.5] [--align]
                     [--weights W,W,...] [--curve 11 --eval DATA] [--repair [--data DATA]]
    paramgraph canonicalize CKPT [-o OUT] --arch ... --input-shape ...   (CKPT may be a dir)
    paramgraph prune CKPT [-o OUT] --arch ... --input-shape ... [--dead-threshold 1e-8]

``DATA`` is a ``.safetensors`` file with tensors ``x`` (inputs; reshaped to the example input's
trailing shape when the sizes fit) and ``y`` (integer labels: cross-entropy and accuracy;
floating targets: mean squared error), or the name of a data set registered with
:func:`register_dataset` (the task layer registers ``digits``: the bundled 8x8 digits). Bad input
refuses with one line through :func:`paramgraph.cli.run_command`; outputs are written
atomically; checkpoints are loaded without unpickling code unless ``--trust-pickle``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ParamGraphError
from .formats import CHECKPOINT_SUFFIXES

PROG = "paramgraph"

# data set name -> ("module:function" returning (x, y) for a split "train"/"test", help text)
DATASETS: dict[str, tuple[str, str]] = {}


def register_dataset(name: str, loader: str, help: str = "") -> None:
    """Make ``name`` usable as ``--eval``/``--data``: ``loader`` is ``"module:function"``;
    ``function(split)`` returns ``(x, y)`` tensors for ``split`` ``"train"`` or ``"test"``.
    Imported only when a command uses it."""
    DATASETS[name] = (loader, help)


def add_edit_commands(subparsers, source: argparse.ArgumentParser,
                      debug: argparse.ArgumentParser) -> None:
    """Register ``align``, ``merge``, ``canonicalize`` and ``prune`` (``source``: the parent
    parser with ``--arch``, ``--arch-kwargs``, ``--input-shape``, ``--trust-pickle``)."""
    from .cli import nonneg_float, positive_int

    def data_help(what):
        names = ", ".join(sorted(DATASETS)) or "none registered"
        return (f"{what}: a .safetensors file with tensors x and y, or a bundled data set "
                f"({names})")

    p = subparsers.add_parser(
        "align", parents=[source, debug], help="permute (and rescale) B's neurons to match A's",
        description="Move checkpoint B by an element of its symmetry group so that its neurons "
        "line up with A's: weight matching over every permutable channel set with its ties "
        "(Git Re-Basin; linear assignments until nothing changes), or activation matching on "
        "example inputs; scales and signs through the canonical section. B's function is kept. "
        "B may be a directory: each checkpoint in it is aligned to A.")
    p.add_argument("a", metavar="A", help="reference checkpoint")
    p.add_argument("b", metavar="B", help="checkpoint (or directory) to align")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output checkpoint (directory for a directory B); default B_aligned")
    p.add_argument("--match", choices=("weights", "activations"), default="weights",
                   help="what to match (default weights)")
    p.add_argument("--data", metavar="DATA", help=data_help("inputs for --match activations"))
    p.add_argument("--no-scales", action="store_true",
                   help="permutations only (do not align positive scales and signs)")
    p.set_defaults(func=cmd_align)

    p = subparsers.add_parser(
        "merge", parents=[source, debug], help="average checkpoints (optionally aligned first)",
        description="Weighted average of two checkpoints ((1-alpha) A + alpha B) or of N "
        "(equal weights or --weights), optionally aligned to the first one; --curve with --eval "
        "prints loss and accuracy along the line from A to B and the loss barrier.")
    p.add_argument("inputs", metavar="CKPT", nargs="+",
                   help="checkpoints (the first is the reference; a directory adds its files)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="merged checkpoint")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="weight of the second of two checkpoints (default 0.5)")
    p.add_argument("--weights", metavar="W,W,...", help="one weight per checkpoint, summing to 1")
    p.add_argument("--align", action="store_true", help="align each checkpoint to the first")
    p.add_argument("--no-scales", action="store_true", help="with --align: permutations only")
    p.add_argument("--curve", type=positive_int, metavar="POINTS",
                   help="evaluate POINTS evenly spaced points from A to B (needs --eval)")
    p.add_argument("--eval", metavar="DATA", help=data_help("evaluation data for --curve"))
    p.add_argument("--repair", action="store_true",
                   help="REPAIR: set each hidden channel's mean and std on example inputs to the "
                   "weighted average of the networks' own (folded into weights and biases; "
                   "undoes the variance collapse of averaged networks); inputs from --data, "
                   "else the training split of a bundled --eval data set or --eval's x")
    p.add_argument("--data", metavar="DATA", help=data_help("inputs for --repair"))
    p.set_defaults(func=cmd_merge)

    p = subparsers.add_parser(
        "canonicalize", parents=[source, debug], help="write a checkpoint in canonical form",
        description="Move a checkpoint to the canonical representative of its symmetry orbit "
        "(scales and signs, attention head maps, permutations): the same function, and "
        "checkpoints that differ only by a symmetry give identical files (see the README for "
        "what floating point allows). CKPT may be a directory.")
    p.add_argument("src", metavar="CKPT", help="checkpoint or directory")
    p.add_argument("-o", "--output", metavar="OUT", help="output (default CKPT_canonical)")
    p.add_argument("--no-heads", action="store_true", help="leave attention head maps as they are")
    p.set_defaults(func=cmd_canonicalize)

    p = subparsers.add_parser(
        "prune", parents=[source, debug], help="remove dead neurons, write the smaller network",
        description="Remove the neurons (channels) whose incoming and outgoing weights are all "
        "at most --dead-threshold in absolute value, and write the smaller checkpoint plus the "
        "architecture keyword arguments that build it (OUT.json). Refuses where the "
        "architecture callable cannot be rebuilt at the new widths. CKPT may be a directory.")
    p.add_argument("src", metavar="CKPT", help="checkpoint or directory")
    p.add_argument("-o", "--output", metavar="OUT", help="output (default CKPT_pruned)")
    p.add_argument("--dead-threshold", type=nonneg_float, default=0.0, metavar="T",
                   help="largest |weight| that counts as dead (default 0)")
    p.set_defaults(func=cmd_prune)


# -- loading and saving ----------------------------------------------------------------------------

class _Net:
    """One loaded checkpoint: its converted graph and, when it can be built, its module."""

    def __init__(self, path: Path, args):
        from .cli import _convert_options
        from .convert import convert_checkpoint

        self.path = path
        options = _convert_options(args)
        self.converted = convert_checkpoint(path, **options)
        self.graph = self.converted.graph
        self.arch, self.arch_kwargs = options["arch"], options["arch_kwargs"]
        self.input_shape = options["input_shape"]

    def module(self):
        """A fresh module of this architecture holding this checkpoint's values."""
        from .architecture import build_architecture
        from .checkpoint import load_checkpoint
        from .inverse import load_into

        if self.arch is not None:
            net = build_architecture(self.arch, self.arch_kwargs)
        else:
            obj = load_checkpoint(self.path, trust_pickle=True)
            import torch

            net = obj.module() if isinstance(obj, torch.export.ExportedProgram) else obj
        net = net.to(self.graph.edge_value.dtype)
        return load_into(net, self.graph)

    def save(self, graph, out: Path) -> Path:
        """Write ``graph`` (this checkpoint's architecture) with this checkpoint's extra tensors
        and key order."""
        from .checkpoint import save_state_dict
        from .inverse import to_state_dict

        state = to_state_dict(graph)
        for key, value in self.converted.extra.items():
            state.setdefault(key, value)
        try:
            order = [k for k in json.loads(self.converted.metadata.get("keys", "[]"))
                     if k in state]
        except ValueError:
            order = []
        state = {**{k: state[k] for k in order}, **state}
        return save_state_dict(state, out)


def _checkpoints(directory: Path) -> list[Path]:
    from .sniff import is_graph_file

    files = sorted(f for f in directory.iterdir() if f.is_file() and not f.name.startswith(".")
                   and f.suffix.lower() in CHECKPOINT_SUFFIXES and not is_graph_file(f))
    if not files:
        raise ParamGraphError(f"{directory}: no checkpoint files "
                              f"({', '.join(CHECKPOINT_SUFFIXES)}) in this directory")
    return files


def _default_out(src: Path, output: str | None, tag: str) -> Path:
    if output is not None:
        out = Path(output)
    else:
        suffix = src.suffix if src.suffix.lower() in (".safetensors", ".pt", ".pth") \
            else ".safetensors"
        out = src.with_name(f"{src.stem}_{tag}{suffix}")
    if out.exists() and out.resolve() == src.resolve():
        raise ParamGraphError(f"{out}: the output would overwrite the input; choose another -o")
    return out


def _each(src: Path, output: str | None, tag: str, work) -> int:
    """Run ``work(src_file, out_file)`` for a file, or for every checkpoint of a directory
    (failures listed, the rest go on; exit 2 if any failed)."""
    from .cli import error_message

    if not src.is_dir():
        if not src.exists():
            raise ParamGraphError(f"{src}: no such file or directory")
        work(src, _default_out(src, output, tag))
        return 0
    out_dir = Path(output) if output else src.parent / f"{src.name}_{tag}"
    if out_dir.exists() and not out_dir.is_dir():
        raise ParamGraphError(f"{out_dir}: exists and is not a directory (the input is a "
                              "directory, so -o must be one)")
    files = _checkpoints(src)
    failed = 0
    for f in files:
        try:
            work(f, out_dir / f.name)
        except (ParamGraphError, OSError) as err:
            failed += 1
            print(f"{PROG}: error: {error_message(err)}", file=sys.stderr)
    print(f"{len(files) - failed} of {len(files)} checkpoints from {src} into {out_dir}; "
          f"{failed} failed")
    return 2 if failed else 0


def _in(path, fn, *args, **kwargs):
    """``fn(...)``, with a ParamGraphError's message prefixed by the file it concerns."""
    try:
        return fn(*args, **kwargs)
    except ParamGraphError as err:
        if str(err).startswith(str(path)):
            raise
        raise ParamGraphError(f"{path}: {err}") from err


def load_data(spec: str, input_shape, split: str, dtype=None):
    """``(x, y)`` of a ``--eval``/``--data`` argument (see the module docstring); ``x`` is
    reshaped to ``input_shape[1:]`` per sample when the sizes fit. Raises ParamGraphError."""
    import importlib

    import torch

    if spec in DATASETS:
        module_name, _, fn = DATASETS[spec][0].partition(":")
        x, y = getattr(importlib.import_module(module_name), fn)(split)
    else:
        from safetensors.torch import load_file

        p = Path(spec)
        if not p.is_file():
            names = ", ".join(sorted(DATASETS)) or "none"
            raise ParamGraphError(f"{spec}: no such data file, and not a bundled data set "
                                  f"({names})")
        try:
            tensors = load_file(str(p))
        except Exception as err:
            raise ParamGraphError(f"{spec}: not a safetensors file with tensors x and y "
                                  f"({type(err).__name__})") from None
        if "x" not in tensors:
            raise ParamGraphError(f"{spec}: has no tensor 'x' (inputs); it holds "
                                  f"{', '.join(sorted(tensors)) or 'nothing'}")
        x, y = tensors["x"], tensors.get("y")
    if input_shape is not None:
        per = 1
        for s in input_shape[1:]:
            per *= s
        if x[0].numel() == per:
            x = x.reshape(-1, *input_shape[1:])
        else:
            raise ParamGraphError(f"{spec}: samples of shape {list(x.shape[1:])} do not fit "
                                  f"--input-shape {','.join(map(str, input_shape))}")
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    return x, (None if y is None else torch.as_tensor(y))


def _function_change(net: _Net, graph_a, graph_b, samples: int = 8) -> float | None:
    """Largest |output difference| of the module holding ``graph_a`` and ``graph_b`` on random
    inputs of the example shape; None when no module or shape is available."""
    import torch

    from .inverse import load_into

    if net.input_shape is None:
        return None
    try:
        m = net.module()
    except (ParamGraphError, OSError):
        return None
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *net.input_shape[1:], generator=gen).to(graph_a.edge_value.dtype)
    m.eval()
    with torch.no_grad():
        ya = load_into(m, graph_a)(x)
        yb = load_into(m, graph_b)(x)
    if not isinstance(ya, torch.Tensor):
        return None
    return float((ya.double() - yb.double()).abs().max())


# -- commands ----------------------------------------------------------------------------------------

def cmd_align(args) -> int:
    """Handler of ``paramgraph align``."""
    from .activations import neuron_activations
    from .align import align

    a = _Net(Path(args.a), args)
    if args.match == "activations" and not args.data:
        raise ParamGraphError("--match activations needs example inputs: give --data DATA")
    x = None
    if args.match == "activations":
        x, _ = load_data(args.data, a.input_shape, "train", a.graph.edge_value.dtype)
        acts_a = neuron_activations(a.module(), a.graph, x)

    def work(src: Path, out: Path):
        b = _Net(src, args)
        acts = None
        if x is not None:
            acts = (acts_a, neuron_activations(b.module(), b.graph, x))
        res = _in(src, align, a.graph, b.graph, scales=not args.no_scales, match=args.match,
                  activations=acts)
        res_graph = res.graph
        b.save(res_graph, out)
        change = _function_change(b, b.graph, res_graph)
        note = "" if change is None else f"; largest output change {change:.2g}"
        state = "" if res.converged else f" (stopped after {res.passes} passes)"
        print(f"{src} -> {out}: aligned to {args.a}, similarity {res.similarity_before:.4g} -> "
              f"{res.similarity_after:.4g} in {res.passes} passes{state}{note}")

    return _each(Path(args.b), args.output, "aligned", work)


def cmd_merge(args) -> int:
    """Handler of ``paramgraph merge``."""
    from .align import align
    from .merge import interpolation_curve, loss_barrier, merge, repair

    paths = []
    for item in args.inputs:
        p = Path(item)
        paths.extend(_checkpoints(p) if p.is_dir() else [p])
    for p in paths:
        if not p.exists():
            raise ParamGraphError(f"{p}: no such file or directory")
    if len(paths) < 2:
        raise ParamGraphError("merge needs at least two checkpoints")
    if args.weights is not None:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ParamGraphError(f"--weights '{args.weights}': expected comma-separated "
                                  "numbers") from None
    elif len(paths) == 2:
        if not 0.0 <= args.alpha <= 1.0:
            raise ParamGraphError(f"--alpha {args.alpha}: expected a number in [0, 1]")
        weights = [1.0 - args.alpha, args.alpha]
    else:
        weights = None
    if args.curve is not None and (len(paths) != 2 or args.eval is None):
        raise ParamGraphError("--curve needs exactly two checkpoints and --eval DATA")
    if args.repair and not (args.data or args.eval):
        raise ParamGraphError("--repair needs example inputs: give --data DATA (or --eval DATA)")
    nets = [_Net(p, args) for p in paths]
    graphs = [n.graph for n in nets]
    if args.align:
        graphs = [graphs[0]] + [_in(n.path, align, graphs[0], g, scales=not args.no_scales).graph
                                for n, g in zip(nets[1:], graphs[1:])]
    merged = merge(graphs, weights, names=[str(p) for p in paths])
    repair_x = None
    if args.repair:
        repair_x, _ = load_data(args.data or args.eval, nets[0].input_shape, "train",
                                graphs[0].edge_value.dtype)
        merged = repair(nets[0].module(), graphs, merged, repair_x, weights)
    out = nets[0].save(merged, Path(args.output))
    how = "aligned to the first, " if args.align else ""
    w = ", ".join(f"{x:g}" for x in (weights or [1 / len(paths)] * len(paths)))
    fix = f", REPAIR on {repair_x.size(0)} inputs" if args.repair else ""
    print(f"merged {len(paths)} checkpoints ({how}weights {w}{fix}) -> {out}")
    if args.curve is not None:
        module = nets[0].module()
        x, y = load_data(args.eval, nets[0].input_shape, "test", graphs[0].edge_value.dtype)
        if y is None:
            raise ParamGraphError(f"{args.eval}: has no targets 'y' to evaluate on")
        curve = interpolation_curve(module, graphs[0], graphs[1], x, y, args.curve,
                                    repair_x=repair_x)
        print(f"{'alpha':>6}  {'loss':>9}  {'accuracy':>8}")
        for pt in curve:
            acc = "" if pt["accuracy"] is None else f"{pt['accuracy']:.4f}"
            print(f"{pt['alpha']:6.3f}  {pt['loss']:9.4f}  {acc:>8}")
        state = ("aligned" if args.align else "not aligned") + (", repaired" if args.repair else "")
        print(f"loss barrier {loss_barrier(curve):.4f} ({state})")
    return 0


def cmd_canonicalize(args) -> int:
    """Handler of ``paramgraph canonicalize``."""
    from .canonicalize import canonicalize

    def work(src: Path, out: Path):
        net = _Net(src, args)
        res = _in(src, canonicalize, net.graph, heads=not args.no_heads)
        net.save(res.graph, out)
        change = _function_change(net, net.graph, res.graph)
        note = "" if change is None else f"; largest output change {change:.2g}"
        heads = "" if res.heads_fixed else " (attention head maps left as they are)"
        print(f"{src} -> {out}: canonical form, {res.sets_sorted} permutable sets sorted, "
              f"{res.scales_fixed} neurons' scales/signs fixed{heads}{note}")

    return _each(Path(args.src), args.output, "canonical", work)


def cmd_prune(args) -> int:
    """Handler of ``paramgraph prune``."""
    import torch

    from .architecture import resolve_callable
    from .atomic import atomic_write
    from .prune import callable_defaults, prune

    if args.arch is None:
        raise ParamGraphError("prune rebuilds the architecture at its new widths: name it with "
                              "--arch MODULE:CALLABLE (and --arch-kwargs)")

    def work(src: Path, out: Path):
        net = _Net(src, args)
        fn, _ = resolve_callable(net.arch)
        example = torch.randn(*net.input_shape, generator=torch.Generator().manual_seed(0))
        res = _in(src, prune, net.graph, lambda **kw: fn(**kw), net.arch_kwargs, example,
                  args.dead_threshold, defaults=callable_defaults(fn))
        from .checkpoint import save_state_dict

        state = dict(res.state_dict)
        for key, value in net.converted.extra.items():
            state.setdefault(key, value)
        save_state_dict(state, out)
        kwargs_file = out.with_name(out.name + ".json")
        with atomic_write(kwargs_file, "w", encoding="utf-8") as f:
            json.dump({"arch": net.arch, "arch_kwargs": res.arch_kwargs,
                       "input_shape": list(net.input_shape)}, f, indent=2)
        widths = ", ".join(f"{a}->{b}" for a, b in res.widths) or "none"
        small = fn(**res.arch_kwargs).to(net.graph.edge_value.dtype)
        small.load_state_dict(res.state_dict, strict=False)
        x = example.to(net.graph.edge_value.dtype)
        with torch.no_grad():
            change = float((net.module().eval()(x).double() - small.eval()(x).double())
                           .abs().max())
        print(f"{src} -> {out}: removed {res.removed} dead neurons (widths {widths}); rebuild "
              f"with --arch {net.arch} --arch-kwargs '{json.dumps(res.arch_kwargs)}' "
              f"(also in {kwargs_file}); largest output change {change:.2g}")

    return _each(Path(args.src), args.output, "pruned", work)
