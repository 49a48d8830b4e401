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
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paramgraph as pg
from catalogue import (
    CNN_LOOKALIKES,
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
    assert_state_equal(pg.to_state_dict(graph), reference_state(module))
    for seed in range(2):
        moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(seed))
        assert states_differ(pg.to_state_dict(moved), reference_state(module))
        assert moved_error(entry, module, moved) < 1e-10, seed


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
    for name, act in (("mlp_relu6", Activation.RELU6), ("mobilenet_v3_tiny", None)):
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
