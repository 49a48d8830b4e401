"""Applying a trained weight-head metanet to checkpoints: ``paramgraph edit``.

The input checkpoint is converted to a parameter graph, passed through the metanet's weight
head, and the head's output graph is written back as a state_dict (``paramgraph.to_state_dict``)
that loads into the original architecture. The architecture comes from, in order: ``spec`` (a
zoo architecture spec, see :mod:`paramgraph.tasks.archs`), the spec a zoo checkpoint carries in its
safetensors metadata, or ``arch`` (``MODULE:CALLABLE`` with ``input_shape``, as for
``paramgraph convert``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

import paramgraph

from .errors import RunError, TaskError

ZOO_META_KEY = "paramgraph_zoo"


def zoo_spec_of(path: str | os.PathLike) -> dict | None:
    """The architecture spec stored in a zoo checkpoint's metadata, or ``None`` if it has none.
    Raises :class:`TaskError` if the file is not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise TaskError(f"checkpoint '{path}' is not a readable safetensors file: {err}") from None
    if ZOO_META_KEY not in meta:
        return None
    try:
        return json.loads(meta[ZOO_META_KEY])["spec"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise TaskError(f"checkpoint '{path}' has corrupt '{ZOO_META_KEY}' metadata") from None


def _convert(path: Path, spec: dict | None, arch: str | None, arch_kwargs: dict | None,
             input_shape: tuple[int, ...] | None):
    """``(graph, extra state entries, rebuild)``: ``rebuild()`` makes a fresh module of the
    architecture, to check that the edited state_dict loads into it."""
    from .archs import build_model, example_input
    from .io import load_safetensors

    if spec is None and arch is None:
        spec = zoo_spec_of(path) if path.suffix == ".safetensors" else None
    if spec is not None:
        state = load_safetensors(path)
        model = build_model(spec)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise TaskError(f"checkpoint '{path}' does not fit architecture {spec}: "
                            f"{str(err).splitlines()[0]}") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = paramgraph.from_module(model.eval(), example_input(spec))
        placed = set(graph.segments.names())
        extra = {k: v for k, v in state.items() if k not in placed}
        return graph, extra, lambda k=1: build_model(_widened(spec, k)), \
            {ZOO_META_KEY: json.dumps({"spec": spec})}
    if arch is None:
        raise TaskError(f"checkpoint '{path}' carries no architecture; name it with --arch "
                        "MODULE:CALLABLE --input-shape SHAPE, or --spec JSON")
    from paramgraph.architecture import build_architecture
    from paramgraph.convert import convert_checkpoint

    conv = convert_checkpoint(path, arch=arch, arch_kwargs=arch_kwargs, input_shape=input_shape)
    return conv.graph, conv.extra, \
        lambda k=1: build_architecture(arch, _widened_kwargs(arch_kwargs, k)), {}


def _widened(spec: dict, k: int) -> dict:
    """The zoo spec of the edited network: ``spec`` itself, or with output channel expansion
    (``k`` copies) the SIREN ``k`` times wider (:mod:`paramgraph.tasks.expansion`)."""
    from .expansion import widen_spec

    return spec if k == 1 else widen_spec(spec, k)


def _widened_kwargs(arch_kwargs: dict | None, k: int) -> dict | None:
    """``--arch-kwargs`` of the edited network: with ``k > 1`` copies the SIREN's ``hidden``
    widths times ``k`` (an architecture without ``hidden`` cannot be widened)."""
    if k == 1:
        return arch_kwargs
    if not arch_kwargs or "hidden" not in arch_kwargs:
        raise TaskError(f"this metanet writes {k} networks to be averaged (output channel "
                        "expansion), which decode into one SIREN k times wider: give the SIREN's "
                        "widths as --arch-kwargs '{\"hidden\": [...]}' or use a zoo checkpoint")
    return {**arch_kwargs, "hidden": [k * int(h) for h in arch_kwargs["hidden"]]}


def edit_file(net, src: str | os.PathLike, dst: str | os.PathLike, *, spec: dict | None = None,
              arch: str | None = None, arch_kwargs: dict | None = None,
              input_shape: tuple[int, ...] | None = None, run: str = "") -> dict:
    """Edit one checkpoint with the weight-head metanet ``net`` and write it to ``dst``.

    Returns ``{"input", "output", "tensors", "changed"}`` where ``changed`` is the largest
    absolute change of any weight. Raises :class:`TaskError` if the checkpoint cannot be read,
    converted or has no architecture, and if the edited weights are not finite or do not load
    into the architecture.
    """
    from torch_geometric.data import Batch

    from .io import atomic_save_safetensors

    from .expansion import copies_of, decode_siren

    src, dst = Path(src), Path(dst)
    graph, extra, rebuild, meta = _convert(src, spec, arch, arch_kwargs, input_shape)
    with torch.no_grad():
        outs = [b.to_data_list()[0] for b in copies_of(net(Batch.from_data_list([graph])))]
    before = paramgraph.to_state_dict(graph)
    states = [_edited_state(o, before, src) for o in outs]
    changed = max(float((s[k].double() - before[k].double()).abs().max())
                  for s in states for k in s)
    k = len(states)
    state = states[0] if k == 1 else decode_siren(states, _siren_widths(before, src))
    if k > 1 and meta:
        spec = json.loads(meta[ZOO_META_KEY])["spec"]
        meta = {ZOO_META_KEY: json.dumps({"spec": _widened(spec, k)})}
    full = {**state, **extra}
    module = rebuild(k)
    try:
        module.load_state_dict(full, strict=True)
    except RuntimeError as err:
        raise TaskError(f"the edited '{src}' does not load into its architecture: "
                        f"{str(err).splitlines()[0]}") from None
    if meta:
        meta = {ZOO_META_KEY: json.dumps({**json.loads(meta[ZOO_META_KEY]), "edited_by": run})}
    atomic_save_safetensors(dst, full, metadata=meta or None)
    return {"input": str(src), "output": str(dst), "tensors": len(full), "changed": changed}


def _edited_state(out, before: dict, src: Path) -> dict:
    """The state_dict of one edited graph, in the input's dtypes; :class:`TaskError` if a value
    is not finite."""
    state = paramgraph.to_state_dict(out)
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise TaskError(f"editing '{src}' produced non-finite values in '{k}'")
        state[k] = v.to(before[k].dtype)
    return state


def _siren_widths(state: dict, src: Path) -> list[int]:
    """The hidden widths of the SIREN ``state`` (keys of :class:`~paramgraph.tasks.inr.Siren`);
    :class:`TaskError` for another network (output channel expansion decodes SIRENs only)."""
    from .inr import layer_names

    weights = [k for k in state if k.endswith(".weight")]
    hidden = [int(state[k].shape[0]) for k in weights[:-1]]
    if not hidden or weights != [f"{n}.weight" for n in layer_names(hidden)]:
        raise TaskError(f"'{src}' is not a SIREN: output channel expansion decodes SIRENs only")
    return hidden


def edit_path(run: str | os.PathLike, src: str | os.PathLike, dst: str | os.PathLike, *,
              spec: dict | None = None, arch: str | None = None,
              arch_kwargs: dict | None = None, input_shape: tuple[int, ...] | None = None,
              threads: int | None = None) -> list[dict]:
    """Apply the weight-head metanet of run ``run`` to ``src`` (a checkpoint, or a directory of
    ``*.safetensors`` checkpoints, whose edits go to the directory ``dst``).

    Returns one :func:`edit_file` result per checkpoint. Raises :class:`RunError` if the run is
    not a weight-head (inr-edit) run, :class:`TaskError` for missing input or bad checkpoints.
    """
    from .threads import threads as thread_count
    from .train import load_run

    _, objective, net, _ = load_run(run)
    if objective.head != "weights":
        raise RunError(f"run '{run}' trained an invariant head ({objective.name}); editing needs a "
                       "weight-head run (--task inr-edit)")
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise TaskError(f"input '{src}' does not exist")
    kw = dict(spec=spec, arch=arch, arch_kwargs=arch_kwargs, input_shape=input_shape, run=str(run))
    with thread_count(threads):
        if src.is_dir():
            files = sorted(src.glob("*.safetensors"))
            if not files:
                raise TaskError(f"input directory '{src}' holds no *.safetensors checkpoints")
            if dst.exists() and not dst.is_dir():
                raise TaskError(f"output '{dst}' must be a directory when the input is one")
            dst.mkdir(parents=True, exist_ok=True)
            return [edit_file(net, f, dst / f.name, **kw) for f in files]
        if dst.is_dir():
            dst = dst / src.name
        return [edit_file(net, src, dst, **kw)]
