"""Conversion of one checkpoint file into a parameter graph (:func:`convert_checkpoint`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .architecture import build_architecture, fit_state_dict
from .checkpoint import check_finite, load_checkpoint
from .errors import CheckpointError, ParamGraphError

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph


@dataclass
class Converted:
    """A converted checkpoint: its graph, the state_dict entries not in it, and provenance."""

    graph: ParamGraph
    extra: dict[str, Tensor]
    metadata: dict[str, str]


def convert_checkpoint(path: str | os.PathLike, *, arch: str | None = None,
                       arch_kwargs: dict | None = None, input_shape: tuple[int, ...] | None = None,
                       trust_pickle: bool = False, allow_nonfinite: bool = False,
                       input_spec: list | None = None) -> Converted:
    """Convert one checkpoint file into a parameter graph.

    ``.pt2`` programs carry their architecture; a state_dict (safetensors or ``torch.save``)
    needs ``arch`` (see :func:`build_architecture`) and ``input_shape`` (or ``input_spec``, a
    list of :class:`~paramgraph.inputs.InputSpec`: token ids, several or keyword inputs) to trace
    it; a pickled module (only with ``trust_pickle``) needs one of them too. Returns a :class:`Converted` whose
    ``extra`` holds the state_dict entries the graph does not hold, so that graph + extra give back
    the whole state_dict.

    Raises :class:`CheckpointError` for file problems, a state_dict that does not fit ``arch`` and
    non-finite weights (unless ``allow_nonfinite``), :class:`~paramgraph.ParamGraphError` for a
    bad ``arch``, and :class:`~paramgraph.UnsupportedModuleError` (prefixed with the file) for a
    network the converter cannot represent.
    """
    from .export import from_exported, state_dict_order
    from .trace import from_module

    p = Path(path)
    obj = load_checkpoint(p, trust_pickle=trust_pickle)
    meta = {"source": p.name}
    if isinstance(obj, torch.export.ExportedProgram):
        state = {k: obj.state_dict[k] for k in state_dict_order(obj)}
        meta["keys"] = json.dumps(list(state))
        meta["source_format"] = "torch.export"
        if not allow_nonfinite:
            check_finite(state, p)
        graph = _in_file(p, from_exported, obj)
    else:
        if isinstance(obj, nn.Module):
            module = obj
            meta["source_format"] = "pickled module"
            meta["keys"] = json.dumps(list(module.state_dict()))
        else:
            if arch is None:
                raise CheckpointError(p, "holds a state_dict without its architecture; name a "
                                      "callable that builds it with --arch MODULE:CALLABLE")
            meta["keys"] = json.dumps(list(obj))
            module = _in_file(p, build_architecture, arch, arch_kwargs)
            fit_state_dict(module, obj, p, f"--arch {arch}")
            meta.update(source_format="state_dict", arch=arch,
                        arch_kwargs=json.dumps(arch_kwargs or {}))
        # The checkpoint's own entries (a counter it lacks is not invented from the module).
        state = obj if isinstance(obj, dict) else module.state_dict()
        if not allow_nonfinite:
            check_finite(state, p)
        if input_shape is None and not input_spec:
            raise CheckpointError(p, "tracing the architecture needs an example input; give it "
                                  "with --input-shape, e.g. 2,1,8,8, or --input-spec, e.g. "
                                  "int64:1,16:0-100 for token ids")
        dtype = next((t.dtype for t in module.state_dict().values() if t.is_floating_point()),
                     torch.float32)
        if input_spec:
            from .inputs import format_spec, make_inputs

            meta["input_spec"] = format_spec(input_spec)
            example = make_inputs(input_spec, dtype)
        else:
            meta["input_shape"] = ",".join(map(str, input_shape))
            example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        graph = _in_file(p, from_module, module, example)
    placed = set(graph.segments.names())
    extra = {k: v.detach() for k, v in state.items() if k not in placed}
    return Converted(graph, extra, meta)


def _in_file(p: Path, fn, *args):
    try:
        return fn(*args)
    except ParamGraphError as err:
        if str(err).startswith(str(p)):
            raise
        raise _prefixed(err, p) from err


def _prefixed(err: ParamGraphError, p: Path) -> ParamGraphError:
    """A copy of ``err`` (same class where possible) whose message starts with the file."""
    try:
        new = type(err).__new__(type(err))
        Exception.__init__(new, f"{p}: {err}")
        new.__dict__.update(err.__dict__)
        return new
    except Exception:
        return ParamGraphError(f"{p}: {err}")
