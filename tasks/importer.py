"""``paramgraph zoo import``: a zoo made of the user's own networks and labels.

Three formats of source directory:

``checkpoints``    a folder of checkpoints (safetensors, ``torch.save`` state_dicts, ``.pt2``
                   programs, or graph files) with a ``labels.csv`` (see
                   :mod:`paramgraph.tasks.labels`); a state_dict needs its architecture
                   (``--arch`` or the row's ``arch`` column) and an example input shape.
``pgraph``         a folder of graph files made by ``paramgraph convert``, with a ``labels.csv``.
``small-cnn-zoo``  the published Small CNN Zoo layout (see :mod:`paramgraph.tasks.small_cnn_zoo`).

Every network is converted once into a graph file ``ZOO/graphs/<key>.pgraph``, where ``key`` is a
hash of the source's bytes (its SHA-256, also recorded in the network's row) and of the options
that shape its graph (architecture, its keyword arguments and the file defining it, input shape).
That makes an import resumable and incremental: running it again converts only what is new or
changed (a changed checkpoint gets a new key), and reuses everything else, whatever the order of
``labels.csv``. Conversion runs in ``--workers`` processes, one thread each, with a progress bar;
each architecture is traced once per process and later checkpoints of it are filled into that
template (:func:`paramgraph.from_state_dict`), which gives the same graph much faster.

A checkpoint that fails is named with the reason and the import converts the rest; then, without
``skip_bad``, the zoo is left unfinished (its graph files stay, so the next run resumes) and the
failures are returned; with it they are left out and listed in ``zoo.json``. The finished zoo is
an ordinary zoo directory (:class:`~paramgraph.tasks.zoo.Zoo`, kind ``imported``): manifest,
metadata table (the user's labels under ``labels``), splits and the graph cache that training
reads, so ``train``, ``eval``, ``baseline``, ``plot`` and ``zoo info`` work on it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from paramgraph.errors import ParamGraphError

from .errors import ZooError
from .io import sha256_file
from .labels import LabelTable, groups_and_splits, read_labels, source_options

GRAPHS = "graphs"
KEY_VERSION = 1  # part of every graph file's key: bump to convert everything again
GRAPH_SUFFIX = ".pgraph"
# what a state_dict's conversion needs, as the messages that ask for it say it
NEEDS_INPUT = ("--input-shape (e.g. 1,1,8,8), --input-spec (e.g. int64:1,16:0-100 for token "
               "ids) or an 'input_shape' column")


# -- sources: where one network comes from ---------------------------------------------------------

@dataclass(frozen=True)
class FileSource:
    """One file to convert: a checkpoint (state_dict with ``arch``, ``.pt2`` program, or with
    ``trust_pickle`` a pickled module) or a graph file. ``name``: how messages call it."""

    path: str
    name: str
    arch: str | None = None
    arch_kwargs: str = "{}"  # JSON, so that the source stays hashable and picklable
    input_shape: tuple[int, ...] | None = None
    arch_digest: str = ""  # SHA-256 of the .py file defining ``arch`` (a changed file is noticed)
    trust_pickle: bool = False
    arch_label: str = ""  # the architecture as the user wrote it
    # example inputs that are not one float tensor (token ids, several inputs): an --input-spec
    # in the canonical text of paramgraph.inputs.format_spec; it replaces ``input_shape``
    input_spec: str | None = None

    @property
    def arch_name(self) -> str:
        return self.arch_label or self.arch or "own architecture"

    def options(self) -> str:
        base = (self.arch, self.arch_kwargs, self.input_shape, self.arch_digest)
        return repr(base if self.input_spec is None else (*base, self.input_spec))

    def content_digest(self) -> str:
        return sha256_file(self.path)


def convert_source(source, templates: dict):
    """``(graph, extra, metadata)`` of one source (a :class:`FileSource` or a Small CNN Zoo
    row). ``templates``: a dict kept between calls; each architecture is traced once and later
    state_dicts of it are filled into its graph. Raises :class:`~paramgraph.ParamGraphError`
    (prefixed with the file) for anything that cannot be read or converted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(source, FileSource):
            return _convert_file(source, templates)
        return _convert_state(source.state_dict(), source.name, source.module,
                              source.input_shape, ("small-cnn-zoo", source.options()),
                              templates, {"source": source.name,
                                          "source_format": "small-cnn-zoo"})


def _convert_file(source: FileSource, templates: dict):
    from paramgraph.checkpoint import load_checkpoint
    from paramgraph.convert import convert_checkpoint
    from paramgraph.errors import CheckpointError
    from paramgraph.graphfile import read_graph_file
    from paramgraph.sniff import sniff_format

    if sniff_format(source.path) == "graph":
        gf = read_graph_file(source.path)
        return gf.graph, gf.extra, gf.metadata
    kwargs = json.loads(source.arch_kwargs)
    obj = load_checkpoint(source.path, trust_pickle=source.trust_pickle)
    specs = _specs(source.input_spec)
    if not isinstance(obj, dict):  # a .pt2 program or (trusted) pickled module: its own arch
        conv = convert_checkpoint(source.path, input_shape=source.input_shape,
                                  trust_pickle=source.trust_pickle, input_spec=specs)
        return conv.graph, conv.extra, conv.metadata
    if source.arch is None:
        raise CheckpointError(source.path, "holds a state_dict without its architecture; name "
                              "it with --arch FILE.py:CALLABLE or an 'arch' column in labels.csv")
    if source.input_shape is None and specs is None:
        raise CheckpointError(source.path, "tracing the architecture needs an example input; "
                              f"give {NEEDS_INPUT}")
    from paramgraph.architecture import build_architecture

    meta = {"source": Path(source.path).name, "source_format": "state_dict", "arch": source.arch,
            "arch_kwargs": source.arch_kwargs}
    if specs is None:
        meta["input_shape"] = ",".join(map(str, source.input_shape))
    else:
        meta["input_spec"] = source.input_spec
    what = f"{source.arch_name}(**{source.arch_kwargs})" if kwargs else source.arch_name
    return _convert_state(obj, source.path, lambda: build_architecture(source.arch, kwargs),
                          source.input_shape, (source.arch, source.arch_kwargs), templates, meta,
                          what, source.input_spec)


def _specs(input_spec: str | None) -> list | None:
    """The example inputs of a source's ``input_spec`` text (None: none given)."""
    from paramgraph.inputs import parse_input_spec

    return None if input_spec is None else parse_input_spec(input_spec)


def _example(input_shape, input_spec: str | None, dtype):
    """The example input a state_dict is traced with: the inputs of ``input_spec`` when given
    (token ids, several or keyword inputs), else a seeded standard normal tensor of
    ``input_shape``; both are the same every time, so a template is traced alike everywhere."""
    import torch
    from paramgraph.inputs import make_inputs

    if input_spec is not None:
        return make_inputs(_specs(input_spec), dtype)
    return torch.randn(*input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _convert_state(state: dict, name: str, build, input_shape, arch_key, templates: dict,
                   meta: dict, what: str = "its architecture", input_spec: str | None = None):
    """A state_dict's graph: filled into the template of its architecture, or traced (and kept
    as the template) the first time."""
    import paramgraph
    import torch
    from paramgraph.architecture import fit_state_dict
    from paramgraph.checkpoint import check_finite

    check_finite(state, name)
    key = (arch_key, tuple(input_shape or ()), input_spec,
           tuple((k, tuple(v.shape), str(v.dtype)) for k, v in state.items()))
    template = templates.get(key)
    if template is None:
        module = fit_state_dict(build(), state, name, what)
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
        example = _example(input_shape, input_spec, dtype)
        try:
            graph = paramgraph.from_module(module.eval(), example)
        except ParamGraphError as err:
            raise ParamGraphError(f"{name}: {err}") from None
        templates[key] = graph
    else:
        graph = paramgraph.from_state_dict(template, state)
    placed = set(graph.segments.names())
    extra = {k: v.detach() for k, v in state.items() if k not in placed}
    return graph, extra, {**meta, "keys": json.dumps(list(state))}


def spec_text(input_spec: list | None) -> str | None:
    """``input_spec`` as the canonical text a :class:`FileSource` holds (hashable, picklable,
    the same for the same inputs however they were written)."""
    from paramgraph.inputs import format_spec

    return format_spec(input_spec) if input_spec else None


def signature(graph) -> str:
    """A short hash of a graph's architecture (its tensors' names and shapes)."""
    text = json.dumps([(s.name, list(s.shape)) for s in graph.segments])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- entries: the networks of an import --------------------------------------------------------------

@dataclass
class Entry:
    """One network to import: its source, labels, group and split, and where it is listed."""

    source: object
    labels: dict
    group: object
    split: str | None
    where: str  # "labels.csv line 7"
    line: int
    name: str  # the source as the user wrote it


@dataclass
class ImportResult:
    """What an import did: the finished zoo (``None`` if failures left it unfinished), the
    failure lines, warnings, and how many graphs were converted and reused."""

    zoo: object
    root: Path
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    converted: int = 0
    reused: int = 0
    seconds: float = 0.0


def checkpoint_entries(src: Path, table: LabelTable, defaults: dict, fmt: str,
                       group_column: str | None, split_column: str | None,
                       trust_pickle: bool) -> list[Entry]:
    """The entries of a folder of checkpoints or graph files with its labels table. Checks every
    row's architecture options and file kind first, so that a missing ``--arch`` or
    ``--input-shape`` is one line naming the row, not one failure per checkpoint."""
    from paramgraph.sniff import sniff_format

    groups, splits = groups_and_splits(table, group_column, split_column)
    digests: dict[str, str] = {}
    out = []
    for k, row in enumerate(table.rows):
        opts = source_options(table, row, defaults)
        path = (src / row.file).resolve()
        try:
            kind = sniff_format(path)
        except ParamGraphError as err:
            raise ZooError(f"{table.where(row, 'file')}: {err}") from None
        if fmt == "pgraph" and kind != "graph":
            raise ZooError(f"{table.where(row, 'file')}: '{row.file}' is not a graph file; "
                           "--format pgraph imports files made by 'paramgraph convert' (use "
                           "--format checkpoints for checkpoints)")
        arch, label = None, {"graph": "graph file", "pt2": "torch.export"}.get(kind, "")
        if kind in ("safetensors", "torch", "pickle"):
            arch, label = _resolve_arch(table, row, opts, src, digests), opts.get("arch")
        out.append(Entry(FileSource(str(path), row.file, arch,
                                    json.dumps(opts.get("arch_kwargs") or {}, sort_keys=True),
                                    opts.get("input_shape"), digests.get(arch or "", ""),
                                    trust_pickle, label, opts.get("input_spec")),
                         row.values, groups[k], splits[k] if splits else None,
                         f"{table.path.name} line {row.line}", row.line, row.file))
    return out


def _resolve_arch(table: LabelTable, row, opts: dict, src: Path, digests: dict) -> str:
    """The row's architecture as an absolute ``file.py:Callable`` (or a module name), checked
    once per distinct architecture by building it; raises :class:`ZooError` naming the row."""
    from paramgraph.architecture import build_architecture

    column = "arch" if row.values.get("arch") is not None else None
    where = table.where(row, column) if column else f"{table.path} line {row.line}"
    arch = opts.get("arch")
    if arch is None:
        raise ZooError(f"{where}: '{row.file}' is a state_dict, which needs its architecture: "
                       "give --arch FILE.py:CALLABLE (or an 'arch' column) and --input-shape")
    if opts.get("input_shape") is None and opts.get("input_spec") is None:
        raise ZooError(f"{where}: '{row.file}' needs an example input for tracing: give "
                       f"{NEEDS_INPUT}")
    module, sep, attr = arch.partition(":")
    if module.endswith(".py") or os.sep in module:
        here = src / module if column and (src / module).is_file() else Path(module)
        arch = f"{here.resolve()}{sep}{attr}"
    key = f"{arch}|{json.dumps(opts.get('arch_kwargs') or {}, sort_keys=True)}"
    if key not in digests:
        try:
            build_architecture(arch, opts.get("arch_kwargs"))
        except ParamGraphError as err:
            raise ZooError(f"{where}: {err}") from None
        file = Path(arch.partition(":")[0])
        digests[key] = digests[arch] = sha256_file(file) if file.suffix == ".py" else ""
    return arch


def small_cnn_zoo_entries(src: Path, steps: str, input_shape, group_column: str | None,
                          split_column: str | None) -> tuple[list[Entry], list[str]]:
    """The entries of a Small CNN Zoo directory and its label columns."""
    from .small_cnn_zoo import SmallCnnZoo

    scz = SmallCnnZoo(src, steps, input_shape)
    for name, flag in ((group_column, "--group-column"), (split_column, "--split-column")):
        if name is not None and name not in scz.columns:
            raise ZooError(f"{flag} '{name}': {scz.metrics_path} has no such column")
    out = []
    for k in scz.rows:
        labels = scz.labels(k)
        group = labels.get(group_column) if group_column else scz.group(k)
        split = labels.get(split_column) if split_column else None
        if split_column and split not in ("train", "val", "test"):
            raise ZooError(f"{scz.metrics_path} line {k + 2}, column '{split_column}': {split!r} "
                           "is not train, val or test")
        out.append(Entry(scz.source(k), labels, group, split, f"{scz.metrics_path.name} line "
                         f"{k + 2}", k + 2, f"{scz.weights.name}[{k}]"))
    return out, scz.label_columns()


# -- converting ----------------------------------------------------------------------------------

_TEMPLATES: dict = {}  # per process: the traced graph of each architecture


def _job(job: tuple[int, object, str]) -> dict:
    """Worker: the graph file of one entry (converted, or reused if its key exists). Never
    raises for a bad source, so one bad checkpoint does not stop the others."""
    from paramgraph.cli import error_message
    from paramgraph.graphfile import read_graph_file, save_graph

    k, source, graphs = job
    try:
        digest = source.content_digest()
        key = hashlib.sha256(f"{digest}|{source.options()}|{KEY_VERSION}".encode()) \
            .hexdigest()[:24]
        path = Path(graphs) / f"{key}{GRAPH_SUFFIX}"
        reused = path.is_file()
        if reused:
            graph = read_graph_file(path).graph
        else:
            graph, extra, meta = convert_source(source, _TEMPLATES)
            save_graph(graph, path, extra=extra, metadata=meta)
        return {"k": k, "sha256": digest, "file": f"{GRAPHS}/{path.name}", "reused": reused,
                "signature": signature(graph), "num_params": int(graph.num_params)}
    except (ParamGraphError, OSError) as err:
        message = error_message(err)
    except Exception as err:  # a bug on this file: report it with the file, go on
        message = f"internal error: {type(err).__name__}: {err}"
    path = str(getattr(source, "path", ""))
    if path and message.startswith(path):  # name it as the user wrote it
        message = source.name + message[len(path):]
    elif not message.startswith(source.name):
        message = f"{source.name}: {message}"
    return {"k": k, "error": message}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def convert_entries(entries: list[Entry], graphs: Path, workers: int, desc: str,
                    progress: bool) -> list[dict]:
    """Convert (or reuse) the graph file of every entry, in ``workers`` processes, with a
    progress bar; returns one result per entry, in order (``error`` for a failure)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    from .threads import threads

    jobs = [(k, e.source, str(graphs)) for k, e in enumerate(entries)]
    results: list[dict] = [{}] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="net", disable=not progress)
    try:
        if workers <= 1 or len(jobs) == 1:
            with threads(1):
                for job in jobs:
                    results[job[0]] = _job(job)
                    bar.update()
            return results
        import multiprocessing as mp

        # fork, as 'zoo make' does: no re-import per worker, and each worker runs one thread
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                                 initializer=_worker_init) as pool:
            futures = {pool.submit(_job, job): job for job in jobs}
            for future in as_completed(futures):
                k, source, _ = futures[future]
                try:
                    results[k] = future.result()
                except BrokenProcessPool:
                    results[k] = {"k": k, "error": f"{source.name}: the worker process "
                                  "converting it died"}
                bar.update()
    finally:
        bar.close()
    return results


# -- the import ---------------------------------------------------------------------------------

def import_zoo(src: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "checkpoints",
               labels: str | os.PathLike | None = None, arch: str | None = None,
               arch_kwargs: dict | None = None, input_shape: tuple[int, ...] | None = None,
               group_column: str | None = None, split_column: str | None = None,
               seed: int = 0, workers: int = 1, skip_bad: bool = False,
               trust_pickle: bool = False, steps: str = "final",
               progress: bool = True, input_spec: list | None = None) -> ImportResult:
    """Import the networks in ``src`` (format ``fmt``) with their labels into the zoo ``out``.
    ``input_spec`` (:class:`~paramgraph.inputs.InputSpec` list, what ``--input-spec`` parses to):
    example inputs that are not one float tensor (token ids), in place of ``input_shape``.

    Returns an :class:`ImportResult`; its ``zoo`` is ``None`` when some networks failed and
    ``skip_bad`` is off (the failures are in ``failures``, the zoo is left unfinished and
    resumes on the next call). Raises :class:`ZooError` with one line for bad input found before
    converting (labels, columns, architecture, output directory): nothing is written then.
    """
    from .zoo_kinds import IMPORT_FORMATS

    start = time.time()
    src, root = Path(src), Path(out)
    if fmt not in IMPORT_FORMATS:
        raise ZooError(f"unknown import format '{fmt}' (known: {', '.join(IMPORT_FORMATS)})")
    if not src.is_dir():
        raise ZooError(f"source directory '{src}' does not exist")
    if workers < 1:
        raise ZooError(f"--workers must be at least 1, got {workers}")
    entries, columns, labels_path = _entries(src, fmt, labels, arch, arch_kwargs, input_shape,
                                             group_column, split_column, trust_pickle, steps,
                                             input_spec)
    if split_column is None and len({e.group for e in entries}) < 3:
        raise ZooError(f"'{src}' has {len({e.group for e in entries})} group(s) of networks; "
                       "drawing train/val/test splits needs at least 3 (or give the splits "
                       "with --split-column)")
    settings = {"source": str(src.resolve()), "import_format": fmt, "seed": int(seed),
                "labels": str(labels_path) if labels_path else None,
                "group_column": group_column, "split_column": split_column}
    manifest = _start(root, settings)
    results = convert_entries(entries, root / GRAPHS, workers, f"import {src} -> {root}",
                              progress)
    failures = [f"{e.where}: {r['error']}" if not r["error"].startswith(e.where) else r["error"]
                for e, r in zip(entries, results) if "error" in r]
    result = ImportResult(None, root, failures, column_warnings(entries, columns),
                          sum(1 for r in results if r.get("reused") is False),
                          sum(1 for r in results if r.get("reused") is True))
    if failures and not skip_bad:
        manifest["failures"] = failures
        _write_json(root / "zoo.json", manifest)
        result.seconds = time.time() - start
        return result
    kept = [(e, r) for e, r in zip(entries, results) if "error" not in r]
    if not kept:
        raise ZooError(f"no network of '{src}' could be imported ({len(failures)} failed)")
    result.zoo = _finish(root, manifest, kept, columns, failures, progress)
    result.seconds = time.time() - start
    return result


def _entries(src, fmt, labels, arch, arch_kwargs, input_shape, group_column, split_column,
             trust_pickle, steps, input_spec=None) -> tuple[list[Entry], list[str], Path | None]:
    """The entries, label columns and labels file of an import (checked, nothing written)."""
    if fmt == "small-cnn-zoo":
        if labels is not None:
            raise ZooError("--format small-cnn-zoo reads its labels from metrics.csv(.gz); "
                           "drop --labels")
        if input_spec:
            raise ZooError("--format small-cnn-zoo holds image CNNs of a known input; drop "
                           "--input-spec")
        entries, columns = small_cnn_zoo_entries(src, steps, input_shape, group_column,
                                                 split_column)
        return entries, columns, None
    labels_path = Path(labels) if labels is not None else src / "labels.csv"
    table = read_labels(labels_path, src)
    defaults = {"arch": arch, "arch_kwargs": arch_kwargs or {}, "input_shape": input_shape,
                "input_spec": spec_text(input_spec)}
    entries = checkpoint_entries(src, table, defaults, fmt, group_column, split_column,
                                 trust_pickle)
    return entries, table.columns, labels_path


def _start(root: Path, settings: dict) -> dict:
    """Check that ``root`` is empty or holds an imported zoo, and write its unfinished manifest
    and graph directory; returns the manifest."""
    from .io import read_json

    manifest_path = root / "zoo.json"
    if manifest_path.exists():
        old = read_json(manifest_path, "zoo manifest")
        if not isinstance(old, dict) or old.get("kind") != "imported":
            raise ZooError(f"'{root}' holds a zoo made by 'paramgraph zoo make'; import into "
                           "another --out directory")
    elif root.exists() and any(root.iterdir()):
        raise ZooError(f"'{root}' exists, is not empty and holds no zoo (no zoo.json); import "
                       "into a new or empty --out directory")
    from paramgraph import __version__

    manifest = {"format": 1, "kind": "imported", **settings, "size": 0, "complete": False,
                "paramgraph_version": __version__}
    root.mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, manifest)
    (root / GRAPHS).mkdir(exist_ok=True)
    return manifest


def _write_json(path: Path, obj) -> None:
    from .io import atomic_write_json

    atomic_write_json(path, obj)


def _finish(root: Path, manifest: dict, kept: list[tuple[Entry, dict]], columns: list[str],
            failures: list[str], progress: bool):
    """Write the metadata table, splits and finished manifest, drop graph files no row uses,
    build the graph cache; returns the :class:`~paramgraph.tasks.zoo.Zoo`."""
    from .data import load_graphs
    from .io import atomic_write_text
    from .zoo import Zoo, make_splits

    rows = _rows(kept)
    atomic_write_text(root / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(root / "metadata.csv", metadata_csv(rows, columns))
    if all(r.get("split") for r in rows):
        splits = {s: [r["id"] for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    else:
        splits = make_splits(rows, manifest["seed"], "imported")
    _write_json(root / "splits.json", splits)
    used = {Path(r["file"]).name for r in rows}
    for stale in (root / GRAPHS).glob(f"*{GRAPH_SUFFIX}"):
        if stale.name not in used:
            stale.unlink()
    from collections import Counter

    manifest.update(size=len(rows), complete=True, columns=column_kinds(rows, columns),
                    heterogeneous=len({r["signature"] for r in rows}) > 1,
                    architectures=dict(Counter(r["arch"] for r in rows)), failures=failures)
    _write_json(root / "zoo.json", manifest)
    zoo = Zoo(root)
    load_graphs(zoo, progress)
    return zoo


def _rows(kept: list[tuple[Entry, dict]]) -> list[dict]:
    """The metadata rows: id, group index ``run``, graph file, source and its SHA-256, where it
    is listed, architecture, and the labels."""
    runs: dict = {}
    rows = []
    for i, (e, r) in enumerate(kept):
        run = runs.setdefault(e.group, len(runs))
        row = {"id": i, "run": run, "group": e.group, "file": r["file"], "source": e.name,
               "sha256": r["sha256"], "labels_file": e.where.rsplit(" line ", 1)[0],
               "labels_line": e.line, "arch": e.source.arch_name, "signature": r["signature"],
               "num_params": r["num_params"], "labels": e.labels}
        if e.split is not None:
            row["split"] = e.split
        rows.append(row)
    return rows


def metadata_csv(rows: list[dict], columns: list[str]) -> str:
    """The metadata table for people and spreadsheets: the labels as imported, then the zoo's
    own columns (prefixed ``zoo_``)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "file", *columns, "zoo_group", "zoo_graph", "zoo_sha256", "zoo_arch"])
    for r in rows:
        w.writerow([r["id"], r["source"], *[_cell(r["labels"].get(c)) for c in columns],
                    r["group"], r["file"], r["sha256"], r["arch"]])
    return buf.getvalue()


def _cell(v) -> str:
    return "" if v is None else str(v)


# -- columns -----------------------------------------------------------------------------------

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def column_kinds(rows: list[dict], columns: list[str]) -> dict[str, dict]:
    """Per label column: ``kind`` (numeric when every value is a number, categorical when some
    are text, empty) and how many rows miss a value."""
    out = {}
    for c in columns:
        values = [r["labels"].get(c) for r in rows]
        present = [v for v in values if v is not None]
        kind = "empty" if not present else (
            "numeric" if all(_is_number(v) for v in present) else "categorical")
        out[c] = {"kind": kind, "missing": len(values) - len(present)}
    return out


def column_warnings(entries: list[Entry], columns: list[str]) -> list[str]:
    """Lines about label columns that are numbers but for a few values, which look like typos
    (regression on such a column fails until they are fixed)."""
    lines = []
    for c in columns:
        values = [(e, e.labels.get(c)) for e in entries if e.labels.get(c) is not None]
        text = [(e, v) for e, v in values if not _is_number(v)]
        if text and len(text) <= max(1, len(values) // 10):
            e, v = text[0]
            more = f" (and {len(text) - 1} more)" if len(text) > 1 else ""
            lines.append(f"{e.where}, column '{c}': {v!r} is not a number, though the other "
                         f"{len(values) - len(text)} values are{more}; regression on '{c}' "
                         "fails until it is fixed")
    return lines


def import_summary(zoo) -> dict:
    """The part of ``paramgraph zoo info`` particular to an imported zoo: source, format,
    label columns with their statistics, and the networks left out."""
    import numpy as np

    m = zoo.manifest
    columns = {}
    for c, info in m.get("columns", {}).items():
        values = [v for v in zoo.column(c) if v is not None]
        entry = dict(info)
        if info["kind"] == "numeric" and values:
            a = np.asarray(values, dtype=np.float64)
            entry.update(min=float(a.min()), mean=float(a.mean()), max=float(a.max()),
                         quartiles=[float(q) for q in np.quantile(a, [0.25, 0.5, 0.75])],
                         distinct=len(set(values)))
        elif values:
            from collections import Counter

            entry.update(distinct=len(set(values)),
                         top=[[str(k), n] for k, n in Counter(values).most_common(5)])
        columns[c] = entry
    return {"source": m.get("source"), "import_format": m.get("import_format"),
            "heterogeneous": zoo.heterogeneous, "columns": columns,
            "failures": m.get("failures", [])}


def import_summary_lines(s: dict) -> list[str]:
    """:func:`import_summary` as the lines ``paramgraph zoo info`` prints."""
    lines = [f"  imported: {s['source']} ({s['import_format']})"]
    for c, info in s["columns"].items():
        missing = f", {info['missing']} missing" if info["missing"] else ""
        if info["kind"] == "numeric" and "min" in info:
            q = ", ".join(f"{x:.4g}" for x in info["quartiles"])
            lines.append(f"  column {c}: numeric, min {info['min']:.4g}, quartiles {q}, "
                         f"max {info['max']:.4g}{missing}")
        elif info["kind"] == "categorical":
            top = ", ".join(f"{k} {n}" for k, n in info["top"])
            lines.append(f"  column {c}: {info['distinct']} categories ({top}"
                         f"{', ...' if info['distinct'] > 5 else ''}){missing}")
        else:
            lines.append(f"  column {c}: empty")
    if s["failures"]:
        lines.append(f"  left out: {len(s['failures'])} network(s) that failed to import "
                     "(listed in zoo.json)")
    return lines
