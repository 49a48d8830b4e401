"""Conversion of nn.Modules into parameter graphs, and the exact inverse.

Every catalogue network must round-trip bit-exactly, batch with networks of other architectures,
and export to networkx; the graph's structure (node and edge counts, kernel sizes, types, depth)
is checked against what the layers imply; unsupported modules fail with an error that names the
submodule, its type and what is supported.
"""

from __future__ import annotations

import copy
import re
import warnings

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data

import paramgraph as pg
from catalogue import (
    NAMES,
    assert_state_equal,
    catalogue,
    get,
    output,
    randomize,
    reference_state,
    states_differ,
)
from paramgraph import Activation, EdgeType, NodeType, NormKind


def convert(entry, dtype=None):
    module = entry.build()
    if dtype is not None:
        module = module.to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unplaced tensor would warn
        graph = pg.from_module(module, entry.example_input(dtype=dtype))
    return module, graph


# -- round trip ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_bit_exact(name):
    entry = get(name)
    module, graph = convert(entry)
    graph.validate()
    assert graph.segments.unplaced == ()
    want = reference_state(module)
    assert_state_equal(pg.to_state_dict(graph), want)
    # every converted number lives in the graph exactly once
    assert graph.num_params == sum(t.numel() for t in want.values())


@pytest.mark.parametrize("name", NAMES)
def test_load_into_fresh_module_reproduces_the_network(name):
    entry = get(name)
    module, graph = convert(entry)
    fresh = randomize(entry.build(), seed=12345)  # same architecture, other weights
    assert states_differ(reference_state(fresh), reference_state(module))
    pg.load_into(fresh, graph)
    assert_state_equal(reference_state(fresh), reference_state(module))
    x = entry.example_input(seed=3)
    assert torch.equal(output(fresh, x), output(module, x))


def test_round_trip_in_both_float_dtypes():
    for name in ("resnet_tiny", "transformer_pre_gelu", "functional", "nested"):
        for dtype in (torch.float32, torch.float64):
            module, graph = convert(get(name), dtype)
            assert graph.edge_value.dtype == dtype and graph.node_value.dtype == dtype
            assert_state_equal(pg.to_state_dict(graph), reference_state(module))


def test_mixed_dtype_module_widens_the_graph_and_restores_each_dtype():
    module, graph = convert(get("mixed_dtype"))
    assert graph.edge_value.dtype == torch.float64
    state = pg.to_state_dict(graph)
    assert state["fc1.weight"].dtype == torch.float64
    assert state["fc2.weight"].dtype == torch.float32
    assert_state_equal(state, reference_state(module))


def test_half_precision_values_round_trip():
    module = randomize(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), 3)
    module = module.to(torch.bfloat16)
    graph = pg.from_module(module, torch.randn(2, 4, dtype=torch.bfloat16))
    assert graph.edge_value.dtype == torch.bfloat16
    assert_state_equal(pg.to_state_dict(graph), reference_state(module))


def test_to_state_dict_returns_fresh_contiguous_copies():
    module, graph = convert(get("cnn2d_channels_last_flatten"))
    state = pg.to_state_dict(graph)
    before = graph.edge_value.clone()
    for t in state.values():
        assert t.is_contiguous()
        t.add_(1.0)
    assert torch.equal(graph.edge_value, before)


def test_conversion_does_not_change_the_module_or_its_mode():
    entry = get("resnet_tiny")
    module = entry.build().train()
    state = copy.deepcopy(module.state_dict())
    pg.from_module(module, entry.example_input())
    assert module.training and all(m.training for m in module.modules())
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k]), k  # no batch-norm statistics updated


def test_dropout_is_ignored():
    with_dropout = randomize(nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.ReLU(),
                                           nn.Dropout(0.1), nn.Linear(5, 2)), 7)
    without = randomize(nn.Sequential(nn.Linear(4, 5), nn.Identity(), nn.ReLU(), nn.Identity(),
                                      nn.Linear(5, 2)), 7)
    x = torch.randn(3, 4)
    a, b = pg.from_module(with_dropout, x), pg.from_module(without, x)
    for key in ("edge_index", "edge_type", "edge_size", "edge_value", "node_value", "node_type",
                "node_act", "node_scale", "node_sign", "perm_group"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_bare_layers_as_the_root_module():
    layer = randomize(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 5)
    graph = pg.from_module(layer, torch.randn(2, 3, 8))
    assert_state_equal(pg.to_state_dict(graph), reference_state(layer))
    mha = randomize(nn.MultiheadAttention(6, 3, batch_first=True), 6)
    graph = pg.from_module(mha, torch.randn(2, 4, 6))
    assert list(pg.to_state_dict(graph)) == ["in_proj_weight", "in_proj_bias", "out_proj.weight",
                                             "out_proj.bias"]
    assert_state_equal(pg.to_state_dict(graph), reference_state(mha))
    conv = randomize(nn.Conv2d(2, 3, 3), 8)
    assert_state_equal(pg.to_state_dict(pg.from_module(conv, torch.randn(1, 2, 5, 5))),
                       reference_state(conv))


def test_unused_parameters_are_reported_not_silently_dropped():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.spare = nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match="spare.weight"):
        graph = pg.from_module(Unused(), torch.randn(2, 3))
    assert graph.segments.unplaced == ("spare.weight", "spare.bias")
    assert list(pg.to_state_dict(graph)) == ["used.weight", "used.bias"]


# -- structure ------------------------------------------------------------------------------------------

def _edges_of(graph, etype):
    return (graph.edge_type == int(etype)).nonzero().squeeze(1)


def test_mlp_structure():
    module, graph = convert(get("mlp_relu"))  # 5 -> 7 -> 6 -> 3
    assert graph.num_nodes == 5 + 7 + 6 + 3
    assert graph.edge_index.size(1) == 5 * 7 + 7 * 6 + 6 * 3
    assert bool((graph.edge_type == int(EdgeType.LINEAR)).all())
    assert bool((graph.edge_size == 1).all())
    types = graph.node_type.tolist()
    assert types == [NodeType.INPUT] * 5 + [NodeType.HIDDEN] * 13 + [NodeType.OUTPUT] * 3
    assert graph.node_layer.tolist() == [0] * 5 + [1] * 7 + [2] * 6 + [3] * 3
    assert graph.node_act.tolist() == [0] * 5 + [int(Activation.RELU)] * 13 + [0] * 3
    # edge (i -> j) of layer 0 holds W[j, i]
    w = module[0].weight
    src, dst = graph.edge_index
    first = slice(0, 5 * 7)
    assert torch.equal(graph.edge_value[first], w[dst[first] - 5, src[first]])
    # biases are node values, masked present; input nodes have none
    assert torch.equal(graph.node_value[5:12, pg.NODE_SLOTS.index("bias")], module[0].bias)
    assert not bool(graph.node_mask[:5].any())


def test_activations_are_recorded():
    expected = {"relu": Activation.RELU, "leaky_relu": Activation.LEAKY_RELU,
                "gelu": Activation.GELU, "silu": Activation.SILU, "tanh": Activation.TANH,
                "sigmoid": Activation.SIGMOID, "sine": Activation.SIN,
                "identity": Activation.IDENTITY}
    for act, code in expected.items():
        _, graph = convert(get(f"mlp_{act}"))
        hidden = graph.node_type == int(NodeType.HIDDEN)
        assert bool((graph.node_act[hidden] == int(code)).all()), act
    _, graph = convert(get("mlp_torch_sin"))
    hidden = graph.node_type == int(NodeType.HIDDEN)
    assert bool((graph.node_act[hidden] == int(Activation.SIN)).all())


def test_conv_edges_hold_kernels():
    module, graph = convert(get("cnn2d_bn_maxpool"))
    conv = _edges_of(graph, EdgeType.CONV)
    assert conv.numel() == 3 * 4 + 4 * 6
    assert bool((graph.edge_size[conv] == 9).all())
    # the first conv edge holds kernel [0, 0] flattened
    assert torch.equal(graph.edge_value[:9], module[0].weight[0, 0].reshape(-1))
    # batch norm folded onto the conv channels: no NORM nodes, BN parameters on the channels
    assert not bool((graph.node_type == int(NodeType.NORM)).any())
    bn_nodes = (graph.node_norm == int(NormKind.BATCH)).nonzero().squeeze(1)
    assert bn_nodes.numel() == 4 + 6
    slots = {s: pg.NODE_SLOTS.index(s) for s in pg.NODE_SLOTS}
    first = bn_nodes[:4]
    assert torch.equal(graph.node_value[first, slots["running_var"]], module[1].running_var)
    assert torch.equal(graph.node_value[first, slots["norm_weight"]], module[1].weight)
    assert bool(graph.node_mask[first, slots["bias"]].all())  # the conv's own bias
    # the classifier reads pooled channels: plain linear edges
    lin = _edges_of(graph, EdgeType.LINEAR)
    assert lin.numel() == 6 * 3


def test_conv1d_kernel_sizes_and_flatten_edges():
    _, graph = convert(get("cnn1d_bn_avgpool"))  # Conv1d k=3 twice, then 5 channels x 4 positions
    conv = _edges_of(graph, EdgeType.CONV)
    assert bool((graph.edge_size[conv] == 3).all())
    flat = _edges_of(graph, EdgeType.FLATTEN_LINEAR)
    assert flat.numel() == 5 * 3
    assert bool((graph.edge_size[flat] == 4).all())  # one edge per (channel, output): 4 positions


def test_flatten_without_pooling_and_channels_last_flatten():
    module, graph = convert(get("cnn2d_flatten_nopool"))
    flat = _edges_of(graph, EdgeType.FLATTEN_LINEAR)
    assert flat.numel() == 4 * 5 and bool((graph.edge_size[flat] == 9).all())
    # channel-major: the edge (channel c -> output o) holds W[o, c*9:(c+1)*9]
    w = module[5].weight
    offsets = graph.edge_offsets()
    src, dst = graph.edge_index
    e = int(flat[7])
    c = int(src[e]) - int(src[flat].min())
    o = int(dst[e]) - int(dst[flat].min())
    assert torch.equal(graph.edge_value[offsets[e] : offsets[e] + 9], w[o, c * 9 : (c + 1) * 9])

    module, graph = convert(get("cnn2d_channels_last_flatten"))  # features ordered (h, w, c)
    flat = _edges_of(graph, EdgeType.FLATTEN_LINEAR)
    assert flat.numel() == 3 * 2 and bool((graph.edge_size[flat] == 4).all())
    w = module.fc.weight  # [2, 4 positions * 3 channels]
    offsets = graph.edge_offsets()
    src, dst = graph.edge_index
    for e in flat.tolist():
        c, o = int(src[e]) - int(src[flat].min()), int(dst[e]) - int(dst[flat].min())
        assert torch.equal(graph.edge_value[offsets[e] : offsets[e] + 4], w[o, c::3])


def test_residual_edges_and_nodes():
    _, graph = convert(get("resnet_tiny"))
    res = _edges_of(graph, EdgeType.RESIDUAL)
    residual_nodes = (graph.node_type == int(NodeType.RESIDUAL)).nonzero().squeeze(1)
    assert residual_nodes.numel() == 4 + 8  # one residual add per block
    assert res.numel() == 2 * residual_nodes.numel()  # two operands per add
    offsets = graph.edge_offsets()
    assert bool((graph.edge_value[offsets[res]] == 1).all())
    assert bool(torch.isin(graph.edge_index[1, res], residual_nodes).all())
    # the projection shortcut is a 1x1 conv: kernel size 1
    conv = _edges_of(graph, EdgeType.CONV)
    assert int((graph.edge_size[conv] == 1).sum()) == 4 * 8


def test_layer_depth_increases_along_every_edge():
    for entry in catalogue():
        _, graph = convert(entry)
        src, dst = graph.edge_index
        qk = graph.edge_type == int(EdgeType.ATTN_QK)  # pairs q and k of the same depth
        kv = graph.edge_type == int(EdgeType.ATTN_KV)
        ok = graph.node_layer[dst] > graph.node_layer[src]
        assert bool(ok[~qk & ~kv].all()), entry.name
        assert bool((graph.node_layer[dst] == graph.node_layer[src])[qk | kv].all()), entry.name


def test_weight_tensors_are_contiguous_edge_slices():
    for entry in catalogue():
        module, graph = convert(entry)
        state = reference_state(module)
        for seg in graph.segments:
            assert seg.shape == tuple(state[seg.name].shape)
            if seg.kind == "edge":
                etypes = graph.edge_type[seg.start : seg.start + seg.count]
                assert bool(pg.layout.is_weight_type(etypes).all()), seg.name
                sizes = graph.edge_size[seg.start : seg.start + seg.count].long()
                assert int(sizes.sum()) == seg.numel, seg.name
                assert int(graph.edge_offsets()[seg.start]) == seg.value_start, seg.name


def test_attention_structure():
    _, graph = convert(get("mha"))  # embed 8, 2 heads of 4
    for t in (NodeType.ATTN_Q, NodeType.ATTN_K, NodeType.ATTN_V):
        assert int((graph.node_type == int(t)).sum()) == 8
    assert _edges_of(graph, EdgeType.ATTN_QK).numel() == 8
    assert _edges_of(graph, EdgeType.ATTN_KV).numel() == 2 * 4 * 4
    for t in (EdgeType.ATTN_IN_Q, EdgeType.ATTN_IN_K, EdgeType.ATTN_IN_V, EdgeType.ATTN_OUT):
        assert _edges_of(graph, t).numel() == 8 * 8


def test_transformer_norms_fold_or_get_their_own_nodes():
    _, post = convert(get("transformer_post_relu"))
    # post-norm: each LayerNorm normalises a residual sum that nothing else reads: folded
    assert not bool((post.node_type == int(NodeType.NORM)).any())
    assert int((post.node_norm == int(NormKind.LAYER)).sum()) == 2 * 8
    _, pre = convert(get("transformer_pre_gelu"))
    # pre-norm: the stream feeds both the norm and the residual: NORM nodes with NORM edges
    assert int((pre.node_type == int(NodeType.NORM)).sum()) == 2 * 8
    assert _edges_of(pre, EdgeType.NORM).numel() == 2 * 8


# -- batching and networkx --------------------------------------------------------------------------------

def test_batch_of_different_architectures_round_trips():
    entries = catalogue()
    modules, graphs = zip(*(convert(e) for e in entries))
    batch = Batch.from_data_list(list(graphs))
    assert batch.num_graphs == len(entries)
    assert batch.num_nodes == sum(g.num_nodes for g in graphs)
    assert batch.edge_index.size(1) == sum(g.edge_index.size(1) for g in graphs)
    back = batch.to_data_list()
    for entry, module, original, graph in zip(entries, modules, graphs, back):
        assert isinstance(graph, pg.ParamGraph)
        graph.validate()
        assert torch.equal(graph.edge_index, original.edge_index), entry.name
        assert_state_equal(pg.to_state_dict(graph), reference_state(module))


def test_batch_slices_keep_a_working_symmetry_group():
    entries = [get("resnet_tiny"), get("transformer_pre_gelu"), get("mlp_tanh")]
    modules = [e.build().double() for e in entries]
    graphs = [pg.from_module(m, e.example_input(dtype=torch.float64))
              for m, e in zip(modules, entries)]
    back = Batch.from_data_list(graphs).to_data_list()
    for entry, module, graph in zip(entries, modules, back):
        moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(0))
        other = pg.load_into(copy.deepcopy(module), moved)
        x = torch.randn((8,) + entry.input_shape[1:], dtype=torch.float64)
        y = output(module, x)
        assert float((output(other, x) - y).norm() / y.norm()) < 1e-6, entry.name
        assert states_differ(reference_state(other), reference_state(module)), entry.name


def _batched_id_problems(perm_group, node_head, graph_of, graphs) -> list[str]:
    """What is wrong with a batch's ``perm_group``/``node_head`` ids, given the graphs it holds:
    fixed nodes (-1) must stay -1, every group id must belong to one graph and keep that graph's
    grouping, and a head, the pair (group, head), must belong to one graph."""
    problems = []
    for name, got in (("perm_group", perm_group), ("node_head", node_head)):
        fixed = torch.cat([getattr(g, name) < 0 for g in graphs])
        if not torch.equal(got < 0, fixed) or not bool((got[fixed] == -1).all()):
            problems.append(f"{name}: the -1 entries are not those of the graphs")
    for gid in perm_group[perm_group >= 0].unique().tolist():
        owners = graph_of[perm_group == gid].unique().tolist()
        if len(owners) > 1:
            problems.append(f"group {gid} is shared by graphs {owners}")
    for i, g in enumerate(graphs):  # one offset per graph: its grouping is unchanged
        grouped = g.perm_group >= 0
        if (perm_group[graph_of == i][grouped] - g.perm_group[grouped]).unique().numel() > 1:
            problems.append(f"graph {i}'s groups are not offset by one number")
    heads = node_head >= 0
    pairs = perm_group[heads] * (int(node_head.max()) + 1) + node_head[heads]
    for pair in pairs.unique().tolist():
        owners = graph_of[heads][pairs == pair].unique().tolist()
        if len(owners) > 1:
            problems.append(f"head {pair} is shared by graphs {owners}")
    return problems


def test_batched_perm_groups_and_heads_of_different_graphs_do_not_collide():
    entries = [get("transformer_pre_gelu"), get("resnet_tiny"), get("transformer_post_relu")]
    graphs = [convert(e)[1] for e in entries]
    for g in graphs:  # each has permutation groups and fixed nodes; the transformers have heads
        assert bool((g.perm_group >= 0).any()) and bool((g.perm_group < 0).any())
    assert all(bool((graphs[i].node_head >= 0).any()) for i in (0, 2))
    batch = Batch.from_data_list(graphs)
    assert _batched_id_problems(batch.perm_group, batch.node_head, batch.batch, graphs) == []
    assert torch.equal(batch["perm_group"], batch.perm_group)
    groups = [int(g.perm_group.max()) + 1 for g in graphs]
    assert int(batch.perm_group.max()) + 1 == sum(groups)  # offset by the groups of earlier graphs

    back = batch.to_data_list()  # gives back every graph exactly: every field, dtype and segment
    for original, graph in zip(graphs, back):
        assert type(graph) is type(original) and set(graph.keys()) == set(original.keys())
        for key in original.keys():
            want, got = original[key], graph[key]
            if isinstance(want, torch.Tensor):
                assert got.dtype == want.dtype and torch.equal(got, want), key
            else:
                assert got == want, key
    again = Batch.from_data_list(back)
    assert torch.equal(again.perm_group, batch.perm_group)

    # setting a batch's ids (as read) keeps what to_data_list gives back
    copied = copy.copy(batch)
    copied.perm_group = batch.perm_group.clone()
    assert all(torch.equal(a.perm_group, g.perm_group)
               for a, g in zip(copied.to_data_list(), graphs))


def test_batched_id_check_catches_collisions_and_lost_fixed_marks():
    graphs = [convert(get(name))[1] for name in
              ("transformer_pre_gelu", "resnet_tiny", "transformer_post_relu")]
    batch = Batch.from_data_list(graphs)
    # PyG's stored values: the fixed nodes of later graphs hold their graph's offset - 1
    stored = batch.to_dict()["perm_group"]
    problems = _batched_id_problems(stored, batch.node_head, batch.batch, graphs)
    assert any("perm_group: the -1 entries" in p for p in problems), problems
    # plain Data (PyG's defaults: perm_group is not offset): groups and heads collide
    plain = Batch.from_data_list([Data(num_nodes=g.num_nodes, perm_group=g.perm_group,
                                       node_head=g.node_head) for g in graphs])
    problems = _batched_id_problems(plain.perm_group, plain.node_head, plain.batch, graphs)
    assert any(p.startswith("group 0 is shared by graphs [0, 1, 2]") for p in problems), problems
    assert any(p.startswith("head ") for p in problems), problems


@pytest.mark.parametrize("name", ["mlp_bn_relu", "resnet_tiny", "transformer_pre_gelu",
                                  "cnn1d_bn_avgpool", "functional"])
def test_networkx_export(name):
    _, graph = convert(get(name))
    g = graph.to_networkx()
    assert isinstance(g, nx.MultiDiGraph)
    assert g.number_of_nodes() == graph.num_nodes
    assert g.number_of_edges() == graph.edge_index.size(1)
    node_keys = {"type", "layer", "activation", "norm", "scale", "sign", "perm_group", "perm_pos",
                 "head"}
    for i, attrs in g.nodes(data=True):
        assert node_keys <= set(attrs)
    for i in (0, graph.num_nodes - 1):
        assert g.nodes[i]["type"] == NodeType(int(graph.node_type[i])).name.lower()
    # edge attributes: type, size and the values (a list for kernels)
    offsets = graph.edge_offsets().tolist()
    sizes = graph.edge_size.tolist()
    values = graph.edge_value.double()
    src, dst = graph.edge_index.tolist()
    seen = {}
    for k in range(len(src)):
        seen.setdefault((src[k], dst[k]), []).append(k)
    for (u, v), ks in list(seen.items())[:: max(1, len(seen) // 50)]:
        data = list(g.get_edge_data(u, v).values())
        assert len(data) == len(ks)
        for attrs, k in zip(data, ks):
            assert attrs["type"] == EdgeType(int(graph.edge_type[k])).name.lower()
            assert attrs["size"] == sizes[k]
            want = values[offsets[k] : offsets[k] + sizes[k]].tolist()
            assert (attrs["value"] if sizes[k] > 1 else [attrs["value"]]) == want
    # node values are attributes of the nodes that have them
    bias = pg.NODE_SLOTS.index("bias")
    has_bias = graph.node_mask[:, bias].nonzero().squeeze(1).tolist()
    for i in has_bias[:10]:
        assert g.nodes[i]["bias"] == float(graph.node_value[i, bias])
    structure_only = graph.to_networkx(values=False)
    assert structure_only.number_of_edges() == graph.edge_index.size(1)
    assert all("value" not in a for _, _, a in structure_only.edges(data=True))


# -- unsupported modules ----------------------------------------------------------------------------------

def _expect_unsupported(module, x, path, what):
    with pytest.raises(pg.UnsupportedModuleError) as info:
        pg.from_module(module, x)
    err = info.value
    message = str(err)
    assert err.path == path
    where = f"submodule '{path}'" if path else "the root module"
    assert message.startswith(f"{where} ({what})"), message
    # one line that says what to do, not the whole list of supported layers
    assert "\n" not in message and "Supported:" not in message and len(message) < 500, message
    return message


class _Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.tok(x))


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)))


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow
            return x
        return -x


class _HasBranchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.inner = nn.Sequential(nn.Linear(4, 4), _Branchy())

    def forward(self, x):
        return self.inner(self.stem(x))


class _FunctionalGroups(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 1, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, groups=4)


class _SharedParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return F.linear(torch.relu(F.linear(x, self.w)), self.w)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 4)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.relu(self.enc(x)))


def test_unsupported_layers_name_path_type_and_what_is_supported():
    msg = _expect_unsupported(nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4)), torch.randn(5, 2, 3),
                              "1", "LSTM")
    assert "not supported" in msg and "paramgraph inspect --supported" in msg
    embed = _Embed()  # token embeddings convert (issue 14); max_norm rewrites the table in forward
    embed.tok.max_norm = 1.0
    _expect_unsupported(embed, torch.randint(0, 10, (2, 3)), "tok", "Embedding")
    _expect_unsupported(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(
        nn.ReLU(), nn.ConvTranspose2d(2, 1, 3))), torch.randn(1, 1, 6, 6), "1.1", "ConvTranspose2d")


def test_grouped_convolutions_convert_with_edges_inside_their_groups():
    for module, x in ((nn.Sequential(nn.Conv2d(2, 4, 3), nn.Sequential(
            nn.Conv2d(4, 6, 3, groups=2))), torch.randn(1, 2, 8, 8)),
            (nn.Conv1d(4, 8, 3, groups=4), torch.randn(1, 4, 9)),
            (_FunctionalGroups(), torch.randn(1, 4, 8, 8))):
        module = randomize(module, 3)
        graph = pg.from_module(module, x)
        assert_state_equal(pg.to_state_dict(graph), reference_state(module))
    # the depthwise _FunctionalGroups: one 3x3 edge per channel, channel i to channel i
    conv = graph.edge_type == int(EdgeType.CONV)
    assert int(conv.sum()) == 4 and bool((graph.edge_size[conv] == 9).all())
    src, dst = graph.edge_index[:, conv]
    assert (dst - src).unique().tolist() == [4]


def test_shared_weights_are_refused():
    msg = _expect_unsupported(_Twice(), torch.randn(2, 4), "block.0", "Linear")
    assert "more than once" in msg
    msg = _expect_unsupported(_SharedParameter(), torch.randn(2, 4), "", "parameter")
    assert "'w'" in msg
    msg = _expect_unsupported(_Tied(), torch.randn(2, 4), "dec", "parameter")
    assert "'dec.weight' is the same tensor as 'enc.weight'" in msg


def test_untraceable_forward_is_refused():
    msg = _expect_unsupported(_HasBranchy(), torch.randn(2, 4), "inner.1", "_Branchy")
    assert "cannot be traced by torch.fx" in msg and "torch.export fallback failed too" in msg
    assert "data-dependent" in msg


def test_unrepresentable_data_flow_is_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * 2.0

    msg = _expect_unsupported(Scaled(), torch.randn(2, 4), "", "Scaled: call_function mul")
    assert "not supported" in msg

    class SubsetOfFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(1, 1)

        def forward(self, x):
            return self.out(self.fc(x)[:, 1].unsqueeze(1))

    with pytest.raises(pg.UnsupportedModuleError, match="selects a single feature"):
        pg.from_module(SubsetOfFeatures(), torch.randn(2, 4))


def test_not_a_module_is_a_type_error():
    with pytest.raises(TypeError):
        pg.from_module(lambda x: x, torch.randn(2))
