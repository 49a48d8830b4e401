"""A layered picture of a parameter graph (matplotlib, no pyplot state, no display needed).

Layers (node depth) run left to right; the neurons of a layer are stacked vertically. Weight edges
are coloured by the sign of their value (a kernel edge by the sign of its mean: red positive, blue
negative) and get stronger with its magnitude; fixed wiring (residual, normalisation, identity,
attention structure) is drawn grey and dashed. Graphs too big to draw one neuron at a time are
summarised: one box per (layer, node type) with its neuron count, one line per group of edges
between two boxes coloured by the net sign of its weights, and the picture says it is a summary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ParamGraphError
from .types import EdgeType, NodeType

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph

MAX_NODES = 400
MAX_EDGES = 5000
_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
_NODE_COLOURS = {
    NodeType.INPUT: "#2ca02c", NodeType.HIDDEN: "#7f7f7f", NodeType.OUTPUT: "#d62728",
    NodeType.RESIDUAL: "#9467bd", NodeType.NORM: "#8c564b", NodeType.COPY: "#bcbd22",
    NodeType.ATTN_Q: "#1f77b4", NodeType.ATTN_K: "#17becf", NodeType.ATTN_V: "#ff7f0e",
}


def draw_graph(graph: ParamGraph, path: str | os.PathLike, *, title: str | None = None,
               max_nodes: int = MAX_NODES, max_edges: int = MAX_EDGES) -> bool:
    """Draw ``graph`` into an image file (``.png``, ``.svg`` or ``.pdf``), written atomically.

    Returns True if the graph was too big (more than ``max_nodes`` nodes or ``max_edges`` edges)
    and was drawn summarised per layer, False if every neuron and edge was drawn. Raises
    :class:`~paramgraph.ParamGraphError` for an unknown image suffix.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from .atomic import atomic_path

    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ParamGraphError(f"{p}: unknown image format '{p.suffix}' (use .png, .svg or .pdf)")
    n, e = graph.num_nodes, graph.edge_index.size(1)
    summarised = n > max_nodes or e > max_edges
    layer = graph.node_layer.long()
    depth = int(layer.max()) + 1 if n else 1
    per_layer = torch.bincount(layer, minlength=depth) if n else torch.zeros(1, dtype=torch.long)
    height = 4.0 if summarised else min(24.0, max(4.0, 0.12 * float(per_layer.max())))
    fig = Figure(figsize=(min(40.0, max(6.0, 1.3 * depth)), height), dpi=110)
    ax = fig.add_subplot()
    heading = title or "parameter graph"
    stats = f"{n} nodes, {e} edges, {depth} layers, {graph.num_params} parameters"
    if summarised:
        _draw_summary(ax, graph)
        ax.set_title(f"{heading}\n{stats}\nSUMMARISED PER LAYER: too big to draw every neuron "
                     f"(limits {max_nodes} nodes, {max_edges} edges)", fontsize=9)
    else:
        _draw_full(ax, graph, per_layer)
        ax.set_title(f"{heading}\n{stats}", fontsize=9)
    ax.set_xlabel("layer (depth from the input)")
    ax.set_xticks(range(depth))
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    with atomic_path(p) as tmp, rc_context({"svg.fonttype": "none"}):  # SVG text stays text
        fig.savefig(tmp, format=fmt)
    return summarised


def _paths(x0, y0, x1, y1, points: int = 16) -> torch.Tensor:
    """[K, points, 2] polylines: straight between neighbouring layers, arcs over skipped ones."""
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    span = (x1 - x0).abs()
    bend = 0.06 * (span - 1).clamp(min=0)
    xs = x0[:, None] + (x1 - x0)[:, None] * t
    ys = y0[:, None] + (y1 - y0)[:, None] * t + bend[:, None] * 4 * t * (1 - t)
    return torch.stack([xs, ys], -1)


def _edge_means(graph: ParamGraph) -> torch.Tensor:
    """[E] float64: each edge's value (a kernel's mean)."""
    size = graph.edge_size.long()
    sums = torch.zeros(size.numel(), dtype=torch.float64).index_add_(
        0, graph.value_edges(), graph.edge_value.double())
    return sums / size.clamp(min=1)


def _weight_colours(values: torch.Tensor, min_alpha: float = 0.15):
    """RGBA per value: red positive, blue negative, more opaque for larger magnitude."""
    from matplotlib import colormaps

    finite = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    scale = scale or 1.0
    rgba = colormaps["coolwarm"](((finite / scale).clamp(-1, 1) * 0.5 + 0.5).numpy())
    rgba[:, 3] = (min_alpha + (1 - min_alpha) * (finite.abs() / scale)).numpy()
    return rgba


def _draw_full(ax, graph: ParamGraph, per_layer: torch.Tensor) -> None:
    from matplotlib.collections import LineCollection

    n = graph.num_nodes
    layer = graph.node_layer.long()
    order = torch.argsort(layer * max(n, 1) + torch.arange(n))
    rank = torch.empty(n, dtype=torch.long)
    starts = torch.cumsum(per_layer, 0) - per_layer
    rank[order] = torch.arange(n) - starts[layer[order]]
    tallest = max(int(per_layer.max()), 1) if n else 1
    y = (rank.double() - (per_layer[layer].double() - 1) / 2) / tallest
    x = layer.double()
    src, dst = graph.endpoints()
    weight = graph.weight_edge_mask()
    segs = _paths(x[src], y[src], x[dst], y[dst])
    if (~weight).any():
        ax.add_collection(LineCollection(segs[~weight].numpy(), colors="#999999",
                                         linestyles="dashed", linewidths=0.6, zorder=1))
    if weight.any():
        ax.add_collection(LineCollection(segs[weight].numpy(),
                                         colors=_weight_colours(_edge_means(graph)[weight]),
                                         linewidths=0.8, zorder=2))
    node_type = graph.node_type.long()
    for t in NodeType:
        mask = node_type == int(t)
        if mask.any():
            ax.scatter(x[mask].numpy(), y[mask].numpy(), s=14, color=_NODE_COLOURS[t], zorder=3,
                       label=t.name.lower(), edgecolors="none")
    ax.set_xlim(-0.5, float(layer.max()) + 0.5 if n else 0.5)
    ax.set_ylim(-0.6, 0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def _draw_summary(ax, graph: ParamGraph) -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.patches import FancyBboxPatch

    layer = graph.node_layer.long()
    node_type = graph.node_type.long()
    n_types = len(NodeType)
    group = layer * n_types + node_type  # one box per (layer, node type)
    keys, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    box_layer = keys // n_types
    box_type = keys % n_types
    depth = int(box_layer.max()) + 1
    pos = torch.zeros(keys.numel(), dtype=torch.float64)
    for d in range(depth):  # few boxes: one per (layer, type)
        idx = (box_layer == d).nonzero().flatten()
        pos[idx] = torch.linspace(-0.35, 0.35, idx.numel()).double() if idx.numel() > 1 else 0.0
    src_box, dst_box = inverse[graph.edge_index[0]], inverse[graph.edge_index[1]]
    etype = graph.edge_type.long()
    pair = (src_box * keys.numel() + dst_box) * len(EdgeType) + etype
    pairs, pair_inv, pair_count = torch.unique(pair, return_inverse=True, return_counts=True)
    w = torch.nan_to_num(_edge_means(graph), nan=0.0, posinf=0.0, neginf=0.0)
    total = torch.zeros(pairs.numel(), dtype=torch.float64).index_add_(0, pair_inv, w)
    total_abs = torch.zeros(pairs.numel(), dtype=torch.float64).index_add_(0, pair_inv, w.abs())
    means = total / total_abs.clamp(min=1e-30)  # net sign of the group, in [-1, 1]
    p_type = pairs % len(EdgeType)
    p_src = (pairs // len(EdgeType)) // keys.numel()
    p_dst = (pairs // len(EdgeType)) % keys.numel()
    x = box_layer.double()
    segs = _paths(x[p_src], pos[p_src], x[p_dst], pos[p_dst]).numpy()
    is_weight = _weight_type_mask(p_type)
    widths = (0.5 + torch.log10(pair_count.double())).numpy()
    colours = _weight_colours(means, min_alpha=0.6)
    colours[~is_weight.numpy()] = (0.6, 0.6, 0.6, 0.8)
    ax.add_collection(LineCollection(segs, colors=colours, linewidths=widths, zorder=1))
    for i in range(keys.numel()):
        t = NodeType(int(box_type[i]))
        ax.add_patch(FancyBboxPatch((float(x[i]) - 0.3, float(pos[i]) - 0.035), 0.6, 0.07,
                                    boxstyle="round,pad=0.01", facecolor=_NODE_COLOURS[t],
                                    alpha=0.85, zorder=2))
        ax.text(float(x[i]), float(pos[i]), f"{t.name.lower()} x{int(counts[i])}", ha="center",
                va="center", fontsize=6, color="white", zorder=3)
    ax.set_xlim(-0.5, depth - 0.5)
    ax.set_ylim(-0.5, 0.5)
    ax.text(0.99, 0.01, "summary: one box per layer and node type, line width ~ log(edge count), "
            "colour = net sign of the weights", transform=ax.transAxes, ha="right", va="bottom", fontsize=6)


def _weight_type_mask(etype: torch.Tensor) -> torch.Tensor:
    from .types import WEIGHT_EDGE_TYPES

    return torch.isin(etype, torch.tensor([int(t) for t in WEIGHT_EDGE_TYPES]))
