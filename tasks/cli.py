"""The one ``paramgraph`` command line: the console script ``paramgraph``
(``paramgraph.tasks.cli:main`` in pyproject.toml) and ``python -m paramgraph`` both run
:func:`main`, so both offer the same commands.

The checkpoint commands (convert, inspect, restore, export, draw) are registered from
:func:`paramgraph.cli.add_subcommands` and run through :func:`paramgraph.cli.run_command`, which
gives every command the same error policy (one line on stderr, exit status 2, traceback only with
``--debug``). The task commands are registered here on top of them (``paramgraph COMMAND --help``
for every option)::

    paramgraph zoo make --kind hetero|cnn|inr --size N --out DIR [--workers W] [--seed S]
                        [--shard I/N]
    paramgraph zoo merge DIR
    paramgraph zoo cache DIR [--verify] [--rebuild]
    paramgraph zoo info DIR
    paramgraph zoo import SRC --out DIR [--format checkpoints|pgraph|small-cnn-zoo]
                          [--labels CSV] [--arch M:C --arch-kwargs JSON --input-shape S]
                          [--group-column C] [--split-column C] [--workers W] [--skip-bad]
    paramgraph train --task generalization|inr-class|inr-edit --zoo DIR --mode quasi|strict|perm
                     --out RUN [--epochs E --hidden H --layers L --lr LR --seed S --threads T ...]
    paramgraph train --task regression|classification --target COLUMN --zoo DIR --out RUN ...
    paramgraph train --resume --out RUN
    torchrun --nproc_per_node=N [--nnodes ...] -m paramgraph train ...   (data-parallel)
    paramgraph eval RUN [--split test]
    paramgraph plot RUN
    paramgraph baseline --task generalization --zoo DIR   (or --task regression --target COLUMN)
    paramgraph predict RUN CKPT... [-o OUT.csv] [--json] [--arch M:C --input-shape S]
    paramgraph edit --metanet RUN --input CKPT -o OUT.safetensors [--arch M:C --input-shape S]
    paramgraph demo

Building the parser imports neither torch nor torch_geometric (the choices come from light
registries), so ``paramgraph --help`` is quick; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from paramgraph import __version__
from paramgraph import cli as pg_cli
from paramgraph.cli import nonneg_float, nonneg_int, positive_int, unit_interval
from paramgraph.errors import ParamGraphError

from .precision import PRECISIONS
from .zoo_kinds import SPLIT_SETS

PROG = pg_cli.PROG


def build_parser() -> argparse.ArgumentParser:
    """The ``paramgraph`` parser: the checkpoint commands of :mod:`paramgraph.cli` and the task
    commands of :func:`add_task_commands`."""
    parser = argparse.ArgumentParser(
        prog="paramgraph", description="Neural-network checkpoints as parameter graphs: convert "
        "checkpoints, make model zoos, train metanets on them, edit weights.")
    parser.add_argument("--version", action="version", version=f"paramgraph {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    pg_cli.add_subcommands(sub)
    add_task_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return exit_.code if isinstance(exit_.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        print("paramgraph: error: no command given", file=sys.stderr)
        return 2
    return pg_cli.run_command(args)


# -- task commands --------------------------------------------------------------------------------

def add_task_commands(subparsers) -> None:
    """Register ``zoo``, ``train``, ``eval``, ``plot``, ``baseline``, ``edit`` and ``demo``.

    Each sub-parser gets ``func`` (its handler, returning an exit status) and ``--debug``; run
    them with :func:`paramgraph.cli.run_command`.
    """
    from .objectives import OBJECTIVES
    from paramgraph.models.defaults import EDGE_WIDTH, HIDDEN, LAYERS, MODES, TRAINING

    from .zoo_kinds import DEFAULT_CKPTS, INR_INITS, INR_SIDE, INR_STEPS, KINDS

    GENERALIZATION = OBJECTIVES["generalization"].training_settings("quasi")

    pos = positive_int
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--no-progress", action="store_true", help="no progress bars")
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=pos, default=None, metavar="T",
                         help="torch threads (default: torch's own choice)")

    zoo = subparsers.add_parser("zoo", parents=[debug], help="make and inspect model zoos",
                                description="Make and inspect model zoos of digit classifiers "
                                "and digit SIRENs.")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    p = zsub.add_parser(
        "make", parents=[debug, quiet], help="train a zoo (resumable)",
        description="Make a zoo in DIR: hetero (MLPs, CNNs, ViTs with random hyperparameters), "
        "cnn (one fixed small CNN, random hyperparameters) or inr (one SIREN per deformed view of a digit). "
        "Interrupted? Run the same command again: finished networks are kept.")
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--size", type=pos, required=True, metavar="N", help="number of networks")
    p.add_argument("--out", required=True, metavar="DIR", help="zoo directory")
    p.add_argument("--workers", type=pos, default=1, metavar="W", help="processes (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="zoo seed (default 0)")
    p.add_argument("--ckpts", type=pos, default=DEFAULT_CKPTS, metavar="C",
                   help=f"checkpoints per training run, hetero/cnn (default {DEFAULT_CKPTS})")
    p.add_argument("--inr-steps", type=pos, default=INR_STEPS, metavar="K",
                   help=f"Adam steps per SIREN fit (default {INR_STEPS})")
    p.add_argument("--inr-hidden", default="32,32", metavar="H,H",
                   help="SIREN hidden widths, e.g. 32,32 or 32,32,32 (default 32,32)")
    p.add_argument("--inr-init", choices=INR_INITS, default=INR_INITS[0],
                   help="SIRENs start from one shared initialisation (default) or one per image")
    p.add_argument("--inr-side", type=pos, default=INR_SIDE, metavar="PX",
                   help=f"resolution of the digit views the SIRENs draw (default {INR_SIDE})")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="make only shard I of N (0-based) into DIR; run all N (processes or "
                   "machines, same settings); the last to finish merges the zoo")
    p.set_defaults(func=cmd_zoo_make)
    p = zsub.add_parser("merge", parents=[debug],
                        help="merge the shards of a sharded zoo (metadata table and splits)")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_zoo_merge)
    p = zsub.add_parser("cache", parents=[debug, quiet],
                        help="build, verify or repair a zoo's graph cache",
                        description="Convert every network of the zoo into the on-disk graph "
                        "cache (sharded, memory-mapped) if it is not there yet; --verify checks "
                        "every shard's SHA-256; --rebuild also converts the corrupt shards again.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--verify", action="store_true", help="check every shard's checksum")
    p.add_argument("--rebuild", action="store_true", help="rebuild corrupt shards")
    p.set_defaults(func=cmd_zoo_cache)
    p = zsub.add_parser("info", parents=[debug], help="summarise a zoo")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_zoo_info)
    _add_zoo_import(zsub, debug, quiet)
    zoo.set_defaults(func=lambda args: _usage(zoo, "name a zoo command (make, merge, cache, "
                                                  "info, import)"))

    p = subparsers.add_parser(
        "train", parents=[debug, quiet, threads], help="train a metanet on a zoo",
        description="Train a metanet (AdamW, warm-up + cosine decay, gradient clipping) and keep "
        "the best checkpoint by validation score. Metrics per epoch go to RUN/metrics.csv.")
    p.add_argument("--task", choices=tuple(OBJECTIVES), help="what to learn")
    p.add_argument("--target", metavar="COLUMN", default=None,
                   help="the zoo column to predict, for --task regression (a numeric column) "
                   "or classification (a categorical one); 'paramgraph zoo info' lists them")
    p.add_argument("--zoo", metavar="DIR", help="zoo directory")
    p.add_argument("--mode", choices=MODES, default="quasi",
                   help="metanet symmetry mode (default quasi)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in RUN after an interruption (its config is reused)")
    p.add_argument("--epochs", type=pos, default=20)
    p.add_argument("--hidden", type=pos, default=HIDDEN,
                   help=f"metanet width (default {HIDDEN})")
    p.add_argument("--layers", type=pos, default=LAYERS,
                   help=f"message-passing rounds (default {LAYERS})")
    p.add_argument("--batch-size", type=pos, default=32)
    p.add_argument("--copies", type=pos, default=1, metavar="K",
                   help="inr-edit: output channel expansion, the weight head writes K SIRENs "
                   "whose outputs are averaged, decoded into one K times wider (default 1)")
    p.add_argument("--channels", type=nonneg_int, default=None, metavar="C",
                   help="value channels per neuron and edge (default hidden // 2); 0: a plain "
                   "edge/node GNN, about twice as fast per step (perm and quasi; strict needs "
                   "at least 1)")
    p.add_argument("--edge-width", type=pos, default=None, metavar="W",
                   help=f"width of the hidden edge features (default min(hidden, {EDGE_WIDTH})); "
                   "edges outnumber neurons, so this width sets most of a step's cost")
    p.add_argument("--probes", type=nonneg_int, default=None, metavar="P",
                   help="inr tasks: give the metanet probe features, each neuron's values at P "
                   "fixed coordinates (a square grid: 16, 64, ...; inr-class: 64 by default, "
                   "0 for none)")
    p.add_argument("--output-readout", action=argparse.BooleanOptionalAction, default=None,
                   help="the invariant head also reads the mean of the output neurons' features "
                   "(default: the task's; on for generalization and inr-class)")
    p.add_argument("--gauge-jitter", type=nonneg_float, default=None, metavar="R",
                   help="quasi: while training, move each gauged network by a random scale in "
                   "[1/R, R] and random signs before the backbone reads it (evaluation reads "
                   "the gauged network itself, exactly invariant; default off)")
    p.add_argument("--gauge-frames", nargs="+", default=None, metavar="SECTION/SIGNS",
                   help="quasi: read each network through these exact sections (e.g. "
                   "balanced/bias balanced/incoming unit/bias), one drawn per training batch, "
                   "all averaged in evaluation (exactly invariant; default: one frame)")
    p.add_argument("--prior-input", action="store_true",
                   help="the invariant head also reads the tree prior's prediction (needs the "
                   "prior; default off)")
    p.add_argument("--prior", action=argparse.BooleanOptionalAction, default=None,
                   help="generalization: the invariant head corrects gradient-boosted trees on "
                   "per-layer statistics of the exact section, cross-fitted on the training "
                   "runs (exactly invariant in quasi and strict mode; default: the task's)")
    p.add_argument("--compile", action="store_true",
                   help="run the message-passing rounds through torch.compile (~1.2x per step "
                   "on CPU once compiled; the first batches pay minutes of compilation; eager "
                   "fallback with a warning where it fails)")
    p.add_argument("--lr", type=nonneg_float, default=2e-3)
    p.add_argument("--weight-decay", type=nonneg_float, default=None,
                   help=f"AdamW weight decay (default: the task's; generalization "
                   f"{GENERALIZATION['weight_decay']}, others {TRAINING['weight_decay']})")
    p.add_argument("--warmup", type=nonneg_float, default=0.05,
                   help="fraction of the steps spent warming up (default 0.05)")
    p.add_argument("--clip", type=nonneg_float, default=1.0,
                   help="gradient-norm clip, 0 for none (default 1)")
    p.add_argument("--ema", type=unit_interval, default=None, metavar="DECAY",
                   help="evaluate and keep a moving average of the weights with this decay per "
                   f"step, 0 for the weights themselves (default: the task's; generalization "
                   f"{GENERALIZATION['ema']}, others {TRAINING['ema']:g})")
    p.add_argument("--rank-loss", type=nonneg_float, default=None, metavar="W",
                   help="add a pairwise rank term (a surrogate of Kendall tau) with weight W to "
                   "the squared error, 0 for none (generalization and regression; default: "
                   f"the task's; generalization {GENERALIZATION['rank_loss']:g}, regression "
                   f"{TRAINING['rank_loss']:g})")
    p.add_argument("--augment", type=nonneg_float, default=0.0, metavar="R",
                   help="move every training network by a random function-preserving element "
                   "each step: scales log-uniform in [1/R, R] and random signs (R > 1; default "
                   "0: off). For perm, which is not invariant to them")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="the training forward passes': fp32, or bf16 (matrix products in "
                   "bfloat16 under autocast; ~1.5x faster steps on CPUs with AVX512-BF16 or AMX "
                   "and on GPUs; evaluation stays fp32; default fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splits", choices=tuple(SPLIT_SETS), default="id",
                   help="id: train/val/test; ood: hold out the ViTs of a hetero zoo as test; "
                   "swap: keep the epoch best on the test split and score the validation split "
                   "(a second held-out estimate)")
    p.add_argument("--max-train", type=pos, default=None, metavar="N",
                   help="use only the first N training networks")
    p.add_argument("--stop-after", type=pos, default=None, metavar="E",
                   help="stop after E epochs in this call; continue later with --resume")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--workers", type=int, default=0, metavar="W",
                   help="DataLoader worker processes per training process (default 0)")
    p.add_argument("--rebuild-cache", action="store_true",
                   help="verify the zoo's graph cache first and rebuild corrupt shards")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("eval", parents=[debug, threads],
                              help="score a run's best metanet on a split")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--zoo", default=None, metavar="ZOO",
                   help="score it on this zoo's split instead of the run's own zoo (writes "
                   "RUN/eval-SPLIT-on-ZOONAME.json)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("plot", parents=[debug],
                              help="draw a run's learning curves (and predicted vs true)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.set_defaults(func=cmd_plot)

    p = subparsers.add_parser("baseline", parents=[debug],
                              help="score the weight-statistics baseline on a zoo")
    p.add_argument("--task", choices=tuple(OBJECTIVES), required=True)
    p.add_argument("--target", metavar="COLUMN", default=None,
                   help="the zoo column to predict (regression, classification)")
    p.add_argument("--zoo", metavar="DIR", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splits", choices=tuple(SPLIT_SETS), default="id",
                   help="id: train/val/test; ood: hold out a hetero zoo's ViTs; swap: score "
                   "the zoo's validation split")
    p.add_argument("--features", default="statistics", metavar="SET",
                   help="statistics: per-tensor weight statistics (the baseline); rendered "
                   "(SIREN zoos): the image each SIREN draws on an 8x8 grid, what the output "
                   "neuron's default probe features hold")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_baseline)

    _add_predict(subparsers, debug, threads)

    p = subparsers.add_parser(
        "edit", parents=[debug, threads], help="edit checkpoints with a trained weight-head metanet",
        description="Apply the weight head of an inr-edit run to a checkpoint (or every "
        "*.safetensors in a directory) and write the edited checkpoint, which loads into the "
        "original architecture. Zoo checkpoints carry their architecture; others need --arch "
        "and --input-shape (as for 'paramgraph convert') or --spec.")
    p.add_argument("--metanet", required=True, metavar="RUN", help="run directory")
    p.add_argument("--input", required=True, metavar="CKPT", help="checkpoint or directory")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output checkpoint (.safetensors) or directory")
    p.add_argument("--spec", default=None, metavar="JSON",
                   help="zoo architecture spec, e.g. '{\"family\": \"siren\", \"hidden\": [32, 32]}'")
    p.add_argument("--arch", metavar="MODULE:CALLABLE", default=None)
    p.add_argument("--arch-kwargs", metavar="JSON", default=None)
    p.add_argument("--input-shape", metavar="SHAPE", default=None)
    p.set_defaults(func=cmd_edit)

    p = subparsers.add_parser(
        "demo", parents=[debug], help="the whole story on a small zoo (under 10 minutes)",
        description="Make (or reuse) a small hetero zoo, train quasi, strict and perm metanets "
        "and the statistics baseline for generalisation prediction, print one table.")
    p.add_argument("--size", type=pos, default=None, help="zoo size (default: the demo's)")
    p.add_argument("--epochs", type=pos, default=None)
    p.add_argument("--out", default=None, metavar="DIR", help="runs directory (default runs/demo)")
    p.add_argument("--zoo", default=None, metavar="DIR", help="zoo directory (default .cache/...)")
    p.set_defaults(func=cmd_demo)


def _add_zoo_import(zsub, debug, quiet) -> None:
    """Register ``paramgraph zoo import``."""
    from .zoo_kinds import IMPORT_FORMATS

    p = zsub.add_parser(
        "import", parents=[pg_cli.source_parser(), debug, quiet],
        help="make a zoo of your own checkpoints and labels",
        description="Import a folder of checkpoints with a labels.csv (a 'file' column relative "
        "to SRC, any label columns; optional per-row 'arch', 'arch_kwargs', 'input_shape'), a "
        "folder of graph files (--format pgraph), or the published Small CNN Zoo layout "
        "(--format small-cnn-zoo: weights.npy, layout.csv, metrics.csv(.gz)). Every network is "
        "converted once into DIR; running the same command again converts only new or changed "
        "files. Then: paramgraph train --task regression --target COLUMN --zoo DIR ...")
    p.add_argument("src", metavar="SRC", help="source directory")
    p.add_argument("--out", required=True, metavar="DIR", help="zoo directory to write")
    p.add_argument("--format", choices=IMPORT_FORMATS, default=IMPORT_FORMATS[0],
                   help="what SRC holds (default checkpoints)")
    p.add_argument("--labels", metavar="CSV", default=None,
                   help="the labels table (default SRC/labels.csv)")
    p.add_argument("--group-column", metavar="COLUMN", default=None,
                   help="labels column naming each checkpoint's group (e.g. its training run); "
                   "a group's checkpoints always share a split")
    p.add_argument("--split-column", metavar="COLUMN", default=None,
                   help="labels column with train/val/test per row (default: random 70/15/15 "
                   "by group)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the random splits (default 0)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="W",
                   help="conversion processes (default 1)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out checkpoints that fail (listed in the zoo) instead of "
                   "stopping with exit status 2")
    p.add_argument("--steps", default="final", metavar="final|all|N,N",
                   help="small-cnn-zoo: which checkpoints of each run (default final)")
    p.set_defaults(func=cmd_zoo_import)


def _add_predict(subparsers, debug, threads) -> None:
    """Register ``paramgraph predict``."""
    p = subparsers.add_parser(
        "predict", parents=[pg_cli.source_parser(), debug, threads],
        help="apply a trained metanet to new checkpoints",
        description="Predict with a run's best metanet for each checkpoint (or graph file, or "
        "directory of them): CSV with a 'file' column and one column per output (the value for "
        "regression; the class and one probability per class for classification). State_dict "
        "checkpoints need --arch and --input-shape (or --input-spec), as for 'paramgraph "
        "convert'. Files that "
        "cannot be converted are named; the rest are still predicted (exit status 2).")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("inputs", nargs="+", metavar="CKPT", help="checkpoints, graph files, folders")
    p.add_argument("-o", "--output", metavar="OUT", default=None,
                   help="output file (default: standard output)")
    p.add_argument("--json", action="store_true", help="write JSON instead of CSV")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.set_defaults(func=cmd_predict)


def _usage(parser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def cmd_zoo_make(args) -> int:
    """Handler of ``paramgraph zoo make``."""
    from .sharding import parse_shard
    from .zoo import make_zoo, zoo_summary_text

    hidden = _int_list(args.inr_hidden, "--inr-hidden")
    shard = parse_shard(args.shard) if args.shard is not None else None
    zoo = make_zoo(args.out, args.kind, args.size, workers=args.workers, seed=args.seed,
                   ckpts=args.ckpts, inr_steps=args.inr_steps, inr_hidden=hidden,
                   inr_init=args.inr_init, inr_side=args.inr_side,
                   progress=not args.no_progress, shard=shard)
    if zoo is None:
        print(f"shard {shard[0]}/{shard[1]} of zoo {args.out} done; the last shard to finish "
              f"merges the zoo (or run 'paramgraph zoo merge {args.out}')")
        return 0
    print(zoo_summary_text(zoo))
    return 0


def cmd_zoo_merge(args) -> int:
    """Handler of ``paramgraph zoo merge``."""
    from .zoo import merge_zoo, zoo_summary_text

    print(zoo_summary_text(merge_zoo(args.dir)))
    return 0


def cmd_zoo_cache(args) -> int:
    """Handler of ``paramgraph zoo cache``."""
    from .data import CorruptCacheError, cache_path, load_graphs, repair_cache, verify_cache
    from .zoo import Zoo

    zoo = Zoo(args.dir)
    if args.rebuild:
        fixed = repair_cache(zoo, progress=not args.no_progress)
        print(f"rebuilt {len(fixed)} shard(s) of {cache_path(zoo)}"
              + (": " + ", ".join(p.name for p in fixed) if fixed else ""))
        return 0
    cache = load_graphs(zoo, progress=not args.no_progress)
    if args.verify:
        bad = verify_cache(zoo)
        if bad:
            raise CorruptCacheError(
                f"graph cache {cache_path(zoo)}: corrupt shard(s) "
                f"{', '.join(p.name for p in bad)}; rebuild with 'paramgraph zoo cache "
                f"{args.dir} --rebuild'", bad[0], zoo.root)
    print(f"graph cache {cache_path(zoo)}: {len(cache)} graphs in {len(cache.counts)} shard(s)"
          + (", all checksums good" if args.verify else ""))
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ParamGraphError(f"{flag} '{text}': expected comma-separated positive integers")
    return values


def cmd_zoo_import(args) -> int:
    """Handler of ``paramgraph zoo import``."""
    from .importer import import_zoo
    from .zoo import zoo_summary_text

    result = import_zoo(
        args.src, args.out, fmt=args.format, labels=args.labels, arch=args.arch,
        arch_kwargs=pg_cli.parse_arch_kwargs(args.arch_kwargs),
        input_shape=pg_cli.parse_input_shape(args.input_shape),
        input_spec=pg_cli.parse_input_spec(args.input_spec),
        group_column=args.group_column, split_column=args.split_column, seed=args.seed,
        workers=args.workers, skip_bad=args.skip_bad, trust_pickle=args.trust_pickle,
        steps=args.steps, progress=not args.no_progress)
    for line in result.warnings:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    for line in result.failures:
        print(f"{PROG}: error: {line}", file=sys.stderr)
    done = f"{result.converted} converted, {result.reused} reused"
    if result.zoo is None:
        print(f"import into {args.out} unfinished: {len(result.failures)} network(s) failed "
              f"({done}); fix or remove them and run the same command again, or pass "
              "--skip-bad to leave them out", file=sys.stderr)
        return 2
    skipped = f", {len(result.failures)} left out" if result.failures else ""
    print(f"imported {len(result.zoo)} networks ({done}{skipped}) in "
          f"{result.seconds:.1f} s")
    print(zoo_summary_text(result.zoo))
    return 0


def cmd_predict(args) -> int:
    """Handler of ``paramgraph predict``."""
    from .io import atomic_write_text
    from .predict import predict_files, to_csv, to_json
    from .threads import threads

    with threads(args.threads):
        columns, failures = predict_files(
            args.run, args.inputs, arch=args.arch,
            arch_kwargs=pg_cli.parse_arch_kwargs(args.arch_kwargs),
            input_shape=pg_cli.parse_input_shape(args.input_shape),
            input_spec=pg_cli.parse_input_spec(args.input_spec),
            trust_pickle=args.trust_pickle, batch_size=args.batch_size, device=args.device)
    for line in failures:
        print(f"{PROG}: error: {line}", file=sys.stderr)
    text = (to_json if args.json else to_csv)(columns)
    if args.output is None:
        sys.stdout.write(text)
    elif columns["file"]:
        atomic_write_text(args.output, text)
        print(f"{len(columns['file'])} prediction(s) -> {args.output}"
              + (f"; {len(failures)} file(s) failed" if failures else ""), file=sys.stderr)
    return 2 if failures else 0


def cmd_zoo_info(args) -> int:
    """Handler of ``paramgraph zoo info``."""
    from .zoo import Zoo, zoo_summary, zoo_summary_text

    zoo = Zoo(args.dir)
    print(json.dumps(zoo_summary(zoo), indent=1) if args.json else zoo_summary_text(zoo))
    return 0


def _model_kwargs(args) -> dict:
    """The metanet options a training command sets (only those that differ from the default,
    so that a run's config.json names what was asked for)."""
    kwargs = {}
    if args.copies > 1:
        kwargs["copies"] = args.copies
    if args.compile:
        kwargs["compile"] = True
    if args.channels is not None:
        kwargs["channels"] = args.channels
    if args.edge_width is not None:
        kwargs["edge_width"] = args.edge_width
    if args.probes is not None:  # 0 switches off a task's default probes
        kwargs["probes"] = args.probes
    if args.output_readout is not None:
        kwargs["output_readout"] = args.output_readout
    if args.prior is not None:
        kwargs["prior"] = args.prior
    if args.gauge_jitter:
        kwargs["gauge_jitter"] = args.gauge_jitter
    if args.gauge_frames:
        kwargs["gauge_frames"] = list(args.gauge_frames)
    if args.prior_input:
        kwargs["prior_input"] = True
    return kwargs


def cmd_train(args) -> int:
    """Handler of ``paramgraph train``."""
    from .train import TrainConfig, train

    if args.resume:
        cfg = None
    else:
        missing = [f"--{k}" for k in ("task", "zoo") if getattr(args, k) is None]
        if missing:
            raise ParamGraphError(f"train needs {' and '.join(missing)} (or --resume)")
        cfg = TrainConfig(task=args.task, zoo=args.zoo, mode=args.mode, target=args.target,
                          hidden=args.hidden,
                          layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
                          clip=args.clip, ema=args.ema, rank_loss=args.rank_loss,
                          augment=args.augment, precision=args.precision,
                          seed=args.seed, splits=args.splits,
                          max_train=args.max_train,
                          model_kwargs=_model_kwargs(args))
    summary = train(cfg, args.out, resume=args.resume, threads=args.threads,
                    progress=not args.no_progress, stop_after=args.stop_after,
                    device=args.device, workers=args.workers, rebuild_cache=args.rebuild_cache)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun: rank 0 reports
    state = "complete" if summary["complete"] else "stopped (continue with --resume)"
    best = ", ".join(f"{k} {v:.4f}" for k, v in (summary["best"] or {}).items())
    speed = summary["graphs_per_s"]
    speed = f"; {speed:.1f} training graphs/s" if speed else ""
    print(f"run {summary['run']}: {summary['epochs_done']} epochs, {state}; best epoch "
          f"{summary['best_epoch']} (val {best}); {summary['seconds']:.1f} s{speed}")
    return 0


def cmd_eval(args) -> int:
    """Handler of ``paramgraph eval``."""
    from .train import evaluate_run

    result = evaluate_run(args.run, args.split, threads=args.threads, zoo=args.zoo)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        where = f" of {args.zoo}" if args.zoo else ""
        print(f"{args.run} {result['split']} ({result['zoo_split']}{where}, {result['n']} "
              f"networks): {metrics}")
        if "prior_only" in result:
            alone = ", ".join(f"{k} {v:.4f}" for k, v in result["prior_only"].items())
            print(f"  its tree prior alone: {alone}")
    return 0


def cmd_plot(args) -> int:
    """Handler of ``paramgraph plot``."""
    from .train import plot_run

    for path in plot_run(args.run, args.split):
        print(path)
    return 0


def cmd_baseline(args) -> int:
    """Handler of ``paramgraph baseline``."""
    from .baseline import FEATURE_SETS, fit_predict
    from .errors import TaskError
    from .objectives import get_objective
    from .zoo import Zoo

    zoo = Zoo(args.zoo)
    objective = get_objective(args.task, args.target)
    objective.check_zoo(zoo)
    if args.features not in FEATURE_SETS:
        raise TaskError(f"unknown --features '{args.features}' (known: "
                        f"{', '.join(FEATURE_SETS)})")
    names = SPLIT_SETS[args.splits]
    x_all = FEATURE_SETS[args.features](zoo)
    result = fit_predict(objective, zoo, names["train"], names["test"], seed=args.seed,
                         x_all=x_all)
    if args.json:
        print(json.dumps({"metrics": result["metrics"], "seconds": result["seconds"]}, indent=1))
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        task = args.task if args.target is None else f"{args.task} of {args.target}"
        print(f"{args.features} baseline, {task} on {zoo.root} ({names['test']}): {metrics} "
              f"({result['seconds']:.1f} s)")
    return 0


def cmd_edit(args) -> int:
    """Handler of ``paramgraph edit``."""
    from .edit import edit_path

    spec = None
    if args.spec is not None:
        try:
            spec = json.loads(args.spec)
        except json.JSONDecodeError as err:
            raise ParamGraphError(f"--spec is not valid JSON ({err.msg})") from None
    results = edit_path(args.metanet, args.input, args.output, spec=spec, arch=args.arch,
                        arch_kwargs=pg_cli.parse_arch_kwargs(args.arch_kwargs),
                        input_shape=pg_cli.parse_input_shape(args.input_shape),
                        threads=args.threads)
    for r in results:
        print(f"{r['input']} -> {r['output']} ({r['tensors']} tensors, largest weight change "
              f"{r['changed']:.3g})")
    return 0


def cmd_demo(args) -> int:
    """Handler of ``paramgraph demo``."""
    from .demo import run_demo

    kwargs = {k: v for k, v in (("size", args.size), ("epochs", args.epochs),
                                ("out", args.out), ("zoo_dir", args.zoo)) if v is not None}
    run_demo(**kwargs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
