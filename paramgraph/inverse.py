"""The exact inverse: a parameter graph back to a state_dict."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import memory
from .errors import GraphFormatError
from .layout import dtype_from_name

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph


def to_state_dict(graph: ParamGraph) -> dict[str, Tensor]:
    """Every tensor the converter placed, with its original key, shape and dtype.

    The values are bit-identical to the converted module's ``state_dict()`` (each tensor is one
    slice of the graph's values, reshaped; dtype conversions are exact because the graph stores a
    dtype that holds every converted dtype). The tensors are fresh copies, not views of the graph.
    Raises :class:`~paramgraph.GraphFormatError` if a segment does not fit the graph.
    """
    out: dict[str, Tensor] = {}
    for seg in graph.segments:
        dtype = dtype_from_name(seg.dtype)
        if seg.kind == "edge":
            flat = graph.edge_value[seg.value_start : seg.value_start + seg.numel]
            if flat.numel() != seg.numel:
                raise GraphFormatError(f"segment '{seg.name}' points past the graph's edge values")
            if seg.permute is not None:
                inverse = [seg.permute.index(i) for i in range(len(seg.permute))]
                permuted = [seg.view[p] for p in seg.permute]
                t = flat.view(permuted).permute(inverse).reshape(seg.shape)
            else:
                t = flat.view(seg.shape)
        elif seg.kind == "node":
            col = graph.node_value[seg.start : seg.start + seg.count, seg.slot]
            if col.numel() != seg.numel:
                raise GraphFormatError(f"segment '{seg.name}' points past the graph's nodes")
            t = col.reshape(seg.shape)
        else:
            raise GraphFormatError(f"segment '{seg.name}' has unknown kind '{seg.kind}'")
        out[seg.name] = memory.empty(seg.shape, dtype).copy_(t)  # one exact copy, contiguous
    return out


def load_into(module: nn.Module, graph: ParamGraph) -> nn.Module:
    """Load the graph's values into ``module`` (same architecture as converted); returns it.

    Buffers and parameters that the graph does not hold (counters) are left as they are.
    Raises :class:`~paramgraph.GraphFormatError` if a key or shape does not match the module.
    """
    state = to_state_dict(graph)
    own = module.state_dict()
    for key, value in state.items():
        if key not in own:
            raise GraphFormatError(f"graph tensor '{key}' is not in {type(module).__name__}")
        if own[key].shape != value.shape:
            raise GraphFormatError(f"graph tensor '{key}' has shape {tuple(value.shape)}, the "
                                   f"module expects {tuple(own[key].shape)}")
    metadata = getattr(own, "_metadata", None)
    if metadata is not None:  # module versions: some modules' loaders check them (MNASNet)
        state = OrderedDict(state)
        state._metadata = metadata
    module.load_state_dict(state, strict=False)
    return module


def from_state_dict(template: ParamGraph, state_dict: dict[str, Tensor]) -> ParamGraph:
    """A graph with ``template``'s structure holding the values of ``state_dict``.

    The forward direction of :func:`to_state_dict` for a known architecture: every segment's
    tensor is written into its slice, so a zoo of one architecture is converted by tracing it once
    and filling the template per checkpoint (no tracing, no Python loop per weight).
    Raises :class:`~paramgraph.GraphFormatError` naming the tensor that is missing or whose shape
    does not match; extra keys (counters such as ``num_batches_tracked``) are ignored.
    """
    edge_value = torch.empty_like(template.edge_value)
    node_value = template.node_value.clone()
    for seg in template.segments:
        if seg.name not in state_dict:
            raise GraphFormatError(f"state_dict has no tensor '{seg.name}'")
        t = state_dict[seg.name]
        if tuple(t.shape) != seg.shape:
            raise GraphFormatError(f"tensor '{seg.name}' has shape {tuple(t.shape)}, the graph "
                                   f"expects {seg.shape}")
        t = t.detach().to(edge_value.dtype)
        if seg.kind == "edge":
            if seg.permute is not None:
                t = t.reshape(seg.view).permute(seg.permute)
            edge_value[seg.value_start : seg.value_start + seg.numel].view(t.shape).copy_(t)
        else:
            node_value[seg.start : seg.start + seg.count, seg.slot] = t.reshape(-1)
    fixed = ~template.weight_edge_mask()
    if bool(fixed.any()):  # fixed wiring keeps its value 1
        edge_value[_value_mask(template, fixed)] = template.edge_value[_value_mask(template, fixed)]
    return template.with_values(edge_value, node_value)


def _value_mask(graph: ParamGraph, edge_mask: Tensor) -> Tensor:
    """[V] bool: the values of the edges selected by ``edge_mask``."""
    return torch.repeat_interleave(edge_mask, graph.edge_size.long())
