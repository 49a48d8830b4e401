"""The CNNs people use (issue 13): grouped and depthwise convolutions, squeeze-excitation gates,
layer scale, GroupNorm, channel shuffle, the activations of MobileNets and EfficientNets, the
torch.export fallback and the one-line errors.

The look-alikes in ``catalogue.CNN_LOOKALIKES`` also run through every catalogue test (bit-exact
round trip, load into a fresh module, random symmetry, the per-neuron oracle, the .pt2 reader);
here: their symmetry in float64 to 1e-10, what the graph records for each new construct, and
controls that show the function check fails when the recorded group is wrong.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paramgraph as pg
from catalogue import (
    CNN_LOOKALIKES,
    ECA,
    assert_exact_and_symmetric,
    assert_state_equal,
    get,
    output,
    random_inputs,
    randomize,
    reference_state,
    relative_error,
    states_differ,
)
from paramgraph import Activation, EdgeType, HeadRole, NodeType, NormKind
from paramgraph.export import from_exported


def convert64(name):
    entry = get(name)
    module = entry.build().double()
    graph = pg.from_module(module, entry.example_input(dtype=torch.float64))
    return entry, module, graph


def moved_error(entry, module, graph) -> float:
    x = random_inputs(entry)
    return relative_error(output(pg.load_into(copy.deepcopy(module), graph), x), output(module, x))


@pytest.mark.parametrize("name", sorted(CNN_LOOKALIKES))
def test_lookalike_symmetry_keeps_the_function_to_1e_10(name):
    entry, module, graph = convert64(name)
    assert_exact_and_symmetric(module, graph, lambda moved: moved_error(entry, module, moved))


def test_grouped_convolution_groups_permute_as_blocks():
    _, module, graph = convert64("resnext_tiny")
    # mixer.0: 8 -> 12 channels in 4 groups (2 in, 3 out per group); its input is layer1's output
    # (a residual stream: fixed? no, ReLU'd RESIDUAL set), its output is blocked into 4 groups
    conv = graph.edge_type == int(EdgeType.CONV)
    grouped = graph.node_head >= 0
    assert bool(grouped.any())
    roles = graph.head_role[grouped].unique().tolist()
    assert all(r >= int(HeadRole.GROUP) for r in roles) and len(roles) >= 2
    # within one grouped set, every node of a head reads only nodes of the same head
    src, dst = graph.edge_index[:, conv]
    both = grouped[src] & grouped[dst] & (graph.perm_group[src] == graph.perm_group[dst])
    assert bool(both.any())
    assert torch.equal(graph.node_head[src[both]], graph.node_head[dst[both]])


def test_depthwise_convolution_ties_each_channel_to_its_input():
    _, _, graph = convert64("mobilenet_v2_tiny")
    conv = graph.edge_type == int(EdgeType.CONV)
    src, dst = graph.edge_index[:, conv]
    # a depthwise edge: the only edge into its target
    fan_in = torch.bincount(dst, minlength=graph.num_nodes)
    dw = fan_in[dst] == 1
    assert bool(dw.any())
    assert torch.equal(graph.perm_group[src[dw]], graph.perm_group[dst[dw]])
    assert torch.equal(graph.perm_pos[src[dw]], graph.perm_pos[dst[dw]])
    assert bool((graph.perm_group[dst[dw]] >= 0).all())


def test_squeeze_excitation_is_a_product_tied_to_its_gate_and_input():
    _, module, graph = convert64("mobilenet_v3_tiny")
    product = graph.node_type == int(NodeType.PRODUCT)
    assert int(product.sum()) == 4 + 8 + 12  # three SE blocks on 4, 8 and 12 channels
    edges = graph.edge_type == int(EdgeType.PRODUCT)
    src, dst = graph.edge_index[:, edges]
    assert int(edges.sum()) == 2 * int(product.sum())
    # the gate (hardsigmoid), the gated value and the product share one permutation
    assert torch.equal(graph.perm_group[src], graph.perm_group[dst])
    assert torch.equal(graph.perm_pos[src], graph.perm_pos[dst])
    gates = src[graph.node_act[src] == int(Activation.HARDSIGMOID)]
    assert gates.numel() == int(product.sum())
    # nothing that feeds a product claims a scale or sign (the product cannot absorb it)
    assert not bool((graph.node_scale[src] | graph.node_sign[src]).any())


def test_layer_scale_is_a_node_value():
    _, module, graph = convert64("convnext_tiny")
    for name in ("stage1.0.gamma", "stage1.1.gamma", "stage2.gamma"):
        seg = graph.segments[name]
        assert seg.kind == "node" and seg.slot == 1  # norm_weight
        nodes = torch.arange(seg.start, seg.start + seg.count)
        assert bool((graph.node_norm[nodes] == int(NormKind.SCALE)).all())
    state = pg.to_state_dict(graph)
    assert state["stage1.0.gamma"].shape == (4, 1, 1) and state["stage1.1.gamma"].shape == (4,)


def test_group_norm_blocks_and_instance_norm():
    _, _, graph = convert64("groupnorm_resnet_tiny")
    gn = graph.node_norm == int(NormKind.GROUP)
    assert bool(gn.any()) and bool((graph.node_head[gn & (graph.perm_group >= 0)] >= 0).all())
    assert bool((graph.node_norm == int(NormKind.INSTANCE)).any())


def test_channel_split_and_shuffle_read_the_right_channels():
    entry = get("shufflenet_v2_tiny")
    module = entry.build()
    graph = pg.from_module(module, entry.example_input())
    assert_state_equal(pg.to_state_dict(graph), reference_state(module))
    # the unit's second branch reads half of the shuffled channels: its input sets are fixed
    # where they are read in part, and the branches' own channels still permute
    assert bool((graph.perm_group >= 0).any()) and bool((graph.perm_group < 0).any())


@pytest.mark.parametrize("act,code,scale,sign", [
    ("relu6", Activation.RELU6, False, False), ("hardswish", Activation.HARDSWISH, False, False),
    ("hardsigmoid", Activation.HARDSIGMOID, False, False), ("mish", Activation.MISH, False, False),
    ("elu", Activation.ELU, False, False), ("selu", Activation.ELU, False, False),
    ("softplus", Activation.SOFTPLUS, False, False),
    ("gelu_tanh", Activation.GELU_TANH, False, False),
    ("hardtanh", Activation.HARDTANH, False, True), ("softsign", Activation.SOFTSIGN, False, True),
])
def test_new_activations_claim_exactly_their_symmetries(act, code, scale, sign):
    _, _, graph = convert64(f"mlp_{act}")
    hidden = graph.node_type == int(NodeType.HIDDEN)
    assert bool((graph.node_act[hidden] == int(code)).all())
    assert bool((graph.node_scale[hidden] == scale).all())
    assert bool((graph.node_sign[hidden] == sign).all())


def test_functional_and_clamp_forms_of_activations():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4),
                                              nn.Linear(4, 2))

        def forward(self, x):
            h = F.relu6(self.a(x))
            h = self.b(h).clamp(min=-2.0, max=2.0)
            h = F.gelu(self.c(h), approximate="tanh")
            return self.d(F.hardswish(h))

    graph = pg.from_module(randomize(Net(), 4), torch.randn(2, 3))
    acts = [int(graph.node_act[graph.segments[f"{k}.bias"].start]) for k in "abc"]
    assert acts == [Activation.RELU6, Activation.HARDTANH, Activation.GELU_TANH]
    copies = graph.node_type == int(NodeType.COPY)  # hardswish after gelu: a second activation
    assert graph.node_act[copies].tolist() == [int(Activation.HARDSWISH)] * 4


# -- attention over channels and over branches: ECA, selective kernel, split attention ------------

def _nodes(graph, name):
    seg = graph.segments[name]
    return torch.arange(seg.start, seg.start + seg.count)


def test_eca_conv_slides_along_the_channels_and_pins_their_order():
    _, _, graph = convert64("ecaresnet_tiny")
    maps = (graph.node_type == int(NodeType.CHANNEL_MAP)).nonzero().squeeze(1)
    assert maps.numel() == 2  # one per ECA module: the channel its Conv1d reads
    src, dst = graph.edge_index
    for node, channels, gated, kernel in ((maps[0], 6, "block.bn2.bias", 3),
                                          (maps[1], 8, "stage.1.bias", 5)):
        into = (dst == node) & (graph.edge_type == int(EdgeType.CHANNEL_MAP))
        # the gated channels, in order, are the positions of the map
        assert torch.equal(src[into], _nodes(graph, gated))
        out = (src == node).nonzero().squeeze(1)
        assert graph.edge_type[out].tolist() == [int(EdgeType.CONV)]
        assert int(graph.edge_size[out]) == kernel  # the shared kernel, stored once
        assert bool((graph.perm_group[_nodes(graph, gated)] == -1).all())
    # the branch's inner channels still permute and scale; the stream tied to ECA does not
    inner = _nodes(graph, "block.bn1.bias")
    assert bool((graph.perm_group[inner] >= 0).all()) and bool(graph.node_scale[inner].all())
    assert bool((graph.perm_group[_nodes(graph, "stem.1.bias")] == -1).all())


def test_eca_channel_symmetry_is_only_the_reversal():
    """Why ECA's channels are fixed: its Conv1d mixes neighbouring channels, so permuting them
    keeps the function only for the order's automorphisms, identity and reversal (with the kernel
    flipped); the graph's permutation group cannot express the flip, and records none."""
    eca = randomize(ECA(3), 9).double()
    x = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flipped = copy.deepcopy(eca)
    with torch.no_grad():
        flipped.conv.weight.copy_(eca.conv.weight.flip(-1))
    y = output(eca, x).view(x.shape)

    def permuted_error(m, perm):  # ECA of permuted channels against ECA's output permuted
        return relative_error(output(m, x[:, perm]), y[:, perm].reshape(-1))

    reverse = torch.arange(7, -1, -1)
    assert permuted_error(flipped, reverse) < 1e-14
    assert permuted_error(eca, reverse) > 1e-3  # the kernel must flip with the order
    for seed in range(3):  # any other permutation breaks it, with either kernel
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
        assert not torch.equal(perm, reverse) and not torch.equal(perm, torch.arange(8))
        for m in (eca, flipped):
            assert permuted_error(m, perm) > 1e-3


def test_selective_kernel_branches_share_one_permutation():
    _, _, graph = convert64("sknet_tiny")
    for block, paths in (("blocks.0.conv1", 2), ("blocks.1.conv1", 3)):
        branches = torch.cat([_nodes(graph, f"{block}.paths.{r}.1.bias") for r in range(paths)])
        group = graph.perm_group[branches]
        assert bool((group >= 0).all()) and group.unique().numel() == 1
        assert graph.perm_pos[branches].tolist() == list(range(4)) * paths
        # the select conv's outputs (softmax across branches), the products and the branch sum
        # share that permutation, channel j of every branch at position j
        shared = graph.perm_group == group[0]
        soft = shared & (graph.node_act == int(Activation.SOFTMAX))
        assert int(soft.sum()) == 4 * paths
        assert graph.perm_pos[soft].tolist() == list(range(4)) * paths
        assert int((shared & (graph.node_type == int(NodeType.PRODUCT))).sum()) == 4 * paths
        assert not bool((graph.node_scale | graph.node_sign)[branches].any())
        assert not bool((graph.node_scale | graph.node_sign)[soft].any())
        # the attention's hidden units permute on their own, and scale through BN + ReLU
        hidden = _nodes(graph, f"{block}.bn.bias")
        assert graph.perm_group[hidden].unique().numel() == 1
        assert int(graph.perm_group[hidden][0]) not in (-1, int(group[0]))
        assert bool(graph.node_scale[hidden].all())
    # the first block's branches read the two halves of the stream: each half permutes alone
    stream = _nodes(graph, "stem.1.bias")
    assert graph.perm_pos[stream].tolist() == [0, 1, 0, 1]
    assert graph.perm_group[stream][0] != graph.perm_group[stream][2] >= 0


def test_split_attention_radix_branches_and_input_runs():
    _, _, graph = convert64("resnest_tiny")
    branches = _nodes(graph, "blocks.0.conv2.bn0.bias")  # radix 2 x 4 channels
    logits = _nodes(graph, "blocks.0.conv2.fc2.bias")  # softmax across the radix
    for nodes in (branches, logits):
        assert graph.perm_pos[nodes].tolist() == [0, 1, 2, 3] * 2
    assert graph.perm_group[branches].unique().tolist() == \
        graph.perm_group[logits].unique().tolist() != [-1]
    assert bool((graph.node_act[logits] == int(Activation.SOFTMAX)).all())
    # radix group r of the grouped conv reads half r of its input: the halves permute alone
    inputs = _nodes(graph, "blocks.0.bn1.bias")
    assert graph.perm_pos[inputs].tolist() == [0, 1, 0, 1]
    assert len(set(graph.perm_group[inputs].tolist())) == 2
    hidden = _nodes(graph, "blocks.0.conv2.bn1.bias")
    assert bool(graph.node_scale[hidden].all()) and bool((graph.perm_group[hidden] >= 0).all())
    # cardinality 2 shuffles (cardinality, radix) before the softmax: recorded as fixed
    assert bool((graph.perm_group[_nodes(graph, "blocks.1.conv2.bn0.bias")] == -1).all())


# -- controls: the function check fails when the recorded group is wrong ---------------------------

def test_control_permuting_across_groups_is_caught():
    """Swapping two output channels of one group is a symmetry; swapping two of different groups
    is not (their kernels read other input channels), and the group action refuses it."""
    entry, module, graph = convert64("resnext_tiny")
    seg = graph.segments["mixer.0.bias"]  # 12 outputs, 4 groups of 3
    a, b, c = seg.start, seg.start + 1, seg.start + 3
    assert graph.node_head[a] == graph.node_head[b] != graph.node_head[c]
    n = graph.num_nodes

    def swap(i, j):
        perm = torch.arange(n)
        perm[i], perm[j] = j, i
        return pg.GroupElement(perm, torch.ones(n, dtype=torch.float64), {}, {})

    inside = pg.apply_element(graph, swap(a, b))
    assert states_differ(pg.to_state_dict(inside), reference_state(module))
    assert moved_error(entry, module, inside) < 1e-12
    with pytest.raises(ValueError, match="does not map the graph onto itself"):
        pg.apply_element(graph, swap(a, c))
    # the same swap done on the weights directly (no graph) changes the function
    wrong = copy.deepcopy(module)
    with torch.no_grad():
        for name in ("weight", "bias"):
            t = getattr(wrong.mixer[0], name)
            t[[0, 3]] = t[[3, 0]].clone()
        w2 = wrong.mixer[2].weight  # the 1x1 conv reading mixer.0
        w2[:, [0, 3]] = w2[:, [3, 0]].clone()
    x = random_inputs(entry)
    assert relative_error(output(wrong, x), output(module, x)) > 1e-3


def test_control_a_scale_claimed_through_relu6_or_a_gate_breaks_the_function():
    for name, act in (("mlp_relu6", Activation.RELU6), ("mobilenet_v3_tiny", None),
                      ("sknet_tiny", Activation.SOFTMAX)):
        entry, module, graph = convert64(name)
        wrong = copy.copy(graph)
        if act is not None:
            wrong.node_scale = graph.node_act == int(act)
        else:  # claim a scale on the values a squeeze-excitation gate multiplies
            src = graph.edge_index[0, graph.edge_type == int(EdgeType.PRODUCT)]
            mask = torch.zeros_like(graph.node_scale)
            mask[src] = graph.node_type[src] == int(NodeType.HIDDEN)
            wrong.node_scale = mask
        assert bool(wrong.node_scale.any())
        moved = pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(0),
                                   permutations=False, signs=False)
        assert moved_error(entry, module, moved) > 1e-6, name


def _swap(graph, pairs) -> pg.GroupElement:
    """The node permutation exchanging each pair (a, b) of ``pairs``, nothing else."""
    n = graph.num_nodes
    perm = torch.arange(n)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return pg.GroupElement(perm, torch.ones(n, dtype=torch.float64), {}, {})


def test_control_permuting_what_eca_reads_breaks_the_function():
    """Claim a permutation for the channels an ECA module reads (with the products tied to them):
    the graph still maps onto itself, but the function moves, since the Conv1d mixes
    neighbouring channels."""
    entry, module, graph = convert64("ecaresnet_tiny")
    gated = _nodes(graph, "stage.1.bias")
    src, dst = graph.edge_index
    products = dst[(graph.edge_type == int(EdgeType.PRODUCT)) & torch.isin(src, gated)]
    group, pos = graph.perm_group.clone(), graph.perm_pos.clone()
    new = int(group.max()) + 1
    for nodes in (gated, products):
        group[nodes], pos[nodes] = new, torch.arange(8)
    wrong = copy.copy(graph)
    wrong.perm_group, wrong.perm_pos = group, pos
    moved = pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(0), scales=False,
                               signs=False)
    assert states_differ(pg.to_state_dict(moved), reference_state(module))
    assert moved_error(entry, module, moved) > 1e-3


def test_control_branches_permuted_apart_are_refused_and_break_the_function():
    """Swapping channels 0 and 1 in every branch of a selective-kernel block (and in what reads
    them) keeps the function; in one branch only it does not: the graph refuses that
    permutation, and done on the weights it changes the output."""
    entry, module, graph = convert64("sknet_tiny")
    first = _nodes(graph, "blocks.0.conv1.paths.0.1.bias")
    members = graph.perm_group == graph.perm_group[first[0]]
    zeros = (members & (graph.perm_pos == 0)).nonzero().squeeze(1)
    together = pg.apply_element(graph, _swap(graph, [(int(z), int(z) + 1) for z in zeros]))
    assert states_differ(pg.to_state_dict(together), reference_state(module))
    assert moved_error(entry, module, together) < 1e-12
    with pytest.raises(ValueError, match="does not map the graph onto itself"):
        pg.apply_element(graph, _swap(graph, [(int(first[0]), int(first[1]))]))
    wrong = copy.deepcopy(module)
    sk = wrong.blocks[0].conv1
    with torch.no_grad():  # branch 0's conv rows, BN entries and attention rows only
        conv, bn = sk.paths[0][0], sk.paths[0][1]
        for t in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                  sk.fc_select.weight):
            t[[0, 1]] = t[[1, 0]].clone()
    x = random_inputs(entry)
    assert relative_error(output(wrong, x), output(module, x)) > 1e-3


def test_control_the_halves_two_branches_read_do_not_mix():
    """The stream's halves feed different branches: merging them into one permutable set lets
    a permutation move a channel into the other branch's half, which the graph refuses."""
    _, _, graph = convert64("sknet_tiny")
    stream = _nodes(graph, "stem.1.bias")
    low, high = (int(graph.perm_group[stream[i]]) for i in (0, 2))
    group, pos = graph.perm_group.clone(), graph.perm_pos.clone()
    pos[group == high] += 2
    group[group == high] = low
    wrong = copy.copy(graph)
    wrong.perm_group, wrong.perm_pos = group, pos
    with pytest.raises(ValueError, match="does not map the graph onto itself"):
        for seed in range(5):  # some draw moves a channel across the halves
            pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(seed),
                               scales=False, signs=False)


# -- the torch.export fallback and .pt2 programs ---------------------------------------------------

class _Checked(nn.Module):
    """A forward torch.fx cannot trace (a Python check on a shape), otherwise a plain block."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, groups=1)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.shape[1] != 3:
            raise ValueError("expected 3 channels")
        h = F.relu(self.bn(self.conv(x)))
        h = F.hardswish(self.dw(h))
        return self.fc(h.mean(dim=(2, 3)))


class _Unchecked(_Checked):
    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = F.hardswish(self.dw(h))
        return self.fc(h.mean(dim=(2, 3)))


def test_untraceable_forward_falls_back_to_torch_export():
    module = randomize(_Checked(), 5)
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(Exception):  # torch.fx alone cannot trace it
        torch.fx.symbolic_trace(module)
    graph = pg.from_module(module, x)
    plain = randomize(_Unchecked(), 5)
    same = pg.from_module(plain, x)
    for key in ("edge_index", "edge_value", "edge_type", "node_value", "node_act", "node_scale",
                "node_sign", "perm_group", "perm_pos"):
        assert torch.equal(getattr(graph, key), getattr(same, key)), key
    assert_state_equal(pg.to_state_dict(graph), reference_state(module))


class _InplaceResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x  # aten.add_ in the exported program
        return self.fc(F.relu(out).mean(dim=(2, 3)))


def test_pt2_with_in_place_ops_is_functionalised():
    module = randomize(_InplaceResidual(), 6)
    x = torch.randn(2, 4, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(module, (x,))
    assert any("add_" in str(n.target) for n in ep.graph.nodes)
    graph = from_exported(ep)
    assert_state_equal(pg.to_state_dict(graph), reference_state(module))
    live = pg.from_module(module, x)
    assert torch.equal(graph.edge_index, live.edge_index)
    assert torch.equal(graph.perm_group, live.perm_group)


@pytest.mark.parametrize("name", ["ecaresnet_tiny", "sknet_tiny", "resnest_tiny",
                                  "hrnet_fuse_tiny"])
def test_branch_and_channel_attention_read_alike_from_pt2_programs(name):
    """Both forms of an exported program (core ATen writes split attention's transpose as a
    permute; upsampling is aten.upsample_*) give the live module's graph and symmetry record."""
    entry = get(name)
    module, x = entry.build(), entry.example_input()
    live = pg.from_module(module, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(module, (x,))
        programs = (ep, ep.run_decompositions())
    for program in programs:
        graph = from_exported(program)
        assert_state_equal(pg.to_state_dict(graph), reference_state(module))
        for key in ("edge_index", "edge_type", "node_act", "perm_group", "perm_pos", "node_scale"):
            assert torch.equal(getattr(graph, key), getattr(live, key)), key


# -- one-line errors -------------------------------------------------------------------------------

def test_wrong_input_shape_is_one_line_naming_the_layer(capfd):
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 2, 3)))
    with pytest.raises(pg.UnsupportedModuleError) as info:
        pg.from_module(module, torch.randn(2, 3, 8, 8))
    assert capfd.readouterr().err == ""  # no traceback printed on the way
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert info.value.path == "0" and msg.startswith("submodule '0' (Conv2d)")
    assert "(2, 3, 8, 8)" in msg and "1 channels" in msg and "--input-shape" in msg


def test_refusals_name_the_operation_and_what_to_do():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * 2.0

    with pytest.raises(pg.UnsupportedModuleError) as info:
        pg.from_module(Scaled(), torch.randn(2, 4))
    msg = str(info.value)
    assert msg.startswith("the root module (Scaled: call_function mul)")
    assert "constant" in msg and "fold" in msg and "\n" not in msg


class _MeanOfBranches(nn.Module):
    """Two branches stacked and averaged (a mean over the branches is sum / branches)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.stack([self.a(x), self.b(x)], dim=1).mean(dim=1)
        return self.fc(h.mean((2, 3)))


def test_a_mean_over_branches_and_a_wide_channel_conv_are_refused_in_one_line():
    with pytest.raises(pg.UnsupportedModuleError) as info:
        pg.from_module(_MeanOfBranches(), torch.randn(2, 3, 6, 6))
    msg = str(info.value)
    assert "\n" not in msg and "branches" in msg and "sum" in msg, msg

    class TwoChannelsAlong(nn.Module):  # a conv along the features, read as two channels
        def __init__(self):
            super().__init__()
            self.fc, self.conv = nn.Linear(3, 5), nn.Conv1d(2, 1, 3, padding=1)

        def forward(self, x):
            h = self.fc(x)
            return self.conv(h.unsqueeze(1).expand(h.shape[0], 2, 5))

    with pytest.raises(pg.UnsupportedModuleError) as info:
        pg.from_module(TwoChannelsAlong(), torch.randn(2, 3))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("submodule 'conv'") and "one channel" in msg, msg


def test_inspect_supported_lists_the_layers(capsys):
    from paramgraph.tasks.cli import main

    assert main(["inspect", "--supported"]) == 0
    out = capsys.readouterr().out
    assert "Hardswish" in out and "GroupNorm" in out and "grouped" in out and "aten" in out


def test_a_resnext_lookalike_converts_fast_enough_to_matter():
    """Not a benchmark: a guard that grouped convolutions stay vectorised (no Python loop per
    group or channel): a 64-group, 256-channel grouped conv converts in well under a second."""
    module = nn.Sequential(nn.Conv2d(3, 256, 1), nn.ReLU(),
                           nn.Conv2d(256, 256, 3, padding=1, groups=64), nn.ReLU(),
                           nn.Conv2d(256, 256, 3, padding=1, groups=256), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 4))
    import time

    start = time.perf_counter()
    graph = pg.from_module(module, torch.randn(1, 3, 4, 4))
    assert time.perf_counter() - start < 5.0
    # the grouped conv's input and output, and the depthwise output tied to the latter
    assert int((graph.node_head >= 0).sum()) == 3 * 256


def test_cli_wrong_input_shape_and_inplace_pt2_are_handled(tmp_path, capsys):
    from paramgraph.tasks.cli import main
    from tests.cli_archs import make_cnn

    torch.save(make_cnn().state_dict(), tmp_path / "c.pt")
    code = main(["convert", str(tmp_path / "c.pt"), "--arch", "tests.cli_archs:make_cnn",
                 "--input-shape", "2,3,8,8"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "submodule 'stem' (Conv2d)" in err and "to have 1 channels, but got 3" in err
    assert "--input-shape" in err and "Traceback" not in err
    # a .pt2 of a residual block with `out += x` converts (functionalised on the way)
    module = randomize(_InplaceResidual(), 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(module, (torch.randn(2, 4, 6, 6),)),
                          tmp_path / "r.pt2")
    assert main(["convert", str(tmp_path / "r.pt2"), "-o", str(tmp_path / "r.pgraph")]) == 0
    graph = pg.load_graph(tmp_path / "r.pgraph")
    assert_state_equal(pg.to_state_dict(graph), reference_state(module))


class _BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm2d subclass whose forward asserts the rank, calls
    F.batch_norm and then an activation (traced through, being no torch.nn class)."""

    def __init__(self, c):
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected 4D input")
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         bn_training, 0.1, self.eps)
        return self.act(x)


def test_functional_batch_norm_subclass_converts_like_the_module():
    torch.manual_seed(0)
    a = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), _BatchNormAct(4), nn.Conv2d(4, 2, 1)), 8)
    b = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                nn.Conv2d(4, 2, 1)), 8)
    b[3].load_state_dict(a[2].state_dict())
    x = torch.randn(2, 3, 6, 6)
    ga, gb = pg.from_module(a, x), pg.from_module(b, x)
    assert_state_equal(pg.to_state_dict(ga), reference_state(a))
    for key in ("edge_index", "edge_value", "node_value", "node_act", "node_scale", "perm_group"):
        assert torch.equal(getattr(ga, key), getattr(gb, key)), key


class _SamePadConv(nn.Conv2d):
    """timm's Conv2dSame: "same" padding computed from the input's size with math.ceil, which
    torch.fx cannot trace (the torch.export fallback reads it), then F.pad and the conv."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                              reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


class _FixedPadConv(nn.Conv2d):
    """The same padding for a 7x7 input written as constants: torch.fx reads F.pad itself."""

    def forward(self, x):
        return F.conv2d(F.pad(x, [1, 1, 1, 1]), self.weight, self.bias, self.stride, 0)


def _padded_net(conv):
    return nn.Sequential(conv(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def test_same_padding_converts_through_either_front_end():
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    same = randomize(_padded_net(_SamePadConv), 11).double()
    with pytest.raises(Exception):  # torch.fx alone cannot trace it
        torch.fx.symbolic_trace(same)
    graph = pg.from_module(same, x)  # through torch.export: aten.pad
    assert_state_equal(pg.to_state_dict(graph), reference_state(same))
    fixed = randomize(_padded_net(_FixedPadConv), 11).double()
    assert torch.equal(output(fixed, x), output(same, x))  # the same network
    traced = pg.from_module(fixed, x)  # through torch.fx: F.pad
    for key in ("edge_index", "edge_value", "node_scale", "perm_group"):
        assert torch.equal(getattr(traced, key), getattr(graph, key)), key
    # zero padding keeps every channel's scale and order: the group acts, the function stays
    assert bool(graph.node_scale.any()) and bool((graph.perm_group >= 0).any())
    moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(0))
    x2 = torch.randn(5, 3, 7, 7, dtype=torch.float64)
    assert relative_error(output(pg.load_into(copy.deepcopy(same), moved), x2),
                          output(same, x2)) < 1e-10


def test_padding_with_a_nonzero_constant_is_refused_in_one_line():
    class Ones(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3)

        def forward(self, x):
            return self.b(F.pad(torch.relu(self.a(x)), [1, 1, 1, 1], value=1.0))

    with pytest.raises(pg.UnsupportedModuleError) as info:
        pg.from_module(Ones(), torch.randn(2, 3, 8, 8))
    msg = str(info.value)
    assert "\n" not in msg and "pad" in msg and "zeros" in msg, msg
