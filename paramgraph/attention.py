"""Attention written out in tensor operations, read by both front ends.

Hugging Face, timm and hand-written transformers do not call ``nn.MultiheadAttention``: they
project queries, keys and values with linear layers (separate, or one fused ``Linear(d, 3d)``),
split the features into heads with ``view``/``reshape`` and ``transpose``/``permute``, and then
either call ``F.scaled_dot_product_attention`` or write ``softmax(q @ k^T * scale + mask) @ v``.

The neurons are followed through those operations as a :class:`HeadView`: a value whose features
are spread over several tensor dimensions (heads and dimensions inside a head). Its ``grid`` holds,
per feature position, the index into the neurons ``base`` it came from, so every reshape,
transpose, slice, ``unbind``, ``chunk`` or ``cat`` on the features is an index operation on the
grid, exact and free of values. At the core (the score product and the product with the values)
the grids name the query, key and value neurons of every head; :meth:`GraphBuilder.attend`
turns their projections into the block's ATTN_Q/K/V neurons. The output is again a head view over
the value neurons, which the out-projection reads after the heads are merged back.

Scores carry no neurons (:class:`Scores`): scaling them by a number, adding a mask (a constant,
an input, or anything else computed without weights), ``masked_fill`` and ``softmax`` keep them
scores. A rotary position embedding ``q * cos + rotate_half(q) * sin`` is recognised term by
term: ``q * C`` is a :class:`Scaled` view, ``rotate_half`` a permutation with signs of each head's
dimensions, and the sum of two scaled views is accepted when, per pair of dimensions ``(i, j)``
that the permutation swaps, the constants form a scaled 2-D rotation at every position:
``C1[i] == C1[j]`` and ``s_i C2[i] == -s_j C2[j]``. Only then is the head's q/k map restricted to
maps that commute with it (``HeadRole.QK_ROTARY``, ROTARY edges), which is the whole group:
``M R M^-1 = R`` for every rotation ``R`` of a pair holds exactly for the scaled rotations.

One head (multi-query attention's only key/value head, ``view(b, t, 1, d)``) keeps its features
in one dimension, so the front ends hold it as a plain traced value marked ``head``; the
operations of a rotary embedding and of its repetition for the query heads on it are read here,
as on several heads, and rotate_half's halves of it stay views until the rotary sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
from torch import Tensor

from .builder import Feat
from .errors import UnsupportedModuleError
from .patterns import op_name
from .trace import Const, Data, TracedValue, _Pieces, node_arg, split_sizes


@dataclass
class HeadView:
    """Features spread over tensor dimensions ``dims`` (increasing); ``grid`` has one axis per
    such dimension and holds indices into ``base.nodes``; ``sign`` (+-1 per grid entry, None: all
    +1) and ``pairs`` (rotary pairs of the last axis, once a rotary embedding was applied)."""

    base: Feat
    grid: Tensor
    dims: tuple[int, ...]
    shape: tuple[int, ...]
    sign: Tensor | None = None
    pairs: Tensor | None = None
    head: bool = False  # cut from one attention head (TracedValue.head): parts stay views


@dataclass
class Scaled:
    """A head view times a constant tensor (one term of a rotary embedding)."""

    view: HeadView
    factor: Tensor


@dataclass
class Scores:
    """Attention scores of query heads ``q`` and key heads ``k`` (node ids ``[heads, d]``)."""

    q: Tensor
    k: Tensor
    pairs: Tensor | None
    shape: tuple[int, ...]
    softmaxed: bool = False


_HEAD_VALUES = (HeadView, Scaled, Scores)


def is_heads(val) -> bool:
    """Whether ``val`` is attention heads or scores (not a plain traced value)."""
    return isinstance(val, _HEAD_VALUES)


def reads_heads(c, node: fx.Node) -> bool:
    """Whether ``node`` reads a value of this module (or features split into heads that the
    channel-shuffle path does not merge back)."""
    for arg in node.all_input_nodes:
        val = c.env.get(arg)
        if isinstance(val, _HEAD_VALUES):
            return True
        if isinstance(val, _Pieces) and any(isinstance(p, HeadView) for p in val.pieces):
            return True
        if isinstance(val, TracedValue) and val.split is not None \
                and op_name(node) not in _SHUFFLE_OPS:
            return True
        if isinstance(val, TracedValue) and val.head and _one_head_op(c, node):
            return True
    return False


# A split feature dimension stays on the channel-shuffle path for these operations (in trace.py).
_SHUFFLE_OPS = {"view", "reshape", "_unsafe_view", "flatten", "view_as", "reshape_as"}

# What a rotary embedding does to one head (q * cos + rotate_half(q) * sin, the transposes
# around it) and how one key/value head is repeated for the query heads, read here so that
# rotate_half's halves keep naming the head's neurons; anything else on a single head (a
# projection, a residual sum) stays with the front end.
_ONE_HEAD_OPS = {"transpose", "permute", "swapaxes", "swapdims", "getitem", "slice", "select",
                 "neg", "cat", "chunk", "split", "split_with_sizes", "repeat_interleave"}


def splits_one_head(shape: tuple[int, ...], fdim: int, out: tuple[int, ...]) -> bool:
    """Whether reshaping ``shape`` (features in ``fdim``) to ``out`` splits the features into one
    attention head: ``[batch, positions, d] -> [batch, positions, 1, d]``, the view of a
    multi-query key/value projection (one key/value head) or of single-head attention.
    Several heads make a head view here; one head stays a traced value (:attr:`TracedValue.head`
    marks it), since its features are still in one dimension."""
    return len(shape) == 3 and fdim == 2 and tuple(out) == (*shape[:2], 1, shape[2])


def _one_head_op(c, node: fx.Node) -> bool:
    """Whether ``node``, which reads a single head, is part of a rotary embedding or of the
    head's repetition: one of :data:`_ONE_HEAD_OPS`, or the head times (or over) a number or
    a constant (the rotary cosines, a scale)."""
    name = op_name(node)
    if name in ("mul", "truediv", "div"):
        return any(_is_number(v) or isinstance(v, Const)
                   for v in (_value(c, node, a) for a in node.args[:2]))
    return name in _ONE_HEAD_OPS


def call(c, node: fx.Node, name: str):
    """The value of ``node``, an operation on head views or scores."""
    handler = _HANDLERS.get(name)
    if handler is None:
        path = c._path(node)
        raise UnsupportedModuleError(path, c._owner(path, name), "this operation on attention "
                                     "heads or scores is not supported; write attention with "
                                     "view/transpose, matmul/softmax or "
                                     "F.scaled_dot_product_attention")
    return handler(c, node)


# -- head views --------------------------------------------------------------------------------------

def as_view(c, val) -> HeadView:
    """A traced value (features in one dimension, or split in two adjacent ones) as a view."""
    if isinstance(val, HeadView):
        return val
    if not isinstance(val, TracedValue) or val.feat is None:
        raise ValueError("not a value with neurons")
    n, fdim = len(val.shape), c._fdim(val)
    size = val.feat.size
    if val.split is not None:
        grid = torch.arange(size).view(val.split)
        dims = tuple(range(fdim, fdim + len(val.split)))
    else:
        grid, dims = torch.arange(size), (fdim,)
    return HeadView(val.feat, grid, dims, tuple(val.shape), head=val.head)


def _value(c, node: fx.Node, arg):
    return c.env.get(arg) if isinstance(arg, fx.Node) else arg


def _view_arg(c, node: fx.Node, arg) -> HeadView:
    val = _value(c, node, arg)
    try:
        return as_view(c, val)
    except ValueError:
        raise UnsupportedModuleError(c._path(node), op_name(node), "expects attention heads "
                                     "(a projection's features)") from None


def _finish(c, view: HeadView):
    """A view whose features sit in one dimension again is a plain traced value; a part of a
    single head (rotate_half's halves) stays a view, so that the rotary sum can tell which of the
    head's dimensions each half holds."""
    if len(view.dims) != 1 or view.sign is not None or view.pairs is not None:
        return view
    whole = torch.equal(view.grid.reshape(-1), torch.arange(view.base.size))
    if view.head and not whole:
        return view
    feat = c.b.select(view.base, view.grid.reshape(-1))
    return TracedValue(feat, view.shape, view.dims[0], head=view.head)


def _reshape_view(c, node: fx.Node, view: HeadView, out: tuple[int, ...]):
    """Reshape: each output dimension covers input dimensions that are all features (split or
    merged heads) or all positions; the grid is reshaped the same way (row-major order)."""
    inp = view.shape
    pin = [math.prod(inp[:i]) for i in range(len(inp) + 1)]
    pout = [math.prod(out[:j]) for j in range(len(out) + 1)]
    dims = []
    for j in range(len(out)):
        if out[j] == 1:
            continue
        cover = [i for i in range(len(inp)) if inp[i] > 1 and pin[i] < pout[j + 1]
                 and pin[i + 1] > pout[j]]
        feature = [i in view.dims for i in cover]
        if all(feature):
            dims.append(j)
        elif any(feature):
            raise UnsupportedModuleError(c._path(node), f"reshape {inp} -> {tuple(out)}",
                                         "it merges attention heads with positions or batch "
                                         "(write attention on [batch, heads, positions, dim])")
    sizes = [out[j] for j in dims]
    if math.prod(sizes) != view.grid.numel():
        raise UnsupportedModuleError(c._path(node), f"reshape {inp} -> {tuple(out)}", "it mixes "
                                     "attention features with other dimensions")
    return replace(view, grid=view.grid.reshape(sizes), dims=tuple(dims), shape=tuple(out),
                   sign=None if view.sign is None else view.sign.reshape(sizes))


def _permute_view(view: HeadView, order: list[int], shape) -> HeadView:
    """``order[j]``: the input dimension at output position j."""
    new = [j for j, i in enumerate(order) if i in view.dims]
    axes = [view.dims.index(order[j]) for j in new]
    return replace(view, grid=view.grid.permute(axes), dims=tuple(new), shape=tuple(shape),
                   sign=None if view.sign is None else view.sign.permute(axes))


def _select_view(view: HeadView, dim: int, index, shape) -> HeadView:
    """``x.select(dim, index)`` (an int index) or ``x.narrow``-like ``slice`` on ``dim``."""
    dim %= len(view.shape)
    keep = isinstance(index, slice)
    if dim in view.dims:
        a = view.dims.index(dim)
        picker = (slice(None),) * a + (index,)
        grid = view.grid[picker]
        sign = None if view.sign is None else view.sign[picker]
    else:
        grid, sign = view.grid, view.sign
    dims = tuple(d if keep or d < dim else d - 1 for d in view.dims if keep or d != dim)
    return replace(view, grid=grid, dims=dims, shape=tuple(shape), sign=sign)


def reshape(c, node: fx.Node, val: TracedValue, out: tuple[int, ...]):
    """A reshape of a traced value that splits its features over several dimensions."""
    return _finish(c, _reshape_view(c, node, as_view(c, val), out))


def _reshape(c, node):
    view = _view_arg(c, node, node.args[0])
    return _finish(c, _reshape_view(c, node, view, c._shape(node)))


def _expand(c, node):
    """``expand``: positions broadcast; a new axis next to the heads (grouped-query attention's
    ``repeat_kv``) repeats the heads."""
    view = _view_arg(c, node, node.args[0])
    out = c._shape(node)
    grid, dims, sign = view.grid, list(view.dims), view.sign
    for d, (a, b) in enumerate(zip(view.shape, out)):
        if a == b:
            continue
        if d in dims or (d - 1 not in dims and d + 1 not in dims):
            continue  # a position or batch dimension (or an axis already broadcast)
        axis = sum(x < d for x in dims)
        grid = grid.unsqueeze(axis).expand(*grid.shape[:axis], b, *grid.shape[axis:])
        sign = None if sign is None else sign.unsqueeze(axis).expand(grid.shape)
        dims.insert(axis, d)
    return replace(view, grid=grid, dims=tuple(dims), shape=tuple(out), sign=sign)


def _repeat_interleave(c, node):
    """``x.repeat_interleave(r, dim)`` along the heads axis: each key/value head repeated for
    ``r`` neighbouring query heads (grouped-query attention written without repeat_kv)."""
    view = _view_arg(c, node, node.args[0])
    n = len(view.shape)
    r, dim = _literal(c, node_arg(node, 1, "repeats")), node_arg(node, 2, "dim")
    if isinstance(r, int) and dim is not None and len(view.dims) == 1 \
            and dim % n != view.dims[0] and view.shape[dim % n] == 1:
        return replace(view, shape=c._shape(node))  # one key/value head, broadcast
    if not isinstance(r, int) or dim is None or dim % n not in view.dims[:-1]:
        raise UnsupportedModuleError(c._path(node), "repeat_interleave", "only whole attention "
                                     "heads repeated by a number (dim: the heads) are supported")
    axis = view.dims.index(dim % n)
    return replace(view, grid=view.grid.repeat_interleave(r, axis), shape=c._shape(node),
                   sign=None if view.sign is None else view.sign.repeat_interleave(r, axis))


def _transpose(c, node):
    view = _view_arg(c, node, node.args[0])
    n = len(view.shape)
    order = list(range(n))
    if op_name(node) == "permute":
        dims = node_arg(node, 1, "dims")
        if not isinstance(dims, (tuple, list)):
            dims = node.args[1:]
        order = [d % n for d in dims]
    else:
        a, b = (d % n for d in node.args[1:3])
        order[a], order[b] = b, a
    return _finish(c, _permute_view(view, order, c._shape(node)))


def _getitem(c, node):
    src, index = node.args
    val = c.env.get(src)
    if isinstance(val, _Pieces):
        return val.pieces[index]
    view = _view_arg(c, node, src)
    items = index if isinstance(index, tuple) else (index,)
    items = tuple(_literal(c, i) for i in items)
    if any(isinstance(i, (fx.Node, Tensor)) for i in items):
        raise UnsupportedModuleError(c._path(node), "indexing", f"index {index!r} of attention "
                                     "heads is not supported (use ints and slices)")
    if Ellipsis in items:
        k = items.index(Ellipsis)
        fill = len(view.shape) - (len(items) - 1 - items.count(None))
        items = items[:k] + (slice(None),) * fill + items[k + 1:]
    dim, shape = 0, list(view.shape)
    for i in items:
        if i is None:  # a new axis (repeat_kv's x[:, :, None])
            shape.insert(dim, 1)
            view = replace(view, dims=tuple(d + (d >= dim) for d in view.dims),
                           shape=tuple(shape))
            dim += 1
        elif isinstance(i, int):
            shape.pop(dim)
            view = _select_view(view, dim, i, shape)
        else:
            shape[dim] = len(range(*i.indices(view.shape[dim])))
            view = _select_view(view, dim, i, shape)
            dim += 1
    return _finish(c, replace(view, shape=c._shape(node)))


def _literal(c, item):
    """A slice bound or index that the shape pass computed (``x.shape[-1] // 2``)."""
    if isinstance(item, slice):
        return slice(*(_literal(c, x) for x in (item.start, item.stop, item.step)))
    if isinstance(item, fx.Node) and item in c.literals:
        return c.literals[item]
    return item


def _select(c, node):  # aten.select(x, dim, index)
    view = _view_arg(c, node, node.args[0])
    return _finish(c, _select_view(view, node.args[1], node.args[2], c._shape(node)))


def _slice(c, node):  # aten.slice(x, dim, start, end, step)
    view = _view_arg(c, node, node.args[0])
    dim = node_arg(node, 1, "dim", 0)
    s = slice(node_arg(node, 2, "start"), node_arg(node, 3, "end"), node_arg(node, 4, "step", 1))
    return _finish(c, _select_view(view, dim, s, c._shape(node)))


def _unbind(c, node):
    view = _view_arg(c, node, node.args[0])
    dim = node_arg(node, 1, "dim", 0) % len(view.shape)
    shape = view.shape[:dim] + view.shape[dim + 1:]
    return _Pieces([_finish(c, _select_view(view, dim, i, shape))
                    for i in range(view.shape[dim])])


def _split(c, node):
    view = _view_arg(c, node, node.args[0])
    name = op_name(node)
    dim = node_arg(node, 2, "dim", 0) % len(view.shape)
    size = view.shape[dim]
    how = _literal(c, node.args[1])
    sizes = split_sizes(name, how, size)
    pieces, start = [], 0
    for k in sizes:
        shape = list(view.shape)
        shape[dim] = k
        pieces.append(_finish(c, _select_view(view, dim, slice(start, start + k), shape)))
        start += k
    return _Pieces(pieces)


def _passthrough(c, node):
    val = _value(c, node, node.args[0])
    if isinstance(val, TracedValue):
        return as_view(c, val)
    return val


def _neg(c, node):
    view = _view_arg(c, node, node.args[0])
    sign = torch.ones(view.grid.shape) if view.sign is None else view.sign
    return replace(view, sign=-sign)


def _cat(c, node):
    """``cat`` of head views along a feature axis of the same neurons (``rotate_half``)."""
    parts = [_view_arg(c, node, a) for a in node.args[0]]
    n = len(parts[0].shape)
    dim = node_arg(node, 1, "dim", 0) % n
    first = parts[0]
    if any(not torch.equal(p.base.nodes, first.base.nodes) or p.dims != first.dims
           for p in parts) or dim not in first.dims:
        raise UnsupportedModuleError(c._path(node), "cat", "only heads of one projection joined "
                                     "along their dimensions (rotate_half) are supported")
    axis = first.dims.index(dim)
    signs = [torch.ones(p.grid.shape) if p.sign is None else p.sign for p in parts]
    return replace(first, grid=torch.cat([p.grid for p in parts], axis),
                   sign=torch.cat(signs, axis), shape=c._shape(node))


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _mul(c, node):
    a, b = (_value(c, node, x) for x in node.args[:2])
    if isinstance(b, _HEAD_VALUES) and not isinstance(a, _HEAD_VALUES):
        a, b = b, a
    name = op_name(node)
    if isinstance(a, Scores) and (_is_number(b) or isinstance(b, (Const, Data))):
        return a  # a scale of the scores
    if isinstance(a, TracedValue):
        a = as_view(c, a)
    if isinstance(a, HeadView) and _is_number(b) and name in ("mul", "truediv", "div"):
        return _finish(c, a)  # q * scale: a number commutes with every head map
    if isinstance(a, HeadView) and isinstance(b, Const) and name == "mul":
        return Scaled(a, b.value)
    raise UnsupportedModuleError(c._path(node), name, "only attention scores or heads times a "
                                 "number, or heads times a constant (a rotary embedding), are "
                                 "supported")


def _add(c, node):
    a, b = (_value(c, node, x) for x in node.args[:2])
    if isinstance(b, Scores):
        a, b = b, a
    if isinstance(a, Scores):
        if isinstance(b, (Const, Data)) or (isinstance(b, TracedValue) and b.feat is None):
            return a  # an additive mask
        raise UnsupportedModuleError(c._path(node), "add", "a mask computed from the network's "
                                     "features is added to the attention scores")
    if isinstance(a, Scaled) and isinstance(b, Scaled):
        return _rotary(c, node, a, b)
    raise UnsupportedModuleError(c._path(node), "add", "only a mask added to attention scores "
                                 "or a rotary embedding (q * cos + rotate_half(q) * sin) is "
                                 "supported on attention heads")


def _full(t: Tensor, shape) -> Tensor:
    return t.expand(shape) if tuple(t.shape) != tuple(shape) else t


def _rotary(c, node, a: Scaled, b: Scaled) -> HeadView:
    """``q * C1 + perm(q) * C2``: accepted when it rotates pairs of each head's dimensions
    (several heads, a grid ``[heads, d]``, or one head, a grid ``[d]``)."""
    if b.view.sign is None and a.view.sign is not None:
        a, b = b, a
    va, vb = a.view, b.view
    path = c._path(node)
    reason = None
    if va.sign is not None or va.dims != vb.dims or va.grid.shape != vb.grid.shape \
            or va.pairs is not None or va.grid.dim() not in (1, 2) \
            or va.dims[-1] != len(va.shape) - 1:
        reason = "the two terms are not the same heads"
    else:
        d = va.grid.shape[-1]
        ga, gb = va.grid.reshape(-1, d), vb.grid.reshape(-1, d)
        # where each entry of the second term's last axis reads from, in the first term's axis
        where = (gb.unsqueeze(-1) == ga.unsqueeze(-2)).int().argmax(-1)
        perm = where[0]
        if not bool((gb == ga.gather(1, where)).all()) or \
                not bool((where == perm).all()) or \
                not torch.equal(perm[perm], torch.arange(d)) or bool((perm == torch.arange(d)).any()):
            reason = "the second term does not swap pairs of each head's dimensions"
    if reason is None:
        shape = tuple(torch.broadcast_shapes(va.shape, a.factor.shape, b.factor.shape))
        sizes = [vb.grid.shape[vb.dims.index(i)] if i in vb.dims else 1
                 for i in range(len(vb.shape))]
        sign = vb.sign.reshape(sizes).to(b.factor.dtype)
        c1, c2 = _full(a.factor, shape), _full(b.factor, shape) * sign
        if not (torch.equal(c1, c1[..., perm]) and torch.equal(c2, -c2[..., perm])):
            reason = "its constants are not the cosines and sines of one angle per pair"
    if reason is not None:
        raise UnsupportedModuleError(path, "rotary embedding", f"{reason}; supported: "
                                     "q * cos + rotate_half(q) * sin (halves or interleaved pairs)")
    pairs = torch.stack([torch.arange(d), perm], 1)
    return replace(va, pairs=pairs[pairs[:, 0] < pairs[:, 1]])


# -- the core ----------------------------------------------------------------------------------------

def _heads(c, node, view: HeadView, dim_axis: int) -> tuple[Tensor, Tensor | None]:
    """Node ids ``[heads, d]`` of a query/key/value operand whose head dimensions lie in tensor
    dimension ``dim_axis`` (the other feature dimension, if any, is the heads)."""
    n = len(view.shape)
    dim_axis %= n
    if view.sign is not None or dim_axis not in view.dims or len(view.dims) > 2:
        raise UnsupportedModuleError(c._path(node), op_name(node), "its operands are not "
                                     "attention heads ([..., heads, positions, dim])")
    grid = view.grid
    if len(view.dims) == 1:
        grid = grid.unsqueeze(0)  # one head
    else:
        head_axis = view.dims[0] if view.dims[1] == dim_axis else view.dims[1]
        if head_axis >= n - 2:
            raise UnsupportedModuleError(c._path(node), op_name(node), "the heads are not a "
                                         "batch dimension of the product")
        if view.dims.index(dim_axis) == 0:
            grid = grid.t()
    return view.base.nodes[grid], view.pairs


def _operand(c, node, arg, dim_axis: int):
    val = _value(c, node, arg)
    if isinstance(val, Scaled):
        raise UnsupportedModuleError(c._path(node), op_name(node), "heads times a constant reach "
                                     "the attention (only a full rotary embedding is supported)")
    return _heads(c, node, _view_arg(c, node, arg), dim_axis)


def _matmul(c, node):
    a, b = node.args[:2]
    va = _value(c, node, a)
    if isinstance(va, Scores):
        if not va.softmaxed:
            raise UnsupportedModuleError(c._path(node), "matmul", "the scores are used before a "
                                         "softmax")
        v, _ = _operand(c, node, b, -1)
        return _core(c, node, va.q, va.k, v, va.pairs)
    q, pq = _operand(c, node, a, -1)
    k, pk = _operand(c, node, b, -2)
    if not _same_pairs(pq, pk):
        raise UnsupportedModuleError(c._path(node), "matmul", "queries and keys are not rotated "
                                     "alike")
    return Scores(q, k, pq, c._shape(node))


def _same_pairs(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def _softmax(c, node):
    val = _value(c, node, node.args[0])
    if not isinstance(val, Scores):
        raise UnsupportedModuleError(c._path(node), "softmax", "softmax over features")
    dim = node_arg(node, 1, "dim", -1)
    if dim is None or dim % len(val.shape) != len(val.shape) - 1:
        raise UnsupportedModuleError(c._path(node), "softmax", "attention softmax must run over "
                                     "the keys (the last dimension)")
    return replace(val, softmaxed=True)


def _scores_op(c, node):
    """``masked_fill``, ``where`` and dtype casts keep scores scores."""
    for arg in node.args:
        val = _value(c, node, arg)
        if isinstance(val, Scores):
            return val
    raise UnsupportedModuleError(c._path(node), op_name(node), "this operation on attention "
                                 "heads is not supported")


def _sdpa(c, node):
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)``: any
    mask (or ``is_causal``) and scale; the mask must not carry features."""
    mask = _value(c, node, node_arg(node, 3, "attn_mask"))
    if isinstance(mask, (TracedValue, HeadView, Scaled)) and getattr(mask, "feat", 1) is not None:
        raise UnsupportedModuleError(c._path(node), "scaled_dot_product_attention", "its mask is "
                                     "computed from the network's features")
    q, pq = _operand(c, node, node.args[0], -1)
    k, pk = _operand(c, node, node.args[1], -1)
    v, _ = _operand(c, node, node.args[2], -1)
    if not _same_pairs(pq, pk):
        raise UnsupportedModuleError(c._path(node), "scaled_dot_product_attention", "queries and "
                                     "keys are not rotated alike")
    return _core(c, node, q, k, v, pq)


def _core(c, node, q: Tensor, k: Tensor, v: Tensor, pairs) -> HeadView:
    """The attention block: its projections become ATTN_Q/K/V neurons; returns the output, a
    head view over the value neurons laid out as the queries' product ``[..., heads, pos, dv]``."""
    feat = c.b.attend(q, k, v, pairs, c._path(node))
    out = c._shape(node)
    heads, dv = q.shape[0], v.shape[1]
    kv = feat.size // dv  # grouped-query: query head h reads value head h // (heads / kv)
    grid = torch.arange(kv * dv).view(kv, dv).repeat_interleave(heads // kv, 0)
    n = len(out)
    if heads == 1 and n < 4:
        return _finish(c, HeadView(feat, grid.view(-1), (n - 1,), out))
    return HeadView(feat, grid, (n - 3, n - 1), out)


_HANDLERS = {
    **dict.fromkeys(("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze",
                     "unsqueeze", "view_as", "reshape_as"), _reshape),
    "expand": _expand,
    "repeat_interleave": _repeat_interleave,
    **dict.fromkeys(("transpose", "permute", "swapaxes", "swapdims"), _transpose),
    "getitem": _getitem,
    "select": _select,
    "slice": _slice,
    "unbind": _unbind,
    **dict.fromkeys(("split", "chunk", "split_with_sizes"), _split),
    **dict.fromkeys(("contiguous", "clone", "to", "float", "double", "half", "type_as",
                     "_to_copy", "alias", "detach", "dropout", "lift_fresh_copy"), _passthrough),
    "neg": _neg,
    "cat": _cat,
    **dict.fromkeys(("mul", "truediv", "div"), _mul),
    "add": _add,
    **dict.fromkeys(("matmul", "bmm"), _matmul),
    **dict.fromkeys(("softmax", "_softmax"), _softmax),
    **dict.fromkeys(("masked_fill", "where", "type", "_safe_softmax"), _scores_op),
    "scaled_dot_product_attention": _sdpa,
}
