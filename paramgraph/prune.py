"""Pruning dead neurons: a smaller network of the same architecture family, and the keyword
arguments that build it.

A position of a permutable set (all its tied neurons together) is *dead* when every value of
every incoming and outgoing weight edge of those neurons is at most ``threshold`` in absolute
value (collapsed channels, neurons that training switched off). Removing it changes the
network's function by at most what it contributed, through outgoing weights of at most
``threshold`` (with ``threshold=0``: not at all).

Only widths that the architecture callable takes as keyword arguments can shrink:
:func:`prune` finds the integer keyword arguments (given, or the callable's defaults) that hold
the old widths, rebuilds the network with the new ones, traces it, and checks that its graph has
exactly the pruned widths; otherwise it refuses (:class:`~paramgraph.ParamGraphError`, one line
saying why). Attention head dimensions, input and output neurons are never pruned, and every
set keeps at least one position.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .align import permutable_sets
from .errors import ParamGraphError
from .inverse import to_state_dict

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph


@dataclass
class Pruned:
    """:func:`prune`'s result: the smaller network's graph and state_dict, the keyword arguments
    that build it, and per pruned set ``(old width, new width)`` in node order."""

    graph: ParamGraph
    state_dict: dict[str, Tensor]
    arch_kwargs: dict
    widths: list[tuple[int, int]]
    removed: int


def dead_positions(graph: ParamGraph, threshold: float = 0.0) -> dict[int, Tensor]:
    """``{perm_group id: bool [positions]}``: the dead positions of every prunable set (not an
    attention group); see the module docstring."""
    n = graph.num_nodes
    weight = graph.weight_edge_mask()
    ve = graph.value_edges()
    big = torch.zeros(n, dtype=torch.float64)
    vals = torch.where(weight[ve], graph.edge_value.double().abs(),
                       torch.zeros_like(graph.edge_value, dtype=torch.float64))
    src, dst = graph.endpoints()
    for end in (src, dst):
        big = big.scatter_reduce(0, end[ve], vals, "amax", include_self=True)
    has_weight = torch.zeros(n, dtype=torch.bool)
    has_weight[src[weight]] = True
    has_weight[dst[weight]] = True
    out = {}
    for s in permutable_sets(graph):
        if s.heads:
            continue
        alive = torch.zeros(s.size, dtype=torch.bool)
        alive.index_put_((s.pos,), (big[s.nodes] > threshold) | ~has_weight[s.nodes],
                         accumulate=True)
        out[s.gid] = ~alive
    return out


def prune(graph: ParamGraph, build, arch_kwargs: dict, example_input: Tensor,
          threshold: float = 0.0, defaults: dict | None = None) -> Pruned:
    """Remove the dead positions of ``graph`` (see :func:`dead_positions`).

    ``build(**kwargs)`` makes the architecture; ``arch_kwargs`` built ``graph``'s network and
    ``defaults`` are the callable's own default keyword values (searched too). ``example_input``
    traces the rebuilt network. Returns a :class:`Pruned` (``removed == 0`` and the input's
    values when nothing is dead). Raises :class:`~paramgraph.ParamGraphError` when no keyword
    argument gives the new widths, or the rebuilt network does not have them.
    """
    from .trace import from_module

    dead = dead_positions(graph, threshold)
    sets = [s for s in permutable_sets(graph) if s.gid in dead]
    widths = []
    keep = torch.ones(graph.num_nodes, dtype=torch.bool)
    for s in sets:
        d = dead[s.gid].clone()
        if bool(d.all()):
            d[0] = False  # a layer keeps at least one neuron
        keep[s.nodes[d[s.pos]]] = False
        widths.append((s.size, s.size - int(d.sum())))
    removed = sum(a - b for a, b in widths)
    if removed == 0:
        return Pruned(graph, to_state_dict(graph), dict(arch_kwargs), [], 0)
    old = [a for a, _ in widths]
    new = [b for _, b in widths]
    tried = []
    for kwargs in _candidate_kwargs({**(defaults or {}), **arch_kwargs}, old, new):
        if kwargs in tried:
            continue
        tried.append(kwargs)
        try:
            small = from_module(build(**kwargs), example_input.to(graph.edge_value.dtype)
                                if example_input.is_floating_point() else example_input)
        except Exception:
            continue
        small_sets = [s for s in permutable_sets(small) if not s.heads]
        if [s.size for s in small_sets] != new or small.num_nodes != int(keep.sum()):
            continue
        filled = _transfer(graph, small, keep)
        if filled is None:
            continue
        changed = {k: v for k, v in kwargs.items() if arch_kwargs.get(k, (defaults or {}).get(k)) != v}
        out_kwargs = {**arch_kwargs, **changed}
        return Pruned(filled, to_state_dict(filled), out_kwargs, [w for w in widths if w[0] != w[1]],
                      removed)
    pruned = ", ".join(f"{a}->{b}" for a, b in widths if a != b)
    raise ParamGraphError(f"cannot rebuild the architecture at the pruned widths ({pruned}): no "
                          "integer keyword argument of the architecture callable (given with "
                          "--arch-kwargs or a default) sets these widths; make the widths "
                          "keyword arguments of the callable to prune it")


def _slots(value, path=()):
    """Integer slots of a kwargs value: ``(path, int)`` in order (lists/tuples/dicts walked)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _slots(v, path + (i,))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _slots(v, path + (k,))


def _set_path(obj, path, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _set_path(obj[head], rest, value)}
    items = list(obj)
    items[head] = _set_path(items[head], rest, value)
    return type(obj)(items) if isinstance(obj, tuple) else items


def _candidate_kwargs(kwargs: dict, old: list[int], new: list[int]):
    """Keyword arguments that may build the pruned widths: (1) integer slots matched to the
    sets in order (the i-th slot equal to a set's old width sets that width), (2) every slot
    equal to an old width replaced by the new width, where all sets of that width agree."""
    slots = list(_slots(kwargs))
    # (1) in order
    out = dict(kwargs)
    k = 0
    for o, n in zip(old, new):
        while k < len(slots) and slots[k][1] != o:
            k += 1
        if k == len(slots):
            break
        if o != n:
            out = _set_path(out, slots[k][0], n)
        k += 1
    yield out
    # (2) by value
    by_value: dict[int, set[int]] = {}
    for o, n in zip(old, new):
        by_value.setdefault(o, set()).add(n)
    out = dict(kwargs)
    for path, v in slots:
        if v in by_value and len(by_value[v]) == 1:
            out = _set_path(out, path, next(iter(by_value[v])))
    yield out


def _transfer(big: ParamGraph, small: ParamGraph, keep: Tensor) -> ParamGraph | None:
    """``small`` holding ``big``'s values at the kept nodes; None if the structures disagree."""
    new_id = torch.cumsum(keep.long(), 0) - 1
    fields = ("node_type", "node_act", "node_norm")
    for f in fields:
        if not torch.equal(getattr(big, f)[keep], getattr(small, f)):
            return None
    src, dst = big.endpoints()
    kept_edge = keep[src] & keep[dst]
    n = small.num_nodes
    s_src, s_dst = small.endpoints()
    s_key = (small.edge_type.long() * n + s_src) * n + s_dst
    b_ids = kept_edge.nonzero().squeeze(1)
    b_key = (big.edge_type.long()[b_ids] * n + new_id[src[b_ids]]) * n + new_id[dst[b_ids]]
    if b_key.numel() != s_key.numel():
        return None
    s_sorted, s_order = torch.sort(s_key, stable=True)
    b_sorted, b_order = torch.sort(b_key, stable=True)
    if not torch.equal(s_sorted, b_sorted):
        return None
    # the r-th parallel edge of a key in big goes to the r-th in small: both sorts are stable
    target = torch.empty_like(s_order)
    target[b_order] = s_order  # big kept edge (in b_ids order) -> small edge id
    if not torch.equal(small.edge_size[target], big.edge_size[b_ids]):
        return None
    edge_value = small.edge_value.clone()
    b_off, s_off = big.edge_offsets(), small.edge_offsets()
    size = big.edge_size[b_ids].long()
    within = torch.arange(int(size.sum())) - torch.repeat_interleave(torch.cumsum(size, 0) - size,
                                                                     size)
    rep_b = torch.repeat_interleave(b_off[b_ids], size) + within
    rep_s = torch.repeat_interleave(s_off[target], size) + within
    edge_value[rep_s] = big.edge_value[rep_b].to(edge_value.dtype)
    node_value = big.node_value[keep].to(small.node_value.dtype)
    if not torch.equal(big.node_mask[keep], small.node_mask):
        return None
    return small.with_values(edge_value, node_value)


def callable_defaults(fn) -> dict:
    """The keyword arguments of ``fn`` that have defaults (``{}`` where it cannot be read)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty}
