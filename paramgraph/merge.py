"""Merging networks of one architecture: weighted averages of their parameters, and the loss
along the straight line between two of them.

:func:`merge` averages every parameter and buffer the graphs hold (weights, biases,
normalisation parameters and running statistics; the fixed wiring stays 1). With ``align=True``
each network is first aligned to the first (:func:`paramgraph.align.align`), which is what makes
an average of independently trained networks work (linear mode connectivity up to permutation).
:func:`interpolation_curve` evaluates a module at evenly spaced points between two graphs and
:func:`loss_barrier` reads the barrier off it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .align import align as align_graphs
from .align import check_same_architecture
from .errors import ParamGraphError
from .graph import ParamGraph
from .inverse import load_into


def merge(graphs: Sequence[ParamGraph], weights: Sequence[float] | None = None, *,
          align: bool = False, scales: bool = True, names: Sequence[str] | None = None
          ) -> ParamGraph:
    """The weighted average of ``graphs`` (same architecture), as a graph of the first's dtype.

    ``weights`` default to equal; they must be as many as the graphs and sum to 1 (a tolerance
    of 1e-6). ``align``: align every graph after the first to the first before averaging
    (``scales`` as in :func:`paramgraph.align.align`). ``names`` label the graphs in errors.
    Raises :class:`~paramgraph.ParamGraphError` for fewer than one graph, bad weights or
    different architectures.
    """
    if not graphs:
        raise ParamGraphError("nothing to merge: give at least one network")
    names = list(names or [f"network {i}" for i in range(len(graphs))])
    if weights is None:
        weights = [1.0 / len(graphs)] * len(graphs)
    weights = [float(w) for w in weights]
    if len(weights) != len(graphs):
        raise ParamGraphError(f"{len(weights)} weights for {len(graphs)} networks; give one per "
                              "network")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ParamGraphError(f"merge weights sum to {sum(weights):g}, not 1")
    first = graphs[0]
    for g, name in zip(graphs[1:], names[1:]):
        check_same_architecture(first, g, names[0], name)
    edge = torch.zeros_like(first.edge_value, dtype=torch.float64)
    node = torch.zeros_like(first.node_value, dtype=torch.float64)
    for i, (g, w) in enumerate(zip(graphs, weights)):
        if align and i:
            g = align_graphs(first, g, scales=scales).graph
        edge += w * g.edge_value.double()
        node += w * g.node_value.double()
    fixed = ~first.weight_edge_mask()
    if bool(fixed.any()):  # fixed wiring is 1 in every network: keep it exactly
        mask = torch.repeat_interleave(fixed, first.edge_size.long())
        edge[mask] = first.edge_value[mask].double()
    dtype = first.edge_value.dtype
    return first.with_values(edge.to(dtype), node.to(dtype))


def interpolate(a: ParamGraph, b: ParamGraph, alpha: float) -> ParamGraph:
    """``(1 - alpha) * a + alpha * b`` (same architecture); see :func:`merge`."""
    return merge([a, b], [1.0 - alpha, alpha])


def evaluate(module: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> dict:
    """``{"loss": ..., "accuracy": ...}`` of ``module`` on ``(x, y)`` in eval mode, no gradients.

    Integer ``y``: cross-entropy and accuracy (``accuracy`` in [0, 1]); floating ``y``: mean
    squared error and ``accuracy`` None. Raises :class:`~paramgraph.ParamGraphError` if the
    outputs do not fit the targets.
    """
    was_training = module.training
    module.eval()
    losses, correct, count = 0.0, 0, 0
    classify = not (y.is_floating_point() or y.is_complex())
    try:
        with torch.no_grad():
            for i in range(0, x.size(0), batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                out = module(xb)
                if not isinstance(out, Tensor):
                    raise ParamGraphError("the network returns a "
                                          f"{type(out).__name__}, not a tensor: cannot score it")
                out = out.double()
                try:
                    if classify:
                        loss = nn.functional.cross_entropy(out, yb, reduction="sum")
                        correct += int((out.argmax(1) == yb).sum())
                    else:
                        loss = nn.functional.mse_loss(out, yb.to(out.dtype), reduction="sum") \
                            / max(1, out[0].numel())
                except (RuntimeError, IndexError, ValueError) as err:
                    raise ParamGraphError(f"the network's outputs {list(out.shape)} do not fit "
                                          f"the targets {list(yb.shape)} ({err})") from None
                losses += float(loss)
                count += xb.size(0)
    finally:
        module.train(was_training)
    return {"loss": losses / max(1, count), "accuracy": correct / count if classify else None}


def interpolation_curve(module: nn.Module, a: ParamGraph, b: ParamGraph, x: Tensor, y: Tensor,
                        points: int = 11) -> list[dict]:
    """Loss (and accuracy) of ``module``'s architecture at ``points`` evenly spaced
    ``alpha`` in [0, 1] on the line from ``a`` (alpha 0) to ``b`` (alpha 1).

    ``module`` is loaded in place with each point's values (it ends holding ``b``). Returns one
    dict per point: ``alpha``, ``loss``, ``accuracy``. Raises ValueError for ``points < 2``.
    """
    if points < 2:
        raise ValueError("an interpolation curve needs at least 2 points")
    out = []
    for k in range(points):
        alpha = k / (points - 1)
        load_into(module, interpolate(a, b, alpha))
        out.append({"alpha": alpha, **evaluate(module, x, y)})
    return out


def loss_barrier(curve: Sequence[dict]) -> float:
    """The loss barrier of an interpolation curve: the largest excess of the loss over the
    straight line between its end points' losses (0 when the path is convex-like)."""
    l0, l1 = curve[0]["loss"], curve[-1]["loss"]
    return max(p["loss"] - ((1 - p["alpha"]) * l0 + p["alpha"] * l1) for p in curve)
