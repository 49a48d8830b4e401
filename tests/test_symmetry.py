"""The symmetry group recorded per graph: the test oracle of the whole project.

A random group element, applied to the graph and loaded back into the network, must leave the
function unchanged (float64, relative error < 1e-6 on random inputs) and must change the weights
wherever the group is non-trivial. The metadata itself is checked against the function: a
per-neuron oracle applies a lone scaling or sign flip to one neuron and asks the network whether it
still computes the same thing, which must agree with ``node_scale``/``node_sign``. And the oracle
is shown to fail on hand-made wrong claims.
"""

from __future__ import annotations

import copy

import pytest
import torch

import paramgraph as pg
from catalogue import (
    NAMES,
    get,
    output,
    random_inputs,
    reference_state,
    relative_error,
    states_differ,
)
from paramgraph import Activation, GroupElement, HeadRole, NodeType, NormKind

TOL = 1e-6
# Activations that are linear between kinks or clips: a neuron whose pre-activations stay inside
# one linear piece on the test inputs (dead, or below ReLU6's clip) looks scale-symmetric there.
# For these, the per-neuron oracle checks that no wrong symmetry is claimed, not that none is missed.
CLIPPING = {int(a) for a in (Activation.RELU6, Activation.HARDTANH, Activation.CLIP,
                             Activation.HARDSIGMOID, Activation.HARDSWISH)}


def convert64(name):
    entry = get(name)
    module = entry.build().double()
    graph = pg.from_module(module, entry.example_input(dtype=torch.float64))
    return entry, module, graph


def transformed(module, graph):
    """The module with the graph's values loaded (the module itself is not changed)."""
    return pg.load_into(copy.deepcopy(module), graph)


def function_error(entry, module, graph) -> float:
    x = random_inputs(entry)
    return relative_error(output(transformed(module, graph), x), output(module, x))


def only(graph, node, factor):
    """The group element that multiplies one node by ``factor`` and does nothing else."""
    f = torch.ones(graph.num_nodes, dtype=torch.float64)
    f[node] = factor
    return GroupElement(torch.arange(graph.num_nodes), f, {}, {})


def nodes_of(graph, mask):
    return mask.nonzero().squeeze(1).tolist()


# -- the group action keeps the function and moves the weights ----------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_random_symmetry_keeps_function_and_changes_weights(name):
    entry, module, graph = convert64(name)
    graph.validate()
    before = (graph.edge_value.clone(), graph.node_value.clone())
    for seed in range(3):
        moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(seed))
        moved.validate()
        assert function_error(entry, module, moved) < TOL, seed
        assert states_differ(pg.to_state_dict(moved), reference_state(module)) == entry.nontrivial
        # structure is untouched, only values move
        for key in ("edge_index", "edge_type", "edge_size", "node_type", "perm_group"):
            assert torch.equal(getattr(moved, key), getattr(graph, key))
    # the input graph is not modified
    assert torch.equal(graph.edge_value, before[0]) and torch.equal(graph.node_value, before[1])


@pytest.mark.parametrize("name", ["mlp_relu", "mlp_tanh", "mlp_identity", "resnet_tiny", "mha",
                                  "transformer_pre_relu_2layers", "cnn1d_bn_avgpool",
                                  "cat_features", "functional"])
@pytest.mark.parametrize("kind", ["permutations", "scales", "signs", "heads"])
def test_each_generator_alone_keeps_function(name, kind):
    entry, module, graph = convert64(name)
    flags = {k: k == kind for k in ("permutations", "scales", "signs", "heads")}
    moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(5), **flags)
    assert function_error(entry, module, moved) < TOL
    # it changes the weights exactly when the graph has generators of that kind
    has = {
        "permutations": bool((graph.perm_group >= 0).any()),
        "scales": bool(graph.node_scale.any()),
        "signs": bool(graph.node_sign.any()),
        "heads": bool((graph.node_head >= 0).any()),
    }[kind]
    if kind == "signs" and has:  # a fair coin per neuron: make sure some sign did flip
        element = pg.random_element(graph, generator=torch.Generator().manual_seed(5),
                                    permutations=False, scales=False, heads=False)
        has = bool((element.factor < 0).any())
    assert states_differ(pg.to_state_dict(moved), reference_state(module)) == has


def test_random_symmetry_is_reproducible_from_its_generator():
    _, _, graph = convert64("transformer_pre_gelu")
    a = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(11))
    b = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(11))
    c = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a.edge_value, b.edge_value) and torch.equal(a.node_value, b.node_value)
    assert not torch.equal(a.edge_value, c.edge_value)


def test_identity_element_changes_nothing():
    _, _, graph = convert64("resnet_tiny")
    n = graph.num_nodes
    same = pg.apply_element(graph, GroupElement(torch.arange(n), torch.ones(n, dtype=torch.float64),
                                                {}, {}))
    assert torch.equal(same.edge_value, graph.edge_value)
    assert torch.equal(same.node_value, graph.node_value)


def test_symmetry_in_float32_graphs():
    entry = get("resnet_tiny")
    module = entry.build()
    graph = pg.from_module(module, entry.example_input())
    moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(2),
                               scale_range=(0.5, 2.0))
    assert moved.edge_value.dtype == torch.float32
    x = entry.example_input(seed=4)
    assert relative_error(output(transformed(module, moved), x), output(module, x)) < 1e-4


# -- the metadata is right, not just consistent ----------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_per_neuron_claims_match_the_function(name):
    """For every neuron, a lone scaling by 3 (a lone sign flip) keeps the function exactly when
    node_scale (node_sign) says so: no claim is wrong and no single-neuron symmetry is missed.
    Neurons where the element does not change any weight are vacuous and skipped; value neurons
    of attention are excluded from the comparison (their scales are part of the per-head maps)
    and must not claim anything themselves."""
    entry, module, graph = convert64(name)
    x = random_inputs(entry)
    y = output(module, x)
    reference = reference_state(module)
    probe = copy.deepcopy(module)
    value_nodes = graph.node_type == int(NodeType.ATTN_V)
    assert not bool((graph.node_scale | graph.node_sign)[value_nodes].any())
    checked = 0
    for claim, factor in ((graph.node_scale, 3.0), (graph.node_sign, -1.0)):
        for node in range(graph.num_nodes):
            if value_nodes[node]:
                continue
            moved = pg.apply_element(graph, only(graph, node, factor))
            state = pg.to_state_dict(moved)
            if not states_differ(state, reference):
                continue
            probe.load_state_dict(state, strict=False)
            err = relative_error(output(probe, x), y)
            assert err < 1e-9 or err > 1e-6, (node, err)  # decisive either way
            if err < 1e-9 and not claim[node] and int(graph.node_act[node]) in CLIPPING:
                continue  # the inputs never reach the clip: locally symmetric, not really
            assert (err < 1e-9) == bool(claim[node]), (
                f"node {node} ({NodeType(int(graph.node_type[node])).name}, layer "
                f"{int(graph.node_layer[node])}): claimed {bool(claim[node])}, error {err:.2e}")
            checked += 1
    assert checked >= 2


def _hidden_layers(graph):
    """Node ids of each HIDDEN layer, by depth."""
    hidden = graph.node_type == int(NodeType.HIDDEN)
    return [nodes_of(graph, hidden & (graph.node_layer == d))
            for d in sorted(set(graph.node_layer[hidden].tolist()))]


@pytest.mark.parametrize("act,scale,sign", [
    ("relu", True, False), ("leaky_relu", True, False), ("identity", True, True),
    ("tanh", False, True), ("sine", False, True), ("gelu", False, False), ("silu", False, False),
    ("sigmoid", False, False),
])
def test_hidden_neuron_claims_by_activation(act, scale, sign):
    _, _, graph = convert64(f"mlp_{act}")
    hidden = graph.node_type == int(NodeType.HIDDEN)
    assert int(hidden.sum()) == 7 + 6
    assert bool((graph.node_scale[hidden] == scale).all())
    assert bool((graph.node_sign[hidden] == sign).all())
    # input and output neurons never claim anything, and are never permuted
    ends = ~hidden
    assert not bool(graph.node_scale[ends].any() or graph.node_sign[ends].any())
    assert bool((graph.perm_group[ends] == -1).all())
    # each hidden layer is its own permutable set, positions 0..width-1
    layers = _hidden_layers(graph)
    groups = [set(graph.perm_group[ids].tolist()) for ids in layers]
    assert all(len(g) == 1 and min(g) >= 0 for g in groups)
    assert groups[0] != groups[1]
    for ids in layers:
        assert graph.perm_pos[ids].tolist() == list(range(len(ids)))


def test_neurons_feeding_a_residual_claim_nothing():
    _, _, graph = convert64("resnet1d_nobn")  # conv-relu, then 2x (x + c2(relu(c1(x))))
    convs = _hidden_layers(graph)
    stem, c1, c2 = convs[0], convs[1], convs[2]
    assert all(graph.node_scale[c1])  # relu, feeds only a conv
    for ids in (stem, c2):  # feed a residual addition
        assert not bool(graph.node_scale[ids].any() or graph.node_sign[ids].any())
    residual = graph.node_type == int(NodeType.RESIDUAL)
    assert not bool(graph.node_scale[residual].any() or graph.node_sign[residual].any())


def test_neurons_feeding_a_max_pool_keep_scale_but_lose_sign():
    _, _, graph = convert64("cnn2d_tanh_maxpool")  # conv-tanh-maxpool, conv-sigmoid-maxpool
    first = _hidden_layers(graph)[0]
    assert bool((graph.node_act[first] == int(pg.Activation.TANH)).all())
    assert not bool(graph.node_sign[first].any())
    _, _, graph = convert64("cnn1d_bn_avgpool")  # conv-BN-tanh feeding an average pool
    second = _hidden_layers(graph)[1]
    assert bool(graph.node_sign[second].all())
    _, _, graph = convert64("cnn2d_bn_maxpool")  # conv-BN-relu feeding a max pool: scale stays
    first = _hidden_layers(graph)[0]
    assert bool(graph.node_scale[first].all())


def test_output_neurons_claim_nothing():
    for name in NAMES:
        _, _, graph = convert64(name)
        out = graph.node_type == int(NodeType.OUTPUT)
        assert int(out.sum()) > 0
        assert not bool(graph.node_scale[out].any() or graph.node_sign[out].any()), name
        assert bool((graph.perm_group[out] == -1).all()), name
        inputs = graph.node_type == int(NodeType.INPUT)
        assert bool((graph.perm_group[inputs] == -1).all()), name


def test_batch_norm_neurons_scale_through_the_norm():
    entry, module, graph = convert64("mlp_bn_relu")  # Linear-BN-ReLU-Linear-BN-Tanh-Linear
    first = _hidden_layers(graph)[0]
    assert bool((graph.node_norm[first] == int(NormKind.BATCH)).all())
    assert bool(graph.node_scale[first].all()) and not bool(graph.node_sign[first].any())
    n = graph.num_nodes
    factor = torch.ones(n, dtype=torch.float64)
    factor[first] = torch.linspace(0.5, 4.0, len(first), dtype=torch.float64)
    moved = pg.apply_element(graph, GroupElement(torch.arange(n), factor, {}, {}))
    old, new = reference_state(module), pg.to_state_dict(moved)
    q = factor[first]
    assert torch.equal(new["0.weight"], old["0.weight"])  # incoming weights untouched
    assert torch.equal(new["0.bias"], old["0.bias"])
    assert torch.equal(new["1.running_mean"], old["1.running_mean"])
    assert torch.equal(new["1.running_var"], old["1.running_var"])
    torch.testing.assert_close(new["1.weight"], old["1.weight"] * q, rtol=1e-15, atol=0)
    torch.testing.assert_close(new["1.bias"], old["1.bias"] * q, rtol=1e-15, atol=0)
    torch.testing.assert_close(new["3.weight"], old["3.weight"] / q, rtol=1e-15, atol=0)
    assert function_error(entry, module, moved) < TOL


def test_plain_neurons_scale_incoming_weights_and_bias():
    entry, module, graph = convert64("mlp_relu")
    first = _hidden_layers(graph)[0]
    n = graph.num_nodes
    factor = torch.ones(n, dtype=torch.float64)
    factor[first] = torch.arange(2, 2 + len(first), dtype=torch.float64)
    moved = pg.apply_element(graph, GroupElement(torch.arange(n), factor, {}, {}))
    old, new = reference_state(module), pg.to_state_dict(moved)
    q = factor[first]
    torch.testing.assert_close(new["0.weight"], old["0.weight"] * q[:, None], rtol=1e-15, atol=0)
    torch.testing.assert_close(new["0.bias"], old["0.bias"] * q, rtol=1e-15, atol=0)
    torch.testing.assert_close(new["2.weight"], old["2.weight"] / q, rtol=1e-15, atol=0)


def test_permutation_moves_rows_and_columns_together():
    entry, module, graph = convert64("mlp_relu")
    first = _hidden_layers(graph)[0]
    n = graph.num_nodes
    perm = torch.arange(n)
    sigma = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    perm[first] = torch.tensor(first)[sigma]  # hidden neuron i moves to position sigma[i]
    moved = pg.apply_element(graph, GroupElement(perm, torch.ones(n, dtype=torch.float64), {}, {}))
    old, new = reference_state(module), pg.to_state_dict(moved)
    assert torch.equal(new["0.weight"][sigma], old["0.weight"])
    assert torch.equal(new["0.bias"][sigma], old["0.bias"])
    assert torch.equal(new["2.weight"][:, sigma], old["2.weight"])
    assert function_error(entry, module, moved) < TOL


def test_residual_stream_sets_share_one_permutation():
    _, _, graph = convert64("resnet_tiny")
    residual = graph.node_type == int(NodeType.RESIDUAL)
    groups = set(graph.perm_group[residual].tolist())
    assert len(groups) == 2 and -1 not in groups  # one stream per width (4 and 8 channels)
    narrow = [g for g in groups if int((graph.perm_group == g).sum()) > 0
              and int((graph.perm_group[residual] == g).sum()) == 4][0]
    tied = nodes_of(graph, graph.perm_group == narrow)
    # stem conv (4) + block-1 conv2 (4) + block-1 sum (4) + block-2's shortcut input... all width 4
    assert len(tied) >= 3 * 4 and len(tied) % 4 == 0
    for p in range(4):
        assert int((graph.perm_pos[tied] == p).sum()) == len(tied) // 4
    # the transformer's residual stream: input projection, attention output, both residual sums,
    # the feed-forward output and the folded norms, all one permutation
    _, _, graph = convert64("transformer_post_relu")
    stream = graph.perm_group[graph.node_type == int(NodeType.RESIDUAL)]
    assert len(set(stream.tolist())) == 1
    g = int(stream[0])
    assert int((graph.perm_group == g).sum()) == 8 * 5  # inp, out_proj, sum1, linear2, sum2
    ff = _hidden_layers(graph)
    widths = sorted(len(ids) for ids in ff)
    assert 12 in widths  # linear1 is its own set
    linear1 = [ids for ids in ff if len(ids) == 12][0]
    assert int(graph.perm_group[linear1[0]]) not in (g, -1)


def test_attention_nodes_carry_heads_and_roles():
    _, _, graph = convert64("mha")  # embed 8, 2 heads of 4
    ntype = graph.node_type
    for t, role in ((NodeType.ATTN_Q, HeadRole.QK), (NodeType.ATTN_K, HeadRole.QK),
                    (NodeType.ATTN_V, HeadRole.VO)):
        ids = nodes_of(graph, ntype == int(t))
        assert graph.node_head[ids].tolist() == [0] * 4 + [1] * 4
        assert bool((graph.head_role[ids] == int(role)).all())
        assert not bool(graph.node_scale[ids].any() or graph.node_sign[ids].any())
    qkv = (ntype == int(NodeType.ATTN_Q)) | (ntype == int(NodeType.ATTN_K)) | \
        (ntype == int(NodeType.ATTN_V))
    assert len(set(graph.perm_group[qkv].tolist())) == 1 and int(graph.perm_group[qkv][0]) >= 0
    others = ~qkv
    assert bool((graph.node_head[others] == -1).all())
    assert bool((graph.head_role[others] == int(HeadRole.NONE)).all())


def test_head_maps_are_general_invertible_maps():
    entry, module, graph = convert64("mha")
    element = pg.random_element(graph, generator=torch.Generator().manual_seed(1),
                                permutations=False, scales=False, signs=False)
    (m,) = element.qk.values()
    assert m.shape == (2, 4, 4)
    eye = torch.eye(4, dtype=torch.float64)
    assert not torch.allclose(m @ m.transpose(1, 2), eye.expand(2, 4, 4))  # not orthogonal
    moved = pg.apply_element(graph, element)
    old, new = reference_state(module), pg.to_state_dict(moved)
    assert not torch.equal(new["attn.in_proj_weight"], old["attn.in_proj_weight"])
    assert not torch.equal(new["attn.out_proj.weight"], old["attn.out_proj.weight"])
    assert torch.equal(new["attn.out_proj.bias"], old["attn.out_proj.bias"])
    assert function_error(entry, module, moved) < TOL


# -- the oracle can fail ---------------------------------------------------------------------------------

def _with(graph, **fields):
    wrong = copy.copy(graph)
    for key, value in fields.items():
        setattr(wrong, key, value)
    return wrong


def test_oracle_catches_a_scale_claimed_on_a_neuron_feeding_a_residual():
    entry, module, graph = convert64("resnet1d_nobn")
    c2 = _hidden_layers(graph)[2]  # feeds x + c2(...)
    scale = graph.node_scale.clone()
    scale[c2] = True
    wrong = _with(graph, node_scale=scale)
    moved = pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(0),
                               permutations=False, signs=False, heads=False)
    assert function_error(entry, module, moved) > 1e-3
    # the same draw without the wrong claim is fine
    moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(0),
                               permutations=False, signs=False, heads=False)
    assert function_error(entry, module, moved) < TOL


@pytest.mark.parametrize("name,field,layer", [
    ("mlp_relu", "node_sign", 0),  # relu is not odd
    ("mlp_gelu", "node_scale", 0),  # gelu is not homogeneous
    ("mlp_tanh", "node_scale", 1),  # tanh is not homogeneous
    ("cnn2d_tanh_maxpool", "node_sign", 0),  # max(-x) != -max(x)
    ("mlp_sigmoid", "node_sign", 1),
])
def test_oracle_catches_wrong_scale_and_sign_claims(name, field, layer):
    entry, module, graph = convert64(name)
    ids = _hidden_layers(graph)[layer]
    claim = getattr(graph, field).clone()
    assert not bool(claim[ids].any())
    claim[ids] = True
    wrong = _with(graph, **{field: claim})
    moved = pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(1),
                               permutations=False, heads=False)
    assert function_error(entry, module, moved) > 1e-3


def test_oracle_catches_a_permutable_input():
    entry, module, graph = convert64("mlp_relu")
    inputs = graph.node_type == int(NodeType.INPUT)
    group = graph.perm_group.clone()
    group[inputs] = int(group.max()) + 1
    wrong = _with(graph, perm_group=group)
    moved = pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(0),
                               scales=False, signs=False)
    assert function_error(entry, module, moved) > 1e-3


def test_oracle_catches_an_untied_residual_stream():
    _, _, graph = convert64("resnet1d_nobn")
    residual = nodes_of(graph, graph.node_type == int(NodeType.RESIDUAL))
    group = graph.perm_group.clone()
    group[residual[:4]] = int(group.max()) + 1  # the first sum permuted on its own
    wrong = _with(graph, perm_group=group)
    with pytest.raises(ValueError, match="does not map the graph onto itself"):
        pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(0))


def test_oracle_catches_wrong_head_boundaries():
    entry, module, graph = convert64("mha")  # 2 heads of 4 dimensions
    flags = dict(permutations=False, scales=False, signs=False)
    moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(3), **flags)
    assert function_error(entry, module, moved) < TOL
    head = graph.node_head.clone()
    head[head >= 0] = 0  # claim one head of 8 dimensions: the maps mix the two real heads
    wrong = _with(graph, node_head=head)
    moved = pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(3), **flags)
    assert function_error(entry, module, moved) > 1e-3
    # permuting dimensions across the real heads breaks the head's key-value wiring
    with pytest.raises(ValueError, match="does not map the graph onto itself"):
        pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(3), scales=False,
                           signs=False, heads=False)
