"""Layers written out in tensor operations, recognised before a graph is converted.

Hugging Face writes some layers as arithmetic instead of calling a module or a fused function;
both front ends see the same operations (fx: methods and functions, torch.export: ATen ops,
matched by name), and :func:`find` turns each occurrence into one layer:

* **RMSNorm** (LlamaRMSNorm, T5LayerNorm): ``w * (x * rsqrt(mean(x^2, -1, keepdim) + eps))``,
  with optional dtype casts around the product; the weight is optional. This is
  :math:`y = w \\odot x / \\sqrt{\\overline{x^2} + \\epsilon}`, ``NormKind.RMS``.
* **tanh-GELU** (GPT-2's ``gelu_new``, NewGELUActivation):
  ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, ``Activation.GELU_TANH``; the constants
  must match to 1e-6 (relative), the operand order may vary.

A match replaces its last node; its inner nodes are skipped, and they must have no other users
(else the pattern is not a layer on its own and the operations are read one by one, as before).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.fx as fx

# Operations that change neither values' meaning nor layout (dtype casts): looked through.
_CASTS = {"to", "_to_copy", "float", "type_as", "type", "contiguous", "clone", "alias"}


@dataclass
class Fused:
    """A recognised layer: ``kind`` ("rms_norm" or "gelu_tanh") of the value ``x``, with the
    RMSNorm's ``weight`` (a parameter node or None) and ``eps``."""

    kind: str
    x: fx.Node
    weight: fx.Node | None = None
    eps: float | None = None


def op_name(node) -> str | None:
    """The name of ``node``'s operation, the same for a method, a function and an ATen op (the
    one home of this for both front ends); None for anything that is not an operation call."""
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return None
    if node.op == "call_method":
        return str(node.target)
    packet = getattr(node.target, "overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(node.target, "__name__", str(node.target))


def find(graph: fx.Graph, is_param: Callable[[fx.Node], bool]) -> tuple[dict, set]:
    """The layers written out in ``graph``: ``{last node: Fused}`` and the inner nodes to skip."""
    fused: dict[fx.Node, Fused] = {}
    skip: set[fx.Node] = set()
    for node in reversed(graph.nodes):  # last nodes first: a norm's weight product before its
        if op_name(node) != "mul" or node in skip:  # inner one, which is then skipped
            continue
        for matcher in (_rms_norm, _gelu_tanh):
            found = matcher(node, is_param)
            if found is None:
                continue
            match, inner = found
            if all(uses(n) <= inner | {node} for n in inner):
                fused[node] = match
                skip |= inner
                break
    return fused, skip


def uses(node: fx.Node) -> set:
    """The users that read ``node``'s value (torch.export's dtype assertions do not)."""
    return {u for u in node.users if not str(op_name(u)).startswith("_assert")}


# -- matchers: (the match, its inner nodes) or None ------------------------------------------------

def _is(node, name: str) -> bool:
    return op_name(node) == name


def _number(a) -> float | None:
    return float(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else None


def _close(a, want: float) -> bool:
    v = _number(a)
    return v is not None and abs(v - want) <= 1e-6 * abs(want)


def _operands(node, name: str):
    """``(a, b)`` and ``(b, a)`` of a binary ``name`` node, else nothing."""
    if not _is(node, name) or len(node.args) < 2:
        return []
    a, b = node.args[:2]
    return [(a, b), (b, a)]


def _strip(node, inner: set):
    """Look through dtype casts (recording them in ``inner``)."""
    while op_name(node) in _CASTS:
        inner.add(node)
        node = node.args[0]
    return node


def _base(node):
    while op_name(node) in _CASTS:
        node = node.args[0]
    return node


def _rms_norm(last: fx.Node, is_param) -> tuple[Fused, set] | None:
    weight, inner = None, set()
    normed = last
    for w, n in _operands(last, "mul"):
        if isinstance(w, fx.Node) and is_param(w):
            weight, normed = w, _strip(n, inner)
            break
    for x, r in _operands(normed, "mul"):
        if not _is(r, "rsqrt"):
            continue
        s = r.args[0]
        for m, eps in _operands(s, "add"):
            if _number(eps) is None or not _is(m, "mean") or not _mean_over_last(m):
                continue
            p = m.args[0]
            if _is(p, "pow") and _close(p.args[1], 2.0) and _base(p.args[0]) is _base(x):
                found = inner | ({normed} if normed is not last else set()) | {r, s, m, p}
                return Fused("rms_norm", x, weight, _number(eps)), found
    return None


def _mean_over_last(m: fx.Node) -> bool:
    dim = m.args[1] if len(m.args) > 1 else m.kwargs.get("dim")
    keep = m.args[2] if len(m.args) > 2 else m.kwargs.get("keepdim", False)
    dims = list(dim) if isinstance(dim, (list, tuple)) else [dim]
    meta = m.meta.get("val", m.meta.get("tensor_meta"))
    rank = len(meta.shape) if meta is not None else None
    return bool(keep) and len(dims) == 1 and (dims[0] == -1 or dims[0] == (rank or 0) - 1)


def _gelu_tanh(last: fx.Node, is_param) -> tuple[Fused, set] | None:
    for h, s in _operands(last, "mul"):
        for x, half in _operands(h, "mul"):
            if not _close(half, 0.5) or not isinstance(x, fx.Node):
                continue
            for th, one in _operands(s, "add"):
                if not _close(one, 1.0) or not _is(th, "tanh"):
                    continue
                inner = _tanh_argument(th.args[0], x)
                if inner is not None:
                    return Fused("gelu_tanh", x), inner | {h, s, th}
    return None


def _tanh_argument(u, x) -> set | None:
    """``sqrt(2/pi) * (x + 0.044715 * x^3)``: its nodes, or None."""
    for v, c in _operands(u, "mul"):
        if not _close(c, math.sqrt(2 / math.pi)):
            continue
        for x2, w in _operands(v, "add"):
            for p, k in _operands(w, "mul"):
                if x2 is x and _close(k, 0.044715) and _is(p, "pow") and p.args[0] is x \
                        and _close(p.args[1], 3.0):
                    return {u, v, w, p}
    return None
