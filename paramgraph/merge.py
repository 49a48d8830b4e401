"""Merging networks of one architecture: weighted averages of their parameters, and the loss
along the straight line between two of them.

:func:`merge` averages every parameter and buffer the graphs hold (weights, biases,
normalisation parameters and running statistics; the fixed wiring stays 1). With ``align=True``
each network is first aligned to the first (:func:`paramgraph.align.align`), which is what makes
an average of independently trained networks work (linear mode connectivity up to permutation).
:func:`interpolation_curve` evaluates a module at evenly spaced points between two graphs and
:func:`loss_barrier` reads the barrier off it.

:func:`repair` corrects the merged network's activation statistics (REPAIR, Jordan et al.,
"REPAIR: REnormalizing Permuted Activations for Interpolation Repair", 2023): averaging two
networks whose neurons are only partly correlated shrinks the spread of every hidden channel
(the "variance collapse" of interpolated networks), layer after layer. On example inputs each
hidden channel's output mean and standard deviation are set to the weighted average of the
networks' own, by a per-channel affine map folded into the layer's weights and bias (the merged
network is still a network of the same architecture, with no extra layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .align import align as align_graphs
from .activations import forward_with_hooks
from .align import check_same_architecture
from .errors import ParamGraphError
from .inverse import from_state_dict, load_into

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph


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
                        points: int = 11, repair_x: Tensor | None = None) -> list[dict]:
    """Loss (and accuracy) of ``module``'s architecture at ``points`` evenly spaced
    ``alpha`` in [0, 1] on the line from ``a`` (alpha 0) to ``b`` (alpha 1).

    ``module`` is loaded in place with each point's values (it ends holding ``b``). With
    ``repair_x`` (example inputs) every point is first corrected by :func:`repair` towards the
    ``(1 - alpha, alpha)`` average of the end points' statistics. Returns one dict per point:
    ``alpha``, ``loss``, ``accuracy``. Raises ValueError for ``points < 2``.
    """
    if points < 2:
        raise ValueError("an interpolation curve needs at least 2 points")
    stats = None
    if repair_x is not None:
        stats = [_channel_stats(module, g, repair_x) for g in (a, b)]
    out = []
    for k in range(points):
        alpha = k / (points - 1)
        point = interpolate(a, b, alpha)
        if stats is not None:
            point = _repair(module, point, stats, [1.0 - alpha, alpha], repair_x)
        load_into(module, point)
        out.append({"alpha": alpha, **evaluate(module, x, y)})
    return out


# -- REPAIR ------------------------------------------------------------------------------------

_AFFINE_OUT = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
               nn.LayerNorm, nn.GroupNorm)


def _repairable(module: nn.Module, graph: ParamGraph) -> dict[str, nn.Module]:
    """``{path: submodule}`` of the layers whose outputs are hidden channels (a permutable set of
    the graph) and that end in a per-channel bias the correction can be folded into."""
    out = {}
    for seg in graph.segments:
        if seg.kind != "node" or not seg.name.endswith(".bias"):
            continue
        path = seg.name.rsplit(".", 1)[0]
        try:
            sub = module.get_submodule(path)
        except AttributeError:
            continue
        if not isinstance(sub, _AFFINE_OUT) or getattr(sub, "bias", None) is None \
                or getattr(sub, "weight", None) is None:
            continue
        if isinstance(sub, nn.modules.conv._ConvTransposeNd) or (
                isinstance(sub, nn.LayerNorm) and len(sub.normalized_shape) != 1):
            continue  # output channels not on the weight's first axis / not one axis
        if bool((graph.perm_group[seg.start:seg.start + seg.count] >= 0).all()):
            out[path] = sub
    return out


def _flat(module: nn.Module, out: Tensor) -> Tensor:
    """``[samples, channels]`` view of a layer's output (channels last for linear layers and
    layer norms, second for convolutions and batch/group norms)."""
    dim = -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1
    return out.movedim(dim, -1).reshape(-1, out.size(dim))


def _channel_stats(module: nn.Module, graph: ParamGraph, x: Tensor) -> dict[str, tuple]:
    """``{path: (mean, std)}`` (float64, per channel) of the repairable layers' outputs of
    ``module`` holding ``graph``, on the inputs ``x``."""
    load_into(module, graph)
    layers = _repairable(module, graph)
    stats: dict[str, tuple] = {}

    def hook(m, _inp, out, path):
        if path not in stats and isinstance(out, Tensor):
            v = _flat(m, out.detach()).double()
            stats[path] = (v.mean(0), v.std(0, unbiased=False))

    forward_with_hooks(module, x, [(m, lambda m, i, o, p=p: hook(m, i, o, p))
                                   for p, m in layers.items()])
    return stats


def _repair(module: nn.Module, merged: ParamGraph, stats: Sequence[dict], weights: Sequence[float],
            x: Tensor, eps: float = 1e-6) -> ParamGraph:
    """:func:`repair` with the networks' statistics already measured."""
    load_into(module, merged)
    layers = _repairable(module, merged)
    done: set[str] = set()

    def hook(m, _inp, out, path):
        # one forward pass corrects every layer in the order the network runs them: each layer
        # sees the already corrected layers before it, and passes its corrected output on
        if path in done or not isinstance(out, Tensor) or any(path not in s for s in stats):
            return None
        done.add(path)
        v = _flat(m, out.detach()).double()
        mean, std = v.mean(0), v.std(0, unbiased=False)
        t_mean = sum(w * s[path][0] for w, s in zip(weights, stats))
        t_std = sum(w * s[path][1] for w, s in zip(weights, stats))
        live = std > eps * (1.0 + t_std)  # a constant channel keeps its scale, gets its mean
        gain = torch.where(live, t_std / std.clamp_min(1e-300), torch.ones_like(std))
        shift = t_mean - gain * mean
        w_ = m.weight.data
        shape = [-1] + [1] * (w_.dim() - 1)
        m.weight.data = (w_.double() * gain.view(shape)).to(w_.dtype)
        m.bias.data = (m.bias.data.double() * gain + shift).to(m.bias.dtype)
        dim = -1 if isinstance(m, (nn.Linear, nn.LayerNorm)) else 1
        view = [1] * out.dim()
        view[dim] = -1
        return (out.double() * gain.view(view) + shift.view(view)).to(out.dtype)

    forward_with_hooks(module, x, [(m, lambda m, i, o, p=p: hook(m, i, o, p))
                                   for p, m in layers.items()])
    return from_state_dict(merged, module.state_dict())


def repair(module: nn.Module, graphs: Sequence[ParamGraph], merged: ParamGraph, x: Tensor,
           weights: Sequence[float] | None = None) -> ParamGraph:
    """``merged`` (an average of ``graphs``, aligned) with REPAIR's correction of its hidden
    channels' statistics on the example inputs ``x`` (see the module docstring).

    ``module``: a module of the architecture (loaded in place; it ends holding the result).
    Every layer whose output is a permutable channel set and that has a per-channel bias (a
    linear layer or convolution with a bias, a batch, group or layer norm with its affine
    parameters) is corrected, in the order the network runs them, so that each channel's mean
    and standard deviation over ``x`` (every position of a convolution a sample) are the
    ``weights``-average (default equal) of the graphs' own; the output layer is left alone. A
    channel that is constant in the merged network only gets its mean. Returns a graph of
    ``merged``'s structure and dtype. Raises :class:`~paramgraph.ParamGraphError` for
    mismatched weights.
    """
    if weights is None:
        weights = [1.0 / len(graphs)] * len(graphs)
    if len(weights) != len(graphs):
        raise ParamGraphError(f"{len(weights)} weights for {len(graphs)} networks; give one per "
                              "network")
    x = x.to(merged.edge_value.dtype) if x.is_floating_point() else x
    stats = [_channel_stats(module, g, x) for g in graphs]
    return _repair(module, merged, stats, [float(w) for w in weights], x)


def loss_barrier(curve: Sequence[dict]) -> float:
    """The loss barrier of an interpolation curve: the largest excess of the loss over the
    straight line between its end points' losses (0 when the path is convex-like)."""
    l0, l1 = curve[0]["loss"], curve[-1]["loss"]
    return max(p["loss"] - ((1 - p["alpha"]) * l0 + p["alpha"] * l1) for p in curve)
