"""``paramgraph predict``: a trained run's metanet applied to new checkpoints.

Each input (a checkpoint, a ``.pt2`` program, a graph file, or a directory of them) is converted
exactly as ``paramgraph zoo import`` converts a zoo's networks
(:func:`paramgraph.tasks.importer.convert_source`), so a checkpoint of the training zoo gets the
prediction ``paramgraph eval`` gave it. A metanet reads any parameter graph, so a checkpoint
whose architecture the run's zoo never held is predicted too; only a file that cannot be read or
converted is refused, named with the reason, and the others are still predicted.

The task decides the columns (:meth:`Objective.prediction_columns
<paramgraph.tasks.objectives.Objective.prediction_columns>`): the value for regression, the class
and one probability per class for classification. Written as CSV (``file`` first) or JSON.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from paramgraph.errors import ParamGraphError
from paramgraph.formats import CHECKPOINT_SUFFIXES, GRAPH_SUFFIX

from .errors import RunError, TaskError
from .importer import FileSource, convert_source, spec_text

PREDICTABLE = (*CHECKPOINT_SUFFIXES, GRAPH_SUFFIX)


def input_files(inputs: list[str]) -> list[str]:
    """The files named by ``inputs``: files as given, directories as their checkpoint and graph
    files (sorted, not recursive). Raises :class:`TaskError` for a path that does not exist or a
    directory without such files."""
    files = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.is_file() and
                           f.suffix.lower() in PREDICTABLE and not f.name.startswith("."))
            if not found:
                raise TaskError(f"'{p}' holds no checkpoints or graph files "
                                f"({', '.join(PREDICTABLE)})")
            files += found
        elif p.exists():
            files.append(name)
        else:
            raise TaskError(f"'{name}': no such file or directory")
    return files


def predict_files(run: str | os.PathLike, inputs: list[str], *, arch: str | None = None,
                  arch_kwargs: dict | None = None, input_shape: tuple[int, ...] | None = None,
                  trust_pickle: bool = False, batch_size: int = 64,
                  device: str | None = None,
                  input_spec: list | None = None) -> tuple[dict[str, list], list[str]]:
    """The predictions of run ``run`` for every checkpoint in ``inputs`` (state_dicts traced
    with ``input_shape``, or ``input_spec``'s inputs: token ids, several inputs).

    Returns ``(columns, failures)``: ``columns`` maps ``file`` and each output column to one
    value per converted file (in input order); ``failures`` holds one line per file that could
    not be converted. Raises :class:`RunError` for a run that is missing, unfinished or not a
    per-network task (an inr-edit run), :class:`~paramgraph.ParamGraphError` for a bad ``arch``.
    """
    from .distributed import choose_device
    from .train import load_run

    cfg, objective, net, _ = load_run(run)
    if objective.head == "weights":  # refused before converting anything
        raise RunError(f"run '{run}' edits weights ({objective.name}), it predicts no value per "
                       "network; apply it with 'paramgraph edit'")
    if arch is not None:  # a bad --arch is one line, not one failure per file
        from paramgraph.architecture import build_architecture

        build_architecture(arch, arch_kwargs)
    graphs, names, failures = _convert(inputs, arch, arch_kwargs, input_shape, trust_pickle,
                                       spec_text(input_spec))
    columns: dict[str, list] = {"file": names}
    if graphs:
        net = net.to(choose_device(device))
        pred = _predict(net, objective, graphs, batch_size)
        columns.update(objective.prediction_columns(pred))
    return columns, failures


def _convert(inputs, arch, arch_kwargs, input_shape, trust_pickle, input_spec=None):
    """The graphs of the inputs that convert, their names, and a line per failure."""
    from paramgraph.cli import error_message

    templates: dict = {}
    graphs, names, failures = [], [], []
    kwargs = json.dumps(arch_kwargs or {}, sort_keys=True)
    for name in input_files(inputs):
        source = FileSource(str(Path(name).resolve()), name, arch, kwargs, input_shape,
                            trust_pickle=trust_pickle, input_spec=input_spec)
        try:
            graph, _, _ = convert_source(source, templates)
        except (ParamGraphError, OSError) as err:
            message = error_message(err)
            failures.append(message.replace(source.path, name) if source.path in message
                            else f"{name}: {message}")
            continue
        graphs.append(graph)
        names.append(name)
    return graphs, names, failures


def _predict(net, objective, graphs, batch_size: int):
    """The task's predictions for ``graphs``, batched as in evaluation."""
    import torch

    from .distributed import predict

    items = []
    for k, g in enumerate(graphs):
        item = g.with_values(g.edge_value, g.node_value)
        item.net_id = torch.tensor([k])
        item.y = torch.zeros(1)
        items.append(item)
    pred, _, _ = predict(net, objective, items, batch_size)
    return pred


def to_csv(columns: dict[str, list]) -> str:
    """The predictions as CSV text: a header, then one row per file."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(list(columns))
    for row in zip(*columns.values()):
        w.writerow(row)  # floats at full precision (repr)
    return buf.getvalue()


def to_json(columns: dict[str, list]) -> str:
    """The predictions as JSON: a list of one object per file."""
    rows = [dict(zip(columns, row)) for row in zip(*columns.values())]
    return json.dumps(rows, indent=1) + "\n"

