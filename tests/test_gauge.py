"""The gauge map and the building blocks of the metanet, tested one at a time (float64)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from paramgraph import models
import paramgraph
from catalogue import random_inputs
from metanet_nets import assert_same_functions, build, graphs
from paramgraph.models.encoders import KernelBins
from paramgraph.models.gauge import apply_factors, canonical_factors
from paramgraph.models.layers import EdgeAggregation, gate_tanh, scatter_max
from paramgraph.models.backbone import Backbone
from paramgraph.models.readers import canon
from paramgraph.models.structure import GraphStructure


@pytest.fixture(scope="module")
def zoo():
    names, modules, gs = graphs(seeds=(0, 1))
    return names, modules, gs, Batch.from_data_list(gs)


def _moved(gs, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    kw = {"heads": False, "scale_range": (1e-2, 1e2), **kw}
    return [paramgraph.random_symmetry(g, generator=gen, **kw) for g in gs]


def test_apply_factors_is_paramgraphs_group_action(zoo):
    _, _, gs, batch = zoo
    gen = torch.Generator().manual_seed(0)
    elements = [paramgraph.random_element(g, generator=gen, permutations=False, heads=False)
                for g in gs]
    st = GraphStructure.of(batch)
    edge, node = apply_factors(st, torch.cat([e.factor for e in elements]), batch.edge_value,
                               batch.node_value)
    want = Batch.from_data_list([paramgraph.apply_element(g, e) for g, e in zip(gs, elements)])
    assert torch.equal(edge, want.edge_value) and torch.equal(node, want.node_value)


def test_canonical_network_is_exactly_invariant_and_functionally_identical(zoo):
    names, modules, gs, batch = zoo
    st = GraphStructure.of(batch)
    f = canonical_factors(st, batch.edge_value, batch.node_value)
    edge, node = apply_factors(st, f, batch.edge_value, batch.node_value)
    moved = Batch.from_data_list(_moved(gs, 1, permutations=False))
    f2 = canonical_factors(st, moved.edge_value, moved.node_value)
    edge2, node2 = apply_factors(st, f2, moved.edge_value, moved.node_value)
    assert (edge - edge2).abs().max() <= 1e-12 * edge.abs().max()
    assert (node - node2).abs().max() <= 1e-12 * node.abs().max()
    assert not torch.allclose(moved.edge_value, batch.edge_value)
    # only neurons with a symmetry move; the canonical network computes the same function
    assert torch.all((f == 1) | st.scale | st.sign)
    assert (f[st.scale] != 1).all() and (f[st.sign] == -1).any()
    assert_same_functions(names, modules, batch.with_values(edge, node).to_data_list(), 2,
                          rtol=1e-10, atol=1e-12)


def test_canonical_form_unit_norms_and_signs(zoo):
    _, _, _, batch = zoo
    st = GraphStructure.of(batch)
    f = canonical_factors(st, batch.edge_value, batch.node_value)
    edge, node = apply_factors(st, f, batch.edge_value, batch.node_value)
    ss = scatter(edge.square(), st.value_edge, 0, dim_size=st.num_edges, reduce="sum")
    ss = torch.where(st.weight, ss, torch.zeros_like(ss))
    incoming = scatter(ss, st.dst, 0, dim_size=st.num_nodes, reduce="sum")
    plain_norm = (incoming + node[:, 0].square()).sqrt()
    normed_norm = (node[:, 1].square() + node[:, 2].square()).sqrt()
    norm = torch.where(st.plain, plain_norm, normed_norm)
    assert torch.allclose(norm[st.scale], torch.ones_like(norm[st.scale]), atol=1e-12)
    primary = torch.where(st.plain, node[:, 0], node[:, 1])
    assert (primary[st.sign] > 0).all()


def _norms(st, edge, node):
    """Incoming and outgoing squared norms per neuron, as balance_factors defines them."""
    ss = scatter(edge.square(), st.value_edge, 0, dim_size=st.num_edges, reduce="sum")
    ss = torch.where(st.weight, ss, torch.zeros_like(ss))
    into_plain = torch.where(st.plain[st.dst], ss, torch.zeros_like(ss))
    incoming = scatter(into_plain, st.dst, 0, dim_size=st.num_nodes, reduce="sum")
    incoming = incoming + torch.where(st.plain, node[:, 0].square(),
                                      node[:, 1].square() + node[:, 2].square())
    outgoing = scatter(ss, st.src, 0, dim_size=st.num_nodes, reduce="sum")
    return incoming, outgoing


def test_balanced_section_is_invariant_functional_and_balances_norms(zoo):
    names, modules, gs, batch = zoo
    st = GraphStructure.of(batch)
    bare = models.GaugeMap(learned=False, sweeps=200).double()
    edge, node, _ = bare(st, batch.edge_value, batch.node_value, batch.node_mask)
    moved = Batch.from_data_list(_moved(gs, 3, permutations=False))
    edge2, node2, _ = bare(st, moved.edge_value, moved.node_value, moved.node_mask)
    assert (edge - edge2).abs().max() <= 1e-10 * edge.abs().max()
    assert (node - node2).abs().max() <= 1e-10 * node.abs().max()
    # converged: every scalable neuron with weights on both sides has equal in and out norms
    incoming, outgoing = _norms(st, edge, node)
    both = st.scale & (incoming > 1e-9) & (outgoing > 1e-9)
    assert both.sum() > 10
    assert torch.allclose(incoming[both], outgoing[both], rtol=1e-6)
    # ... which is the least total norm of the orbit: never above the unit-norm section's
    unit = models.GaugeMap(learned=False, section="unit").double()
    edge_u, node_u, _ = unit(st, batch.edge_value, batch.node_value, batch.node_mask)
    for b in range(st.num_graphs):
        on_edge = st.edge_graph[st.value_edge] == b
        on_node = st.node_graph == b
        balanced = edge[on_edge].square().sum() + node[on_node, :3].square().sum()
        unit_norm = edge_u[on_edge].square().sum() + node_u[on_node, :3].square().sum()
        assert balanced <= unit_norm * (1 + 1e-9)
    assert_same_functions(names, modules, batch.with_values(edge, node).to_data_list(), 4,
                          rtol=1e-9, atol=1e-11)


def test_balancing_raw_weights_is_not_invariant_control(zoo):
    """Control: the same sweeps from the raw (not canonical) network stop at a point that depends
    on where in the orbit they started, which is why the section balances the canonical form."""
    from paramgraph.models.gauge import balance_factors

    _, _, gs, batch = zoo
    st = GraphStructure.of(batch)
    moved = Batch.from_data_list(_moved(gs, 3, permutations=False))

    def raw_balanced(b):
        edge_ss = scatter(b.edge_value.square(), st.value_edge, 0, dim_size=st.num_edges,
                          reduce="sum")
        node_ss = torch.where(st.plain, b.node_value[:, 0].square(),
                              b.node_value[:, 1].square() + b.node_value[:, 2].square())
        return apply_factors(st, balance_factors(st, edge_ss, node_ss, sweeps=2), b.edge_value,
                             b.node_value)[0]

    assert (raw_balanced(batch) - raw_balanced(moved)).abs().max() > 1e-3


def test_gauge_handles_zero_norm_neurons():
    module, x = build("mlp_relu")
    with torch.no_grad():
        module[0].weight[2].zero_()
        module[0].bias[2] = 0.0
    g = paramgraph.from_module(module, x)
    st = GraphStructure.of(g)
    edge, node, alpha = models.GaugeMap().double()(st, g.edge_value, g.node_value, g.node_mask)
    assert torch.isfinite(edge).all() and torch.isfinite(node).all() and torch.isfinite(alpha).all()


def test_gauge_is_differentiable_in_values_and_parameters(zoo):
    _, _, _, batch = zoo
    st = GraphStructure.of(batch)
    gauge = models.GaugeMap().double()
    values = batch.edge_value.clone().requires_grad_()
    edge, node, alpha = gauge(st, values, batch.node_value, batch.node_mask)
    (edge.square().sum() + node.square().sum()).backward()
    assert torch.isfinite(values.grad).all() and values.grad.abs().max() > 0
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in gauge.parameters())


def test_gauge_bound_limits_the_learned_factor(zoo):
    _, _, _, batch = zoo
    st = GraphStructure.of(batch)
    gauge = models.GaugeMap(bound=0.5).double()
    with torch.no_grad():
        for p in gauge.parameters():
            p.normal_(std=3.0)
    f, _ = gauge.section_factors(st, batch.edge_value, batch.node_value)
    _, _, alpha = gauge(st, batch.edge_value, batch.node_value, batch.node_mask)
    ratio = (alpha / f)[st.scale]
    assert (ratio.log().abs() <= 0.5 + 1e-12).all() and ratio.log().abs().max() > 0.1
    assert torch.equal(alpha[~st.scale], f[~st.scale])


def test_incoming_sign_statistic_is_an_exact_section_too(zoo):
    """signs="incoming": sign-symmetric plain neurons get a positive sum of incoming weights
    instead of a positive bias; the canonical network is as exactly invariant, computes the same
    function, and differs from the bias section (the control that the option does something); a
    quasi metanet built on it is invariant under the whole scale/sign group with permutations."""
    from paramgraph.canonical import edge_value_sums

    names, modules, gs, batch = zoo
    st = GraphStructure.of(batch)
    moved = Batch.from_data_list(_moved(gs, 6))
    st_moved = GraphStructure.of(moved)

    def canonical(b, s, signs):
        f = canonical_factors(s, b.edge_value, b.node_value, signs=signs)
        return f, apply_factors(s, f, b.edge_value, b.node_value)

    f, (edge, node) = canonical(batch, st, "incoming")
    _, (edge2, _) = canonical(Batch.from_data_list(_moved(gs, 6, permutations=False)), st,
                              "incoming")
    assert (edge - edge2).abs().max() <= 1e-12 * edge.abs().max()
    _, (edge_bias, _) = canonical(batch, st, "bias")
    assert (edge - edge_bias).abs().max() > 1e-3
    _, sv = edge_value_sums(st, edge)
    wsum = torch.zeros(st.num_nodes, dtype=edge.dtype).index_add(
        0, st.dst, torch.where(st.weight, sv, torch.zeros_like(sv)))
    flippable = st.sign & st.plain & (wsum.abs() > 1e-9)
    assert flippable.any() and (wsum[flippable] > 0).all()
    assert_same_functions(names, modules, batch.with_values(edge, node).to_data_list(), 7,
                          rtol=1e-10, atol=1e-12)
    torch.manual_seed(0)
    net = models.MetaNet(mode="quasi", hidden=16, layers=2, gauge_signs="incoming").double()
    with torch.no_grad():
        out = net(batch, st)
        out_moved = net(moved, st_moved)
    assert (out - out_moved).abs().max() <= 1e-9
    with pytest.raises(ValueError, match="unknown sign statistic"):
        canonical_factors(st, batch.edge_value, batch.node_value, signs="largest")


def test_gauge_without_signs_fixes_scales_and_keeps_signs(zoo):
    """The ablation ``signs="none"``: the gauged network is invariant to scalings, not to sign
    flips (each sign-symmetric neuron keeps its input sign), and still computes the function."""
    names, modules, gs, batch = zoo
    st = GraphStructure.of(batch)
    gauge = models.GaugeMap(signs="none").double()

    def gauged(b):
        return gauge(st, b.edge_value, b.node_value, b.node_mask)

    edge, node, alpha = gauged(batch)
    assert (alpha > 0).all() and st.sign.any()
    scaled = Batch.from_data_list(_moved(gs, 4, permutations=False, signs=False))
    flipped = Batch.from_data_list(_moved(gs, 4, permutations=False, scales=False))
    assert (gauged(scaled)[0] - edge).abs().max() <= 1e-10 * edge.abs().max()
    assert (gauged(flipped)[0] - edge).abs().max() > 1e-3  # the control: signs are not fixed
    with_signs = models.GaugeMap().double()
    with_signs.load_state_dict(gauge.state_dict())
    flipped_back = with_signs(st, flipped.edge_value, flipped.node_value, flipped.node_mask)[0]
    assert (flipped_back - with_signs(st, batch.edge_value, batch.node_value,
                                      batch.node_mask)[0]).abs().max() <= 1e-10 * edge.abs().max()
    assert_same_functions(names, modules, batch.with_values(edge, node).to_data_list(), 5,
                          rtol=1e-8, atol=1e-10)


# -- building blocks -------------------------------------------------------------------------------

@pytest.mark.parametrize("aggrs", [("sum", "mean", "max"), ("min", "std")])
def test_edge_aggregation_matches_scatter(zoo, aggrs):
    _, _, _, batch = zoo
    st = GraphStructure.of(batch)
    assert not bool((st.src[1:] >= st.src[:-1]).all())  # edges out of order in one direction
    e = torch.randn(st.num_edges, 4, dtype=torch.float64)
    agg = EdgeAggregation(aggrs)
    for reverse, index, degree in ((False, st.dst, st.in_degree),
                                   (True, st.src, st.out_degree)):
        got = agg(e, st.edge_index, degree, reverse=reverse)
        deg = degree.clamp_min(1).double().unsqueeze(1)
        want = []
        for a in aggrs:
            s = scatter(e, index, 0, dim_size=st.num_nodes, reduce="sum")
            if a == "sum":
                want.append(s / deg.sqrt())
            elif a == "mean":
                want.append(s / deg)
            elif a == "std":
                sq = scatter(e.square(), index, 0, dim_size=st.num_nodes, reduce="sum") / deg
                want.append((sq - (s / deg).square()).clamp_min(1e-12).sqrt())
            else:
                want.append(scatter(e, index, 0, dim_size=st.num_nodes, reduce=a))
        assert torch.allclose(got, torch.cat(want, 1), rtol=1e-12, atol=1e-12)


def test_scatter_max_matches_scatter_reduce_ties_included():
    # rows 1 and 5 tie in channel 0 of segment 0, rows 0 and 1 in channel 1; segment 2 has ties
    # in both channels; segments 1 and 3 are empty
    index = torch.tensor([0, 0, 2, 2, 2, 0])
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [2.0, -1.0], [2.0, -4.0], [0.0, -1.0], [3.0, 0.0]],
                     dtype=torch.float64)
    grad = torch.randn(4, 2, dtype=torch.float64)
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = scatter_max(mine, index, 4)
    want = torch.zeros(4, 2, dtype=torch.float64).scatter_reduce(
        0, index.unsqueeze(1).expand(-1, 2), ref, "amax", include_self=False)
    assert torch.equal(got, want) and got[[1, 3]].abs().sum() == 0
    got.backward(grad)
    want.backward(grad)
    assert torch.allclose(mine.grad, ref.grad, rtol=0, atol=1e-15)
    assert mine.grad[1, 0] == mine.grad[5, 0] == grad[0, 0] / 2  # a tie shares the gradient


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 3e-7), (torch.float64, 1e-15),
                                         (torch.bfloat16, 8e-3)])
def test_gate_tanh_is_tanh_with_its_gradient(dtype, tol):
    # values around zero (where 2 sigmoid(2x) - 1 cancels), in the bulk and saturated
    x = torch.cat([torch.linspace(-1e-3, 1e-3, 101), torch.linspace(-6, 6, 1001),
                   torch.tensor([-80.0, -20.0, 20.0, 80.0])]).to(dtype)
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = gate_tanh(mine), torch.tanh(ref)
    assert got.dtype == dtype
    assert (got.double() - want.double()).abs().max() <= tol
    assert got[-4:].tolist() == [-1.0, -1.0, 1.0, 1.0]  # saturates exactly
    grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    got.backward(grad)
    want.backward(grad)
    assert (mine.grad.double() - ref.grad.double()).abs().max() <= 4 * tol
    # control: the comparison tells tanh from a function ten tolerances off
    assert (torch.tanh(x.double()) * (1 + 10 * tol) - want.double()).abs().max() > 3 * tol


def test_kernel_bins_round_trip_and_long_kernels(zoo):
    _, _, _, batch = zoo
    st = GraphStructure.of(batch)
    bins = KernelBins(st, cap=64)
    assert bins.width == int(batch.edge_size.max())
    binned = bins.pool(batch.edge_value)
    assert torch.equal(bins.unpool(binned), batch.edge_value)  # no kernel is longer than 64
    small = KernelBins(st, cap=4)
    pooled = small.pool(batch.edge_value)
    assert pooled.shape == (st.num_edges, 4)
    # a 9-value kernel is averaged into 4 consecutive bins; the bin means keep the total
    k = int((batch.edge_size == 9).nonzero()[0])
    start = int(batch.edge_size[:k].long().sum())
    values = batch.edge_value[start : start + 9]
    counts = small.counts[k]
    assert torch.allclose((pooled[k] * counts).sum(), values.sum())
    assert counts.tolist() == [3.0, 2.0, 2.0, 2.0]


def test_canon_is_invariant():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    scaled = torch.rand(50, generator=gen) < 0.5
    signed = torch.rand(50, generator=gen) < 0.5
    t = torch.exp(torch.randn(50, generator=gen, dtype=torch.float64) * 3)
    t = torch.where(scaled, t, torch.ones_like(t))
    t = torch.where(signed & (torch.rand(50, generator=gen) < 0.5), -t, t)
    assert torch.allclose(canon(x, scaled, signed), canon(x * t.unsqueeze(1), scaled, signed),
                          rtol=1e-12, atol=1e-14)
    plain = ~(scaled | signed)
    assert torch.equal(canon(x, scaled, signed)[plain], x[plain])


def test_strict_layer_features_are_equivariant(zoo):
    """Every equivariant channel moves with its own factor, every invariant one stays put."""
    _, _, gs, batch = zoo
    gen = torch.Generator().manual_seed(3)
    elements = [paramgraph.random_element(g, generator=gen, permutations=False, heads=False,
                                          scale_range=(1e-2, 1e2)) for g in gs]
    factor = torch.cat([e.factor for e in elements])
    st = GraphStructure.of(batch)
    edge2, node2 = apply_factors(st, factor, batch.edge_value, batch.node_value)
    torch.manual_seed(0)
    backbone = Backbone("weights", 1, 8, 1, 4, ("sum", "mean", "max"), 64, True).double()
    scale = st.value_scale()

    def run(edge, node):
        reader, _, x, e, i, j = backbone.encode(st, edge, node, batch.node_mask, scale)
        return backbone.layers[0](st, reader, x, e, i, j)

    (x, e, i, j, m), (x2, e2, i2, j2, m2) = run(batch.edge_value, batch.node_value), \
        run(edge2, node2)
    a = torch.where(st.plain, factor, torch.ones_like(factor))
    t = torch.where(st.weight, a[st.dst] / factor[st.src], torch.ones_like(a[st.dst]))
    for got, want in ((x2, x * factor.unsqueeze(1)), (e2, e * t.unsqueeze(1)),
                      (m2, m * a.unsqueeze(1)), (i2, i), (j2, j)):
        err = (got - want).norm(dim=1)
        assert (err <= 1e-9 * want.norm(dim=1) + 1e-300).all()


# -- attention: the head section (issue 15) --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Net:
    """A transformer of the test catalogue: ``build()`` a float64 module, ``inputs(seed)``."""

    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int], torch.Tensor]


def _attention_nets() -> list[Net]:
    """Every transformer/attention network of the test catalogue: its attention-tagged entries
    and the look-alikes of the transformers people use (ViTs, GPT, LLaMA with rotary embeddings,
    grouped-query and multi-query attention, with and without RoPE)."""
    from catalogue import TRANSFORMER_LOOKALIKES, catalogue

    nets = [Net(e.name, lambda e=e: e.build().double(),
                lambda seed, e=e: random_inputs(e, 8, seed=seed))
            for e in catalogue() if {"attention", "transformer"} & set(e.tags)]
    nets += [Net(name, lambda f=f: f().double(), inputs)
             for name, (f, inputs) in TRANSFORMER_LOOKALIKES.items()]
    return nets


def _attention_graphs(dtype=torch.float64):
    """:func:`_attention_nets` and their graphs in ``dtype``."""
    nets = _attention_nets()
    gs = []
    for net in nets:
        x = net.inputs(0)
        g = paramgraph.from_module(net.build(), x.double() if x.is_floating_point() else x)
        gs.append(g.with_values(g.edge_value.to(dtype), g.node_value.to(dtype)))
    return nets, gs


@pytest.fixture(scope="module")
def attention():
    return _attention_graphs()


def _random_net(mode, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    net = models.MetaNet(mode=mode, hidden=16, layers=2, **kw).to(dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from initialisation: every part of the network matters
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)
    return net.eval()


def _largest_change(net, gs, draws=2, **kw):
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        y = net(Batch.from_data_list(gs))
        worst = torch.zeros(len(gs), dtype=torch.float64)
        for _ in range(draws):
            moved = [paramgraph.random_symmetry(g, generator=gen, scale_range=(1e-2, 1e2), **kw)
                     for g in gs]
            worst = torch.maximum(worst, (y - net(Batch.from_data_list(moved))).abs().amax(1)
                                  .double())
    return worst


def test_quasi_is_invariant_on_transformers_including_head_maps(attention):
    """The issue's 'done when': every transformer of the catalogue, the full group (head maps,
    permutations, scales in [1e-2, 1e2], signs), float64: quasi moves by <= 1e-6, perm by > 1e-3."""
    entries, gs = attention
    assert len(gs) >= 8 and all(g.num_params > 0 for g in gs)
    quasi = _largest_change(_random_net("quasi"), gs)
    assert quasi.max() <= 1e-6, dict(zip([e.name for e in entries], quasi.tolist()))
    perm = _largest_change(_random_net("perm"), gs)
    assert perm.min() > 1e-3, dict(zip([e.name for e in entries], perm.tolist()))


def test_without_the_head_section_quasi_is_not_invariant_control(attention):
    """Control: the same gauge with the head section switched off (the structure's ``heads``
    removed) is invariant to scales and signs but moves under the head maps."""
    _, gs = attention
    net = _random_net("quasi")
    batch = Batch.from_data_list(gs)
    st = dataclasses.replace(GraphStructure.of(batch), heads=None)
    gen = torch.Generator().manual_seed(3)
    moved = Batch.from_data_list([paramgraph.random_symmetry(g, generator=gen, scales=False,
                                                             signs=False, permutations=False)
                                  for g in gs])
    with torch.no_grad():
        assert (net(batch, st) - net(moved, st)).abs().max() > 1e-3


def test_head_section_values_are_exactly_invariant_and_functionally_identical(attention):
    entries, gs = attention
    st = GraphStructure.of(Batch.from_data_list(gs))
    q_heads = [torch.stack([g.perm_group, g.node_head], 1)[g.node_type == 6] for g in gs]
    assert st.heads is not None
    assert st.heads.num_heads == sum(int(torch.unique(h, dim=0).shape[0]) for h in q_heads)
    bare = models.GaugeMap(learned=False).double()
    batch = Batch.from_data_list(gs)
    edge, node, _ = bare(st, batch.edge_value, batch.node_value, batch.node_mask)
    gen = torch.Generator().manual_seed(4)
    moved = Batch.from_data_list([paramgraph.random_symmetry(g, generator=gen, permutations=False,
                                                             scale_range=(1e-2, 1e2))
                                  for g in gs])
    edge2, node2, _ = bare(st, moved.edge_value, moved.node_value, moved.node_mask)
    assert (edge - edge2).abs().max() <= 1e-10 * edge.abs().max()
    assert (node - node2).abs().max() <= 1e-10 * node.abs().max()
    # the canonical pair: q rows orthogonal with squared norms = the singular values = k's
    from paramgraph.canonical_heads import head_sections

    kinds = set()
    for grp, sec in zip(st.heads.groups, head_sections(st.heads, edge, node)):
        d, r = grp.k.shape[1], grp.q.shape[1] // grp.k.shape[1]
        kinds.add(("rotary" if grp.pairs.numel() else "full", r > 1))
        q = sec.q.view(sec.q.shape[0], r, d, -1).transpose(1, 2).flatten(2)  # r heads side by side
        if grp.pairs.numel() == 0:
            gram_q = q @ q.mT
            assert torch.allclose(gram_q, torch.diag_embed(sec.s_qk), atol=1e-10)
            assert torch.allclose(sec.k @ sec.k.mT, gram_q, atol=1e-10)
            assert (sec.s_qk[:, :-1] >= sec.s_qk[:, 1:]).all()
            continue
        # a rotary pair: query and key norms equal, the key's largest entry real and positive
        i, j = grp.pairs[:, 0], grp.pairs[:, 1]
        norm_q = q[:, i].square().sum(-1) + q[:, j].square().sum(-1)
        norm_k = sec.k[:, i].square().sum(-1) + sec.k[:, j].square().sum(-1)
        assert torch.allclose(norm_q, norm_k, rtol=1e-10) and (norm_k > 0).all()
        big = (sec.k[:, i].square() + sec.k[:, j].square()).argmax(-1, keepdim=True)
        assert (sec.k[:, i].gather(-1, big) > 0).all()
        assert sec.k[:, j].gather(-1, big).abs().max() <= 1e-12
    assert kinds == {("full", False), ("rotary", False), ("rotary", True), ("full", True)}
    for net, o in zip(entries, batch.with_values(edge, node).to_data_list()):
        module = net.build()
        x = net.inputs(1)
        clone = paramgraph.load_into(copy.deepcopy(module), o)
        with torch.no_grad():
            assert torch.allclose(clone(x), module(x), rtol=1e-9, atol=1e-11), net.name


def test_head_section_float32_invariance(attention):
    """float32 graphs (the training dtype): the section runs in float64, the change stays at the
    input's rounding."""
    entries, _ = attention
    _, gs = _attention_graphs(torch.float32)
    quasi = _largest_change(_random_net("quasi", torch.float32), gs, draws=1)
    assert quasi.max() <= 2e-5, dict(zip([e.name for e in entries], quasi.tolist()))


def test_a_nearly_dead_neuron_batched_with_a_transformer_stays_finite(attention):
    """A zoo MLP with a hidden neuron whose outgoing weights are subnormal and incoming ones tiny (as in
    a hetero zoo checkpoint) batched with a transformer: balancing drives that neuron's factor to
    ~1e-22, so its edges' multipliers leave float32's range. kappa's features once went through
    float32 there (0 * inf = NaN): every such batch predicted NaN, a whole validation split read
    NaN, and training kept the first epoch."""
    _, heads = _attention_graphs(torch.float32)
    module, x = build("mlp_relu")
    with torch.no_grad():
        module[0].weight[2] *= 1e-6
        module[2].weight[:, 2] = 1e-39  # subnormal in float32, as a decayed weight becomes
    g = paramgraph.from_module(module, x)
    dead = g.with_values(g.edge_value.float(), g.node_value.float())
    batch = Batch.from_data_list([dead, heads[0]])
    st = GraphStructure.of(batch)
    assert st.heads is not None  # the transformer puts the whole batch on the head path
    net = _random_net("quasi", torch.float32)
    balance = net.gauge._head_section(st, batch.edge_value.double(), batch.node_value.double())[1]
    assert balance.min() ** -2 > torch.finfo(torch.float32).max  # control: the hazard is there
    with torch.no_grad():
        y = net(batch)
        gauged = net.gauge.gauge(st, batch.edge_value, batch.node_value, batch.node_mask)
    assert torch.isfinite(y).all(), y
    assert torch.isfinite(gauged.edge_value).all() and torch.isfinite(gauged.alpha).all()



def test_degenerate_heads_keep_the_function():
    """A dead head (zero query weights: rank 0) and a head whose bilinear form has a repeated
    singular value: the gauge stays finite and keeps the function; the dead head is still
    exactly invariant (its canonical rows are zero whatever the SVD's basis)."""
    from catalogue import get

    e = get("mha")
    module = e.build().double()
    d = module.attn.head_dim
    with torch.no_grad():
        w = module.attn.in_proj_weight
        w[:d].zero_()  # head 0: dead queries
        module.attn.in_proj_bias[:d].zero_()
        # head 1: W_q = W_k = an orthonormal frame (A = I on it: every singular value is 1)
        frame, _ = torch.linalg.qr(torch.randn(w.shape[1], d, dtype=torch.float64))
        embed = w.shape[1]
        w[d:2 * d] = frame.T
        w[embed + d:embed + 2 * d] = frame.T
        module.attn.in_proj_bias[d:2 * d].zero_()
        module.attn.in_proj_bias[embed + d:embed + 2 * d].zero_()
    g = paramgraph.from_module(module, e.example_input(dtype=torch.float64))
    st = GraphStructure.of(g)
    gauge = models.GaugeMap().double()
    edge, node, alpha = gauge(st, g.edge_value, g.node_value, g.node_mask)
    assert torch.isfinite(edge).all() and torch.isfinite(node).all()
    x = random_inputs(e, 8)
    clone = paramgraph.load_into(copy.deepcopy(module), g.with_values(edge, node))
    with torch.no_grad():
        assert torch.allclose(clone(x), module(x), rtol=1e-9, atol=1e-11)
    moved = paramgraph.random_symmetry(g, generator=torch.Generator().manual_seed(6),
                                       permutations=False)
    edge2, _, _ = gauge(st, moved.edge_value, moved.node_value, moved.node_mask)
    q0 = st.heads.groups[0].q_vals[0]  # head 0's query rows: zero in both
    assert edge[q0].abs().max() == 0 and edge2[q0].abs().max() <= 1e-12


def test_head_gauge_gets_gradients(attention):
    """kappa acts on the heads' singular directions (query/value rows of the canonical heads
    change when only its parameters do), and the section is differentiable in the values."""
    _, gs = attention
    batch = Batch.from_data_list(gs)
    st = GraphStructure.of(batch)
    gauge = models.GaugeMap().double()
    values = batch.edge_value.clone().requires_grad_()
    edge, node, _ = gauge(st, values, batch.node_value, batch.node_mask)
    (edge.square().sum() + node.square().sum()).backward()
    assert torch.isfinite(values.grad).all() and values.grad.abs().max() > 0
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in gauge.parameters())
    q_vals = torch.cat([grp.q_vals.reshape(-1) for grp in st.heads.groups])
    with torch.no_grad():
        gauge.out[-1].bias.add_(0.5)
        edge2, _, _ = gauge(st, batch.edge_value, batch.node_value, batch.node_mask)
    assert (edge2[q_vals] - edge[q_vals]).abs().max() > 1e-3


def test_rotary_heads_need_their_restricted_section_control(attention):
    """Rotary embeddings admit only a scaled rotation per pair of dimensions. Control: the full
    GL(d) section applied to LLaMA's rotary heads (their pairs forgotten) is exactly invariant
    too, but it is no group element there: the network's function changes."""
    from paramgraph.canonical_heads import HeadStructure, head_sections, write_heads

    nets, gs = attention
    k = [n.name for n in nets].index("llama_block")
    module, g = nets[k].build(), gs[k]
    hs = GraphStructure.of(g).heads
    assert all(grp.pairs.numel() for grp in hs.groups)
    x = nets[k].inputs(1)

    def change(heads: HeadStructure) -> float:
        ev, nv = write_heads(heads, head_sections(heads, g.edge_value, g.node_value),
                             g.edge_value, g.node_value)
        clone = paramgraph.load_into(copy.deepcopy(module), g.with_values(ev, nv))
        with torch.no_grad():
            return float((clone(x) - module(x)).abs().max() / module(x).abs().max())

    assert change(hs) < 1e-12
    forgotten = dataclasses.replace(hs, groups=[
        dataclasses.replace(grp, pairs=grp.pairs[:0], free=torch.arange(grp.k.shape[1]))
        for grp in hs.groups])
    assert change(forgotten) > 1e-3


@pytest.mark.parametrize("frame", ["gauged", "input"])
def test_weight_head_frames_on_transformers(attention, frame):
    """A random weight head on every transformer of the catalogue (rotary and grouped-query
    heads included): in the gauged frame g*theta gives the very values theta gives; in the input
    frame the values of g*theta's output are g applied to theta's output."""
    _, gs = attention
    torch.manual_seed(0)
    net = models.MetaNet(mode="quasi", task="weights", frame=frame, hidden=16,
                         layers=2).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    # the gauged frame is canonical for the head maps, which include permutations inside a
    # head: there only the other group elements are drawn
    elements = [paramgraph.random_element(g, generator=gen, scale_range=(1e-2, 1e2),
                                          permutations=frame == "input") for g in gs]
    batch = Batch.from_data_list(gs)
    moved = Batch.from_data_list([paramgraph.apply_element(g, e) for g, e in zip(gs, elements)])
    with torch.no_grad():
        out, out_moved = net(batch), net(moved)
    want = out if frame == "gauged" else Batch.from_data_list(
        [paramgraph.apply_element(o, e) for o, e in zip(out.to_data_list(), elements)])
    for a, b in ((out_moved.edge_value, want.edge_value), (out_moved.node_value, want.node_value)):
        scale = b.abs().clamp_min(1e-3 * b.abs().max())
        assert ((a - b).abs() / scale).max() < 1e-8
    assert not torch.allclose(out.edge_value, batch.edge_value, rtol=1e-3)  # it edits


def test_a_dead_rotary_pair_stays_finite_exact_and_differentiable(attention):
    """A rotary pair whose query rows are zero adds nothing to the scores: its canonical rows are
    zero on both sides whatever the key's, so it stays exactly invariant, the function is kept,
    and the gradients stay finite (the section's square roots and divisions are guarded)."""
    nets, _ = attention
    net = nets[[n.name for n in nets].index("llama_block")]
    module = net.build()
    with torch.no_grad():
        module.layers[0].q_proj.weight[[0, 2]] = 0.0  # head 0's rotary pair (0, 2): dead queries
    g = paramgraph.from_module(module, net.inputs(0))
    st = GraphStructure.of(g)
    gauge = models.GaugeMap().double()
    values = g.edge_value.clone().requires_grad_()
    edge, node, _ = gauge(st, values, g.node_value, g.node_mask)
    edge.square().sum().backward()
    assert torch.isfinite(edge).all() and torch.isfinite(values.grad).all()
    clone = paramgraph.load_into(copy.deepcopy(module), g.with_values(edge.detach(), node))
    x = net.inputs(1)
    with torch.no_grad():
        assert torch.allclose(clone(x), module(x), rtol=1e-9, atol=1e-11)
    moved = paramgraph.random_symmetry(g, generator=torch.Generator().manual_seed(7),
                                       permutations=False)
    with torch.no_grad():
        edge2, _, _ = gauge(st, moved.edge_value, moved.node_value, moved.node_mask)
    grp = st.heads.groups[0]
    dead = torch.cat([grp.q_vals[0][[0, 2]].reshape(-1), grp.k_vals[0][[0, 2]].reshape(-1)])
    assert edge[dead].abs().max() == 0 and edge2[dead].abs().max() == 0
    assert (edge.detach() - edge2).abs().max() <= 1e-10 * edge.abs().max()


def _composed_canon(x, scaled, signed):
    """``readers.canon`` as the plain composition of float64 operations it was before it became
    one autograd node (issue 18): the reference for its values and gradients."""
    dtype = x.dtype
    x = x.double()
    n2 = x.square().sum(1, keepdim=True)
    safe = torch.where(n2 > torch.finfo(n2.dtype).tiny ** 0.5, n2, torch.ones_like(n2)).sqrt()
    pivot = x.gather(1, x.abs().argmax(1, keepdim=True))
    flip = signed.unsqueeze(1) & (pivot < 0)
    divisor = torch.where(scaled.unsqueeze(1), safe, torch.ones_like(safe))
    return (x / torch.where(flip, -divisor, divisor)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_canon_has_the_values_and_gradients_of_its_composition(dtype):
    from paramgraph.models.readers import canon

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=gen, dtype=dtype)
    x[:4] *= 1e-30  # collapsed channels, still normalised in float64
    x[4:8] = 0.0  # dead ones: left as they are
    x[8:12] *= 1e-160 if dtype == torch.float64 else 0.0
    x[12, :3] = torch.tensor([2.0, -2.0, 1.0], dtype=dtype)  # a tie for the pivot
    scaled = torch.rand(400, generator=gen) < 0.7
    signed = torch.rand(400, generator=gen) < 0.5
    w = torch.randn(400, 12, generator=gen, dtype=dtype)
    out = {}
    for name, fn in (("node", canon), ("composed", _composed_canon)):
        leaf = x.clone().requires_grad_()
        y = fn(leaf, scaled, signed)
        (y * w).sum().backward()
        out[name] = (y.detach(), leaf.grad)
    if dtype == torch.float32:  # rounded to float32 from float64: identical
        assert torch.equal(out["node"][0], out["composed"][0])
    else:  # the norm summed in another order
        assert torch.allclose(out["node"][0], out["composed"][0], rtol=4e-16, atol=0.0)
    g, ref = out["node"][1], out["composed"][1]
    assert torch.isfinite(g).all()
    assert torch.allclose(g, ref, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0.0)
    # control: the gradient of a plain division (no projection) is not that of canon
    leaf = x.clone().requires_grad_()
    (leaf / leaf.detach().norm(dim=1, keepdim=True).clamp_min(1e-300) * w).sum().backward()
    assert not torch.allclose(leaf.grad[scaled], ref[scaled], rtol=1e-3)


def test_canon_pivot_from_max_and_min_matches_the_first_largest_entry():
    """The CPU pivot (whether a row's first largest-magnitude entry is negative, from its max and
    min) equals argmax's on rows with exact ties of +a and -a in either order, zeros and
    integers; those tie rows stay one canonical row under a sign flip. Control: max + min < 0
    alone gets the ties whose first extreme is negative wrong."""
    from paramgraph.models.readers import _pivot_negative, canon

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (2000, 5), generator=gen).float()  # many exact ties
    x[:50] = 0.0
    x[50:60, :2] = torch.tensor([-2.0, 2.0])
    x[50:60, 2:] = 1.0
    ref = x.gather(1, x.abs().argmax(1, keepdim=True)) < 0
    assert torch.equal(_pivot_negative(x), ref)
    assert not _pivot_negative(torch.zeros(3, 1)).any()
    top, low = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    assert not torch.equal((top + low) < 0, ref)  # control
    signed, scaled = torch.ones(2000, dtype=torch.bool), torch.rand(2000, generator=gen) < 0.5
    assert torch.equal(canon(x, scaled, signed), canon(-x, scaled, signed))
