"""A statistics pathway: per-layer weight statistics of each graph, as one invariant vector.

The strongest simple predictor of a network's accuracy from its weights is a gradient-boosting
model on per-layer statistics (StatNN, Unterthiner et al. 2020; our ``paramgraph baseline``).
:class:`LayerStatistics` computes the same kind of features inside the metanet, so that the GNN
only has to add to what the statistics already tell, and feeds them to the invariant head.

For every weight layer ``l`` of a graph (:class:`~paramgraph.models.structure.WeightLayers`):

.. math::
    s_l = \\big[\\,\\mathrm{mean}(w),\\ \\mathrm{std}(w),\\ q_{0}(w),\\ q_{.25}(w),\\ q_{.5}(w),
          \\ q_{.75}(w),\\ q_{1}(w),\\ \\log|w|,\\ \\mathrm{mean}_n(\\theta_n),
          \\ \\mathrm{std}_n(\\theta_n)\\,\\big]

over its weight values :math:`w` and over the five node slots :math:`\\theta_n` (bias,
normalisation weight and shift, running mean, log running variance; present slots only) of the
neurons it feeds. A heterogeneous batch needs a fixed length whatever the depth, so, as in the
baseline, the first ``K`` and the last ``K`` layers of each graph fill ``2K`` slots (with a 0/1
"present" flag; a short network fills both ends), followed by the statistics of all the graph's
weights together (pooled from the layers' own, so one sort per batch serves every statistic) and
log-counts of values and layers. Everything is ``symlog``-compressed, then
layer-normalised (per graph: no prediction depends on the rest of the batch) and mapped by an
MLP to ``hidden`` features.

Symmetry. Every statistic is a function of a multiset (of a layer's values, of its neurons'
slots), so it is permutation invariant. It is *not* scale or sign invariant by itself: the
metanet computes it on gauged values in ``quasi`` mode and on the canonical section in
``strict`` mode (exactly invariant there), and on raw values in ``perm`` mode (permutation
invariant only, like the baseline).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from .encoders import node_slot_inputs
from .structure import GraphStructure, WeightLayers, symlog

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
_SLOTS = 5
_VALUE_STATS = 2 + len(QUANTILES) + 1  # mean, std, quantiles, log count
PER_LAYER = _VALUE_STATS + 2 * _SLOTS


def grouped_value_stats(values: Tensor, group: Tensor, count: Tensor) -> Tensor:
    """``[G, 8]`` per group: mean, std, the :data:`QUANTILES` (linear interpolation, as
    ``torch.quantile``) and ``log(1 + count)`` of the values in each group; zeros for empty
    groups. ``group`` [V]: each value's group in ``[0, G)`` (values of group ``-1`` are ignored
    and sort after all others);
    ``count`` [G]: values per group (known from the structure, so no size is read back)."""
    g = count.numel()
    group = torch.where(group >= 0, group, g)  # ignored values: a last group, dropped below
    dtype = values.dtype
    n = count.to(dtype).clamp_min(1)
    mean = scatter(values, group, 0, dim_size=g + 1, reduce="sum")[:g] / n
    sq = scatter(values.square(), group, 0, dim_size=g + 1, reduce="sum")[:g] / n
    std = (sq - mean.square()).clamp_min(0).add(1e-30).sqrt()
    # one sort by (group, value): the key is the group plus a number in (0, 1) that increases
    # with the value, so each group's values come out contiguous and ascending
    key = group.to(torch.float64) + torch.atan(values.detach().to(torch.float64)) / math.pi + 0.5
    ordered = values[torch.argsort(key)]
    start = torch.cumsum(count, 0) - count
    last = (count - 1).clamp_min(0).to(dtype)
    qs = []
    for q in QUANTILES:
        pos = last * q
        lo = pos.floor()
        frac = pos - lo
        lo_i = (start + lo.long()).clamp(0, max(ordered.numel() - 1, 0))
        hi_i = (start + pos.ceil().long()).clamp(0, max(ordered.numel() - 1, 0))
        if ordered.numel():
            qs.append(ordered[lo_i] * (1 - frac) + ordered[hi_i] * frac)
        else:
            qs.append(torch.zeros_like(mean))
    present = (count > 0).to(dtype)
    stats = torch.stack([mean, std, *qs], 1) * present.unsqueeze(1)
    return torch.cat([stats, torch.log1p(count.to(dtype)).unsqueeze(1)], 1)


def pooled_value_stats(stats: Tensor, count: Tensor, parent: Tensor, num_parents: int) -> Tensor:
    """The statistics of :func:`grouped_value_stats` of unions of groups, from the groups' own:
    ``stats`` [G, 8] and ``count`` [G] of non-empty groups, ``parent`` [G] the union each belongs
    to. Mean, std, minimum, maximum and count are exact; the inner quantiles are the
    count-weighted means of the groups' (a cheap stand-in for a second sort)."""
    dtype = stats.dtype
    w = count.to(dtype).unsqueeze(1)
    n = scatter(w, parent, 0, dim_size=num_parents, reduce="sum")
    safe = n.clamp_min(1)
    mean, std = stats[:, :1], stats[:, 1:2]
    pooled_mean = scatter(w * mean, parent, 0, dim_size=num_parents, reduce="sum") / safe
    second = scatter(w * (std.square() + mean.square()), parent, 0, dim_size=num_parents,
                     reduce="sum") / safe
    pooled_std = (second - pooled_mean.square()).clamp_min(0).add(1e-30).sqrt()
    inner = scatter(w * stats[:, 3:6], parent, 0, dim_size=num_parents, reduce="sum") / safe
    low = scatter(stats[:, 2:3], parent, 0, dim_size=num_parents, reduce="min")
    high = scatter(stats[:, 6:7], parent, 0, dim_size=num_parents, reduce="max")
    present = (n > 0).to(dtype)
    out = torch.cat([pooled_mean, pooled_std, low, inner, high], 1) * present
    return torch.cat([out, torch.log1p(n)], 1)


def grouped_slot_stats(slots: Tensor, mask: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """``[G, 10]``: mean and std of each of the five node slots over the present entries of each
    group's neurons (``group`` -1: ignored); zeros where a group has none."""
    g = num_groups
    group = torch.where(group >= 0, group, g)  # ignored neurons: a last group, dropped below
    mask = mask.to(slots.dtype)
    n = scatter(mask, group, 0, dim_size=g + 1, reduce="sum")[:g]
    safe = n.clamp_min(1)
    mean = scatter(slots * mask, group, 0, dim_size=g + 1, reduce="sum")[:g] / safe
    sq = scatter(slots.square() * mask, group, 0, dim_size=g + 1, reduce="sum")[:g] / safe
    std = (sq - mean.square()).clamp_min(0).add(1e-30).sqrt() * (n > 0).to(slots.dtype)
    return torch.cat([mean, std], 1)


def num_layer_features(ends: int) -> int:
    """The length of :func:`layer_features`' vector for ``ends`` layers at each end."""
    return 2 * ends * (PER_LAYER + 1) + PER_LAYER + 1


def layer_features(st: GraphStructure, edge_value: Tensor, node_value: Tensor, node_mask: Tensor,
                   ends: int = 4) -> Tensor:
    """The raw (uncompressed) per-layer statistics ``[num_graphs, num_layer_features(ends)]`` of
    the module docstring, in the dtype of ``edge_value``."""
    lay: WeightLayers = st.layers
    per_layer = torch.cat([
        grouped_value_stats(edge_value, lay.value_layer, lay.count),
        grouped_slot_stats(node_slot_inputs(node_value, node_mask), node_mask,
                           lay.node_layer_id, lay.num_layers)], 1)
    b, k = st.num_graphs, ends
    flagged = torch.cat([torch.ones_like(per_layer[:, :1]), per_layer], 1)
    # the first k and the last k layers of each graph to their slots; every other layer to
    # a spare slot 2k that is dropped (no boolean indexing: no size is read back)
    first = torch.where(lay.rank < k, lay.rank, torch.full_like(lay.rank, 2 * k))
    last = torch.where(lay.rank_from_end < k, 2 * k - 1 - lay.rank_from_end,
                       torch.full_like(lay.rank, 2 * k))
    slots = per_layer.new_zeros(b, 2 * k + 1, PER_LAYER + 1)
    slots = slots.index_put((lay.graph, first), flagged)
    slots = slots.index_put((lay.graph, last), flagged)[:, : 2 * k]
    whole = torch.cat([
        pooled_value_stats(per_layer[:, :_VALUE_STATS], lay.count, lay.graph, b),
        grouped_slot_stats(node_slot_inputs(node_value, node_mask), node_mask, st.node_graph,
                           b),
        torch.log1p(lay.layers_per_graph.to(edge_value.dtype)).unsqueeze(1)], 1)
    return torch.cat([slots.flatten(1), whole], 1)


class LayerStatistics(nn.Module):
    """Per-layer statistics of each graph to ``[num_graphs, hidden]``; see the module doc."""

    def __init__(self, hidden: int, ends: int = 4):
        super().__init__()
        self.ends = ends
        self.num_features = num_layer_features(ends)
        # per-graph (not batch) normalisation: predictions must not depend on the batch, and
        # data-parallel ranks must agree with one process
        self.norm = nn.LayerNorm(self.num_features)
        self.mlp = nn.Sequential(nn.Linear(self.num_features, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden))

    def features(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                 node_mask: Tensor) -> Tensor:
        """The raw (uncompressed) feature matrix ``[num_graphs, num_features]``."""
        return layer_features(st, edge_value, node_value, node_mask, self.ends)

    def forward(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                node_mask: Tensor) -> Tensor:
        return self.mlp(self.norm(symlog(self.features(st, edge_value, node_value, node_mask))))
