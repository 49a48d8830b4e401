"""The ``paramgraph`` command line: convert checkpoint files to graph files, inspect, restore, export
and draw them.

Commands (``paramgraph COMMAND --help`` for details)::

    paramgraph convert SRC [-o OUT] [--arch MODULE:CALLABLE] [--arch-kwargs JSON]
                           [--input-shape 2,1,8,8] [--trust-pickle] [--allow-nonfinite]
                           [--workers N]
    paramgraph inspect SRC [--json] [--arch ...] [--input-shape ...]
    paramgraph restore GRAPH -o OUT.safetensors
    paramgraph export GRAPH --format graphml|json -o OUT
    paramgraph draw GRAPH -o OUT.png
    paramgraph align | merge | canonicalize | prune ...   (paramgraph/cli_edit.py)

Other front ends build on this module: :func:`add_subcommands` registers the commands on an
``argparse`` sub-parser set (each with ``func`` set to its handler) and :func:`run_command` runs a
parsed command with the error policy: bad input (any :class:`~paramgraph.ParamGraphError`, file
errors) prints one line ``paramgraph: error: <file>: <problem>`` on stderr and returns 2, with the
traceback only under ``--debug``. Every output file is written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

from .errors import ParamGraphError, one_line
from .formats import CHECKPOINT_SUFFIXES, GRAPH_SUFFIX

PROG = "paramgraph"


# -- running commands ------------------------------------------------------------------------------


def without_pyg(handler):
    """``handler`` run inside :func:`paramgraph.layout.plain_graphs`: a command that reads or
    converts one graph never batches it, so it need not pay the ~3 s of importing torch_geometric
    (more than torch itself)."""
    @functools.wraps(handler)
    def run(*args, **kwargs):
        from .layout import plain_graphs

        with plain_graphs():
            return handler(*args, **kwargs)

    return run


def run_command(args: argparse.Namespace, prog: str = PROG) -> int:
    """Run ``args.func(args)`` and turn failures into an exit status.

    Returns the handler's status (0 when it returns None). A
    :class:`~paramgraph.ParamGraphError` or ``OSError`` prints one line ``<prog>: error: ...`` on
    stderr and returns 2; any other exception (a bug) prints one line ``<prog>: internal error:
    ...`` and returns 1; Ctrl-C returns 130. With ``args.debug`` the traceback is printed first.
    Reusable by any command whose handler follows this contract.
    """
    debug = bool(getattr(args, "debug", False))
    func = getattr(args, "func", None)
    if func is None:
        print(f"{prog}: error: no command given (try '{prog} --help')", file=sys.stderr)
        return 2
    try:
        status = func(args)
        return 0 if status is None else int(status)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (| head): stop quietly
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (ParamGraphError, OSError) as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {error_message(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug, not bad input: still one line unless --debug
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"{prog}: internal error: {type(err).__name__}: {one_line(err, limit=None)}{hint}",
              file=sys.stderr)
        return 1


def error_message(err: BaseException) -> str:
    """One line describing ``err``; file errors read ``<path>: <reason>``."""
    if isinstance(err, OSError) and err.filename is not None:
        reason = {FileNotFoundError: "no such file or directory",
                  PermissionError: "permission denied",
                  IsADirectoryError: "is a directory"}.get(type(err), err.strerror or str(err))
        return f"{err.filename}: {reason}"
    return one_line(err, limit=None) or type(err).__name__


# -- parser ----------------------------------------------------------------------------------------


def source_parser() -> argparse.ArgumentParser:
    """The parent parser of every command that reads a checkpoint: ``--arch``, ``--arch-kwargs``,
    ``--input-shape``, ``--input-spec`` and ``--trust-pickle`` (the options of
    :func:`paramgraph.convert`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--arch", metavar="MODULE:CALLABLE",
                        help="importable callable that builds the architecture of a state_dict "
                        "checkpoint, e.g. mypkg.nets:make_cnn or path/to/nets.py:make_cnn (the "
                        "current directory is importable)")
    parser.add_argument("--arch-kwargs", metavar="JSON", default=None,
                        help="keyword arguments for --arch as a JSON object, e.g. "
                        "'{\"channels\": 16}'")
    parser.add_argument("--input-shape", metavar="SHAPE", default=None,
                        help="shape of an example input for tracing, e.g. 2,1,8,8 (not needed "
                        "for .pt2 programs)")
    parser.add_argument("--input-spec", metavar="SPEC", default=None,
                        help="example inputs that are not one float tensor: "
                        "[NAME=][DTYPE:]SHAPE[:LOW-HIGH], several separated by ';', e.g. "
                        "int64:1,16:0-100 for token ids in [0, 100); forward arguments not "
                        "given keep their defaults")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow unpickling files that hold more than tensors (a whole "
                        "module, or a .pt2 with pickled parts); this can run code from the file")
    return parser


def add_subcommands(subparsers) -> None:
    """Register ``convert``, ``inspect``, ``restore``, ``export`` and ``draw`` on ``subparsers``.

    Each sub-parser gets ``func`` (its handler, taking the parsed namespace and returning an exit
    status) and a ``--debug`` flag; run the result with :func:`run_command`.
    """
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")

    source = source_parser()

    p = subparsers.add_parser(
        "convert", parents=[source, debug], help="convert checkpoints into graph files",
        description="Convert a checkpoint (.safetensors or .pt/.pth state_dict with --arch, a "
        ".pt2 torch.export program, or with --trust-pickle a pickled module) into a graph file "
        f"(safetensors; default name SRC{GRAPH_SUFFIX}). SRC may be a directory: every checkpoint "
        "in it is converted.")
    p.add_argument("src", metavar="SRC", help="checkpoint file or directory of checkpoints")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output graph file (for a directory SRC: output directory); default: "
                   f"next to the source, suffix {GRAPH_SUFFIX}")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="convert even if weights are NaN or infinite")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="worker processes for a directory (default 1)")
    p.set_defaults(func=cmd_convert)

    p = subparsers.add_parser(
        "inspect", parents=[source, debug], help="summarise a graph file or a checkpoint",
        description="Print a summary of a graph file, or of a checkpoint (converted in memory; a "
        "state_dict needs --arch and --input-shape): parameters, nodes and edges by type, "
        "layers, and the symmetry group. With --supported: the layers and operations the "
        "converters read.")
    p.add_argument("src", metavar="SRC", nargs="?", help="graph file or checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--supported", action="store_true",
                   help="list the layers and operations that convert, and exit")
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser(
        "restore", parents=[debug], help="write a graph file's state_dict back",
        description="Write the state_dict held by a graph file, bit-exact, as .safetensors "
        "(or .pt/.pth with torch.save).")
    p.add_argument("graph", metavar="GRAPH", help="graph file")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="output checkpoint (.safetensors, .pt or .pth)")
    p.set_defaults(func=cmd_restore)

    p = subparsers.add_parser(
        "export", parents=[debug], help="export a graph file through networkx",
        description="Write a graph file as GraphML or node-link JSON (networkx), with every node "
        "and edge field and value as attributes.")
    p.add_argument("graph", metavar="GRAPH", help="graph file")
    p.add_argument("--format", choices=("graphml", "json"), default=None,
                   help="output format (default: from the suffix of OUT)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="output file")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "draw", parents=[debug], help="draw a graph file as a layered picture",
        description="Draw a graph file: layers left to right, edges coloured by sign and weight. "
        "Graphs too big to draw legibly are summarised per layer, and the picture says so.")
    p.add_argument("graph", metavar="GRAPH", help="graph file")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="output image (.png, .svg or .pdf)")
    p.add_argument("--max-nodes", type=positive_int, default=None, metavar="N",
                   help="draw every neuron up to this many nodes (default 400)")
    p.add_argument("--max-edges", type=positive_int, default=None, metavar="N",
                   help="draw every edge up to this many edges (default 5000)")
    p.set_defaults(func=cmd_draw)

    from .cli_edit import add_edit_commands  # align, merge, canonicalize, prune

    add_edit_commands(subparsers, source, debug)


def _number_type(convert, valid, what: str, not_a_number: str):
    """An argparse ``type``: ``convert(text)``, refused with "expected <what>" unless
    ``valid``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {not_a_number}, got '{text}'") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'")
        return value

    return parse


# argparse types shared by every command of the command line
positive_int = _number_type(int, lambda v: v >= 1, "a positive integer", "a positive integer")
nonneg_int = _number_type(int, lambda v: v >= 0, "a non-negative integer", "an integer")
nonneg_float = _number_type(float, lambda v: not v < 0, "a non-negative number", "a number")
unit_interval = _number_type(float, lambda v: 0 <= v < 1, "a number in [0, 1)", "a number")


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"2,1,8,8"`` -> ``(2, 1, 8, 8)``; raises ParamGraphError for anything else."""
    from .inputs import parse_shape

    return None if text is None else parse_shape(text)


def parse_input_spec(text: str | None) -> list | None:
    """``--input-spec`` as a list of :class:`~paramgraph.inputs.InputSpec` (None if not given);
    raises ParamGraphError naming the part that does not parse."""
    from .inputs import parse_input_spec as parse

    return None if text is None else parse(text)


def parse_arch_kwargs(text: str | None) -> dict:
    """The ``--arch-kwargs`` JSON object as a dict; raises ParamGraphError if it is not one."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ParamGraphError(f"--arch-kwargs is not valid JSON ({err.msg} at character "
                              f"{err.pos})") from None
    if not isinstance(value, dict):
        raise ParamGraphError(f"--arch-kwargs must be a JSON object, got {type(value).__name__}")
    return value


# -- convert ---------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    """Handler of ``paramgraph convert``."""
    from .errors import CheckpointError

    src = Path(args.src)
    options = _convert_options(args)
    if src.is_dir():
        return _convert_directory(src, args, options)
    if not src.exists():
        raise CheckpointError(src, "no such file or directory")
    out = _default_output(src, args.output)
    lines, summary = _convert_file(str(src), str(out), options)
    for line in lines:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    print(f"{src} -> {out}: {summary}")
    return 0


def _convert_options(args) -> dict:
    return {
        "arch": args.arch, "arch_kwargs": parse_arch_kwargs(args.arch_kwargs),
        "input_shape": parse_input_shape(args.input_shape), "trust_pickle": args.trust_pickle,
        "input_spec": parse_input_spec(args.input_spec),
        "allow_nonfinite": getattr(args, "allow_nonfinite", False),
    }


def _default_output(src: Path, output: str | None) -> Path:
    if output is None:
        out = src.with_suffix(GRAPH_SUFFIX)
    else:
        out = Path(output)
        if out.is_dir():
            out = out / (src.stem + GRAPH_SUFFIX)
    if out.exists() and out.resolve() == src.resolve():
        raise ParamGraphError(f"{out}: the output would overwrite the checkpoint itself; choose "
                              "another -o")
    return out


@without_pyg
def _convert_file(src: str, out: str, options: dict) -> tuple[list[str], str]:
    """Convert one file and save it; returns (warning lines, a one-line description)."""
    from .convert import convert_checkpoint
    from .graphfile import save_graph

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = convert_checkpoint(src, **options)
        save_graph(converted.graph, out, extra=converted.extra, metadata=converted.metadata)
    g = converted.graph
    return (_warning_lines(caught, src),
            f"{g.num_params} parameters, {g.num_nodes} nodes, {g.edge_index.size(1)} edges")


def _warning_lines(caught, src: str) -> list[str]:
    lines = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, FutureWarning, PendingDeprecationWarning)):
            continue
        lines.append(f"{src}: {one_line(str(w.message), limit=None)}")
    return lines


def _convert_job(job: tuple[str, str, dict]) -> tuple[str, str, list[str], str | None]:
    """Worker: convert one file; returns (src, out, warnings, error line or None). Never raises
    for a bad file, so one bad checkpoint does not stop the others."""
    src, out, options = job
    try:
        lines, _ = _convert_file(src, out, options)
        return src, out, lines, None
    except (ParamGraphError, OSError) as err:
        return src, out, [], error_message(err)
    except Exception as err:  # a bug on this file: report it with the file, go on
        return src, out, [], f"{src}: internal error: {type(err).__name__}: {one_line(err, limit=None)}"


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)


def _worker_context():
    """Processes for ``--workers``: forked from a clean server that has imported paramgraph once
    (no per-worker import, no fork of a process with running threads); spawn where there is no
    fork server."""
    import multiprocessing

    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(["paramgraph.cli"])
    return ctx


def _convert_directory(src: Path, args, options: dict) -> int:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    from .sniff import is_graph_file

    candidates = sorted(f for f in src.iterdir() if f.is_file() and not f.name.startswith(".")
                        and f.suffix.lower() in CHECKPOINT_SUFFIXES)
    files = [f for f in candidates if not is_graph_file(f)]
    skipped = len(candidates) - len(files)
    if not files:
        raise ParamGraphError(f"{src}: no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}) in "
                              "this directory")
    out_dir = Path(args.output) if args.output else src
    if out_dir.exists() and not out_dir.is_dir():
        raise ParamGraphError(f"{out_dir}: exists and is not a directory (SRC is a directory, so "
                              "-o must be one)")
    stems = Counter(f.stem for f in files)  # a.pt and a.safetensors would both give a.pgraph
    jobs = [(str(f), str(out_dir / ((f.stem if stems[f.stem] == 1 else f.name) + GRAPH_SUFFIX)),
             options) for f in files]
    results = []
    bar = tqdm(total=len(jobs), desc="converting", unit="file", file=sys.stderr, disable=None)
    try:
        if args.workers <= 1 or len(jobs) == 1:
            for job in jobs:
                results.append(_convert_job(job))
                bar.update()
        else:
            ctx = _worker_context()
            with ProcessPoolExecutor(max_workers=min(args.workers, len(jobs)), mp_context=ctx,
                                     initializer=_worker_init) as pool:
                futures = {pool.submit(_convert_job, job): job for job in jobs}
                for future in as_completed(futures):
                    job = futures[future]
                    try:
                        results.append(future.result())
                    except BrokenProcessPool:
                        results.append((job[0], job[1], [], f"{job[0]}: the worker process "
                                        "converting it died"))
                    bar.update()
    finally:
        bar.close()
    failed = sorted((r for r in results if r[3] is not None), key=lambda r: r[0])
    for src_file, _, lines, _ in sorted(results, key=lambda r: r[0]):
        for line in lines:
            print(f"{PROG}: warning: {line}", file=sys.stderr)
    for _, _, _, message in failed:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    done = len(results) - len(failed)
    note = f", skipped {skipped} graph file(s)" if skipped else ""
    print(f"converted {done} of {len(jobs)} checkpoints from {src} into {out_dir}"
          f"{note}; {len(failed)} failed")
    return 2 if failed else 0


# -- inspect ---------------------------------------------------------------------------------------


@without_pyg
def cmd_inspect(args: argparse.Namespace) -> int:
    """Handler of ``paramgraph inspect``."""
    from .convert import convert_checkpoint
    from .graphfile import read_graph_file
    from .sniff import sniff_format

    if getattr(args, "supported", False):
        from .export import SUPPORTED_EXPORT
        from .trace import SUPPORTED

        print(f"live modules (--arch, torch.fx; torch.export when fx cannot trace):\n  "
              f"{SUPPORTED}\n.pt2 programs (torch.export, ATen operators):\n  {SUPPORTED_EXPORT}")
        return 0
    if args.src is None:
        raise ParamGraphError("inspect needs SRC (a graph file or checkpoint), or --supported")
    src = Path(args.src)
    if sniff_format(src) == "graph":
        gf = read_graph_file(src)
        graph, extra, meta, kind = gf.graph, gf.extra, gf.metadata, "graph file"
    else:
        options = _convert_options(args)
        options["allow_nonfinite"] = True  # inspecting is how one finds the bad values
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted = convert_checkpoint(src, **options)
        for line in _warning_lines(caught, str(src)):
            print(f"{PROG}: warning: {line}", file=sys.stderr)
        graph, extra, meta, kind = converted.graph, converted.extra, converted.metadata, \
            "checkpoint"
    info = summarize(graph, extra=extra)
    meta = {k: v for k, v in meta.items() if k != "keys"}  # the key order is for restore only
    info = {"file": str(src), "kind": kind, **info, "metadata": meta}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_summary(info))
    return 0


def summarize(graph, extra: dict | None = None) -> dict:
    """A JSON-ready summary of ``graph``: parameters, nodes/edges by type, layers, symmetries.

    Keys: ``parameters``, ``tensors`` (converted tensors), ``weight_tensors``, ``dtype``,
    ``nonfinite_values``, ``nodes`` (``total``, ``by_type``), ``edges`` (``total``, ``values``,
    ``by_type``), ``activations``, ``layers`` (``count``, ``nodes_per_layer``), ``symmetry``
    (``permutable_sets``, ``permutable_set_sizes``, ``scalable_neurons``,
    ``sign_symmetric_neurons``, ``attention_blocks``, ``attention_heads``), ``unplaced`` and
    ``extra`` (names of state_dict entries not in the graph), ``tensor_list``.
    """
    import torch

    from .types import Activation, EdgeType, NodeType

    def by(enum, values):
        counts = torch.bincount(values.long(), minlength=len(enum)).tolist() if values.numel() \
            else [0] * len(enum)
        return {m.name.lower(): counts[int(m)] for m in enum if counts[int(m)]}

    layer = graph.node_layer.long()
    per_layer = torch.bincount(layer).tolist() if layer.numel() else []
    group, pos = graph.perm_group[graph.perm_group >= 0], graph.perm_pos[graph.perm_group >= 0]
    # a set's size is its number of distinct positions (tied node sets share positions)
    width = int(pos.max()) + 1 if pos.numel() else 1
    sizes = torch.bincount(torch.unique(group * width + pos) // width)
    sizes = sizes[sizes > 0].tolist()
    heads, blocks = _count_heads(graph)
    values = torch.cat([graph.edge_value.double().flatten(),
                        graph.node_value.double()[graph.node_mask]])
    return {
        "parameters": int(graph.num_params),
        "tensors": len(graph.segments),
        "weight_tensors": sum(1 for s in graph.segments if s.kind == "edge"),
        "dtype": str(graph.edge_value.dtype).removeprefix("torch."),
        "nonfinite_values": int((~torch.isfinite(values)).sum()),
        "nodes": {"total": int(graph.num_nodes), "by_type": by(NodeType, graph.node_type)},
        "edges": {"total": int(graph.edge_index.size(1)), "values": int(graph.edge_value.numel()),
                  "by_type": by(EdgeType, graph.edge_type)},
        "activations": by(Activation, graph.node_act),
        "layers": {"count": len(per_layer), "nodes_per_layer": per_layer},
        "symmetry": {
            "permutable_sets": len(sizes),
            "permutable_set_sizes": sorted(sizes, reverse=True),
            "scalable_neurons": int(graph.node_scale.sum()),
            "sign_symmetric_neurons": int(graph.node_sign.sum()),
            "attention_blocks": blocks,
            "attention_heads": heads,
        },
        "unplaced": list(graph.segments.unplaced),
        "extra": sorted(extra or {}),
        "tensor_list": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "kind": s.kind}
                        for s in graph.segments],
    }


def _count_heads(graph) -> tuple[int, int]:
    """(attention heads, attention blocks): query nodes form one contiguous run per block."""
    import torch

    from .types import NodeType

    q = (graph.node_type == int(NodeType.ATTN_Q)).nonzero().flatten()
    if q.numel() == 0:
        return 0, 0
    head = graph.node_head[q]
    new_block = torch.ones(q.numel(), dtype=torch.bool)
    new_block[1:] = (q[1:] != q[:-1] + 1) | (head[1:] < head[:-1])
    block = torch.cumsum(new_block.long(), 0)
    pairs = torch.unique(block * (int(head.max()) + 1) + head)
    return int(pairs.numel()), int(block[-1])


def format_summary(info: dict) -> str:
    """The text form of :func:`summarize`'s dict (plus ``file``/``kind``/``metadata``)."""
    sym = info["symmetry"]
    sizes = sym["permutable_set_sizes"]
    size_text = ", ".join(f"{s}x{n}" if n > 1 else str(s)
                          for s, n in sorted(Counter(sizes).items(), reverse=True))
    lines = [
        f"{info['file']} ({info['kind']})",
        f"  parameters      {info['parameters']:,} in {info['tensors']} tensors "
        f"({info['weight_tensors']} weight tensors), stored as {info['dtype']}",
        f"  nodes           {info['nodes']['total']:,}: {_counts(info['nodes']['by_type'])}",
        f"  edges           {info['edges']['total']:,} holding {info['edges']['values']:,} values: "
        f"{_counts(info['edges']['by_type'])}",
        f"  layers          {info['layers']['count']} (nodes per layer: "
        f"{' '.join(map(str, info['layers']['nodes_per_layer']))})",
        f"  activations     {_counts(info['activations'])}",
        "  symmetry group",
        f"    permutable channel sets  {sym['permutable_sets']}"
        + (f" (sizes {size_text})" if sizes else ""),
        f"    scalable neurons         {sym['scalable_neurons']}",
        f"    sign-symmetric neurons   {sym['sign_symmetric_neurons']}",
        f"    attention heads          {sym['attention_heads']}"
        + (f" in {sym['attention_blocks']} blocks" if sym["attention_blocks"] else ""),
    ]
    if info["nonfinite_values"]:
        lines.append(f"  WARNING         {info['nonfinite_values']} values are NaN or infinite")
    if info["extra"]:
        lines.append(f"  not in graph    {len(info['extra'])} state_dict entries kept verbatim: "
                     f"{_names(info['extra'])}")
    elif info["unplaced"]:
        lines.append(f"  not in graph    {_names(info['unplaced'])}")
    meta = info.get("metadata") or {}
    if meta:
        lines.append("  source          " + ", ".join(f"{k}={v}" for k, v in sorted(meta.items())))
    lines.append("  tensors")
    width = max((len(t["name"]) for t in info["tensor_list"]), default=0)
    for t in info["tensor_list"]:
        lines.append(f"    {t['name']:<{width}}  {t['kind']:<4}  {t['dtype']:<8}  "
                     f"{tuple(t['shape'])}")
    return "\n".join(lines)


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"


def _names(names: list[str], limit: int = 6) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# -- restore / export / draw -----------------------------------------------------------------------


@without_pyg
def cmd_restore(args: argparse.Namespace) -> int:
    """Handler of ``paramgraph restore``."""
    from .inverse import to_state_dict
    from .checkpoint import save_state_dict
    from .graphfile import read_graph_file

    gf = read_graph_file(args.graph)
    try:
        state = to_state_dict(gf.graph)
    except ParamGraphError as err:
        raise ParamGraphError(f"{args.graph}: {err}") from err
    for key, value in gf.extra.items():
        state.setdefault(key, value)
    with contextlib.suppress(ValueError, TypeError):  # the checkpoint's own key order, if known
        order = [k for k in json.loads(gf.metadata.get("keys", "[]")) if k in state]
        state = {**{k: state[k] for k in order}, **state}
    out = save_state_dict(state, args.output)
    print(f"{args.graph} -> {out}: {len(state)} tensors")
    return 0


@without_pyg
def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``paramgraph export``."""
    import networkx as nx

    from .atomic import atomic_path, atomic_write
    from .graphfile import read_graph_file

    out = Path(args.output)
    fmt = args.format or {".graphml": "graphml", ".json": "json"}.get(out.suffix.lower())
    if fmt is None:
        raise ParamGraphError(f"{out}: cannot tell the format from the suffix; give --format "
                              "graphml or --format json")
    gf = read_graph_file(args.graph)
    g = gf.graph.to_networkx(values=True)
    segments = gf.graph.segments.to_dict()
    if fmt == "graphml":
        for _, attrs in g.nodes(data=True):
            _graphml_attrs(attrs)
        for _, _, attrs in g.edges(data=True):
            _graphml_attrs(attrs)
        g.graph.update(format="paramgraph", segments=json.dumps(segments),
                       metadata=json.dumps(gf.metadata))
        with atomic_path(out) as tmp:
            nx.write_graphml(g, str(tmp))
    else:
        g.graph.update(format="paramgraph", segments=segments, metadata=gf.metadata)
        try:
            data = nx.node_link_data(g, edges="edges")
        except TypeError:  # networkx < 3.4 has no edges= argument
            data = nx.node_link_data(g)
        with atomic_write(out, "w", encoding="utf-8") as f:
            json.dump(_json_safe(data), f, allow_nan=False)
    print(f"{args.graph} -> {out}: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges "
          f"({fmt})")
    return 0


def _graphml_attrs(attrs: dict) -> None:
    # GraphML holds scalars only: a kernel (list of values) becomes a JSON string.
    for key, value in attrs.items():
        if isinstance(value, list):
            attrs[key] = json.dumps(_json_safe(value))


def _json_safe(obj):
    """Replace non-finite floats by the strings "NaN", "Infinity", "-Infinity" (valid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


@without_pyg
def cmd_draw(args: argparse.Namespace) -> int:
    """Handler of ``paramgraph draw``."""
    from .draw import MAX_EDGES, MAX_NODES, draw_graph
    from .graphfile import read_graph_file

    gf = read_graph_file(args.graph)
    title = gf.metadata.get("source") or os.path.basename(args.graph)
    summarised = draw_graph(gf.graph, args.output, title=title,
                            max_nodes=args.max_nodes or MAX_NODES,
                            max_edges=args.max_edges or MAX_EDGES)
    how = "summarised per layer" if summarised else "every neuron and edge"
    print(f"{args.graph} -> {args.output}: {how}")
    return 0
