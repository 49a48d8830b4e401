"""The statistics pathway: per-layer statistics equal a direct computation, permutation
invariance, and the baseline's tensor order."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

import paramgraph
from metanet_nets import graphs
from paramgraph.models.statistics import (QUANTILES, LayerStatistics, grouped_value_stats,
                                          pooled_value_stats)
from paramgraph.models.structure import GraphStructure


def test_grouped_value_stats_match_torch_quantile():
    gen = torch.Generator().manual_seed(0)
    counts = [1, 2, 7, 50, 0, 13]
    values = torch.randn(sum(counts), generator=gen, dtype=torch.float64) * 3
    group = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    shuffle = torch.randperm(values.numel(), generator=gen)
    # ignored values (group -1) anywhere in between change nothing
    noise = torch.randn(9, generator=gen, dtype=torch.float64) * 100
    v = torch.cat([values[shuffle], noise])
    g = torch.cat([group[shuffle], torch.full((9,), -1)])
    got = grouped_value_stats(v, g, torch.tensor(counts))
    for k, n in enumerate(counts):
        if n == 0:
            assert torch.equal(got[k, :-1], torch.zeros(7, dtype=torch.float64))
            continue
        x = values[group == k]
        want = torch.cat([x.mean()[None], x.var(unbiased=False).sqrt()[None],
                          torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64))])
        assert torch.allclose(got[k, :7], want, atol=1e-12), k
        assert got[k, 7] == torch.log1p(torch.tensor(float(n), dtype=torch.float64))


def test_pooled_stats_are_exact_for_mean_std_min_max():
    gen = torch.Generator().manual_seed(1)
    counts = torch.tensor([5, 9, 4, 11])
    parent = torch.tensor([0, 0, 1, 1])
    values = torch.randn(int(counts.sum()), generator=gen, dtype=torch.float64)
    group = torch.repeat_interleave(torch.arange(4), counts)
    pooled = pooled_value_stats(grouped_value_stats(values, group, counts), counts, parent, 2)
    for p in range(2):
        x = values[parent[group] == p]
        assert torch.allclose(pooled[p, :3], torch.stack([x.mean(), x.std(unbiased=False),
                                                           x.min()]), atol=1e-12)
        assert torch.allclose(pooled[p, 6], x.max())


@pytest.fixture(scope="module")
def zoo():
    return graphs(seeds=(0,))


def test_layers_are_numbered_per_graph_in_depth_order(zoo):
    _, _, gs = zoo
    st = GraphStructure.of(Batch.from_data_list(gs))
    lay = st.layers
    assert lay.num_layers == int(lay.layers_per_graph.sum())
    for b in range(st.num_graphs):
        ranks = lay.rank[lay.graph == b]
        assert torch.equal(ranks, torch.arange(ranks.numel()))
        assert torch.equal(lay.rank_from_end[lay.graph == b], ranks.flip(0))
    # every weight value belongs to the layer of its edge's target depth
    weight_values = st.weight[st.value_edge]
    assert bool((lay.value_layer >= 0).eq(weight_values).all())


def test_statistics_are_permutation_invariant_and_see_scale(zoo):
    _, _, gs = zoo
    torch.manual_seed(0)
    stats = LayerStatistics(16).double().eval()
    gen = torch.Generator().manual_seed(3)

    def run(graphs_):
        b = Batch.from_data_list(graphs_)
        return stats(GraphStructure.of(b), b.edge_value, b.node_value, b.node_mask)

    base = run(gs)
    permuted = [paramgraph.random_symmetry(g, generator=gen, scales=False, signs=False,
                                           heads=False) for g in gs]
    assert torch.allclose(run(permuted), base, atol=1e-10)
    scaled = [paramgraph.random_symmetry(g, generator=gen, permutations=False, heads=False,
                                         scale_range=(0.1, 10)) for g in gs]
    # control: raw statistics are not scale invariant (the gauge makes them so in quasi mode)
    assert (run(scaled) - base).abs().max() > 1e-3
