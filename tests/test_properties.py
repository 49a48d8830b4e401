"""Property tests over randomly generated MLP and CNN architectures (hypothesis, derandomized).

For every generated network: the round trip is bit-exact; a random element of the recorded
symmetry group keeps the function (float64, relative error < 1e-6) and changes the weights when
the network has a hidden layer or channel set of width >= 2 (so its group is non-trivial).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import paramgraph as pg
from catalogue import assert_state_equal, output, randomize, reference_state, relative_error

ACTS = ["relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "sine", "identity"]
SETTINGS = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def make_act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.05), "gelu": nn.GELU,
            "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
            "sine": lambda: pg.Sine(2.0), "identity": nn.Identity}[name]()


# -- architectures ----------------------------------------------------------------------------------------

@dataclass
class Net:
    module: nn.Module
    input_shape: tuple[int, ...]
    widest_hidden: int  # the widest hidden layer / channel set


@st.composite
def mlps(draw) -> Net:
    d_in = draw(st.integers(1, 6))
    layers: list[nn.Module] = []
    width, widest = d_in, 0
    for _ in range(draw(st.integers(0, 4))):
        out = draw(st.integers(1, 8))
        layers.append(nn.Linear(width, out, bias=draw(st.booleans())))
        norm = draw(st.sampled_from(["none", "batch", "layer"]))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(out, affine=draw(st.booleans())))
        elif norm == "layer":
            layers.append(nn.LayerNorm(out, elementwise_affine=draw(st.booleans())))
        layers.append(make_act(draw(st.sampled_from(ACTS))))
        if draw(st.booleans()):
            layers.append(nn.Dropout(0.3))
        width, widest = out, max(widest, out)
    layers.append(nn.Linear(width, draw(st.integers(1, 4)), bias=draw(st.booleans())))
    seed = draw(st.integers(0, 2**16))
    return Net(randomize(nn.Sequential(*layers), seed), (3, d_in), widest)


class Residual(nn.Module):
    """``act(branch(x) + shortcut(x))``; the shortcut is the identity or a 1x1 projection."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None, act: nn.Module):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = act

    def forward(self, x):
        return self.act(self.branch(x) + self.shortcut(x))


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def cnns(draw) -> Net:
    dim = draw(st.sampled_from([1, 2]))
    Conv = nn.Conv1d if dim == 1 else nn.Conv2d
    BN = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    AvgPool = nn.AvgPool1d if dim == 1 else nn.AvgPool2d
    MaxPool = nn.MaxPool1d if dim == 1 else nn.MaxPool2d
    pools = {"adaptive_avg": nn.AdaptiveAvgPool1d if dim == 1 else nn.AdaptiveAvgPool2d,
             "adaptive_max": nn.AdaptiveMaxPool1d if dim == 1 else nn.AdaptiveMaxPool2d}

    c_in = draw(st.integers(1, 3))
    size = draw(st.integers(5, 10))
    input_shape = (2, c_in) + (size,) * dim
    layers: list[nn.Module] = []
    channels, widest = c_in, 0

    def conv_layer(c_out: int):
        nonlocal size
        d = draw(st.integers(1, 2))
        p = draw(st.integers(0, 1))
        # largest kernel that still leaves at least one position
        k_max = max(1, min(3, (size + 2 * p - 1) // d + 1))
        k = draw(st.integers(1, k_max))
        s = draw(st.integers(1, 2))
        size = _conv_out(size, k, s, p, d)
        return Conv(channels, c_out, k, stride=s, padding=p, dilation=d, bias=draw(st.booleans()))

    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "conv", "residual"]))
        c_out = draw(st.integers(1, 6))
        if kind == "conv":
            layers.append(conv_layer(c_out))
            if draw(st.booleans()):
                layers.append(BN(c_out))
            layers.append(make_act(draw(st.sampled_from(ACTS))))
            if size >= 2 and draw(st.booleans()):
                layers.append(draw(st.sampled_from([AvgPool, MaxPool]))(2))
                size //= 2
        else:  # a same-size residual block: two convs (k=3, p=1 or k=1), optional BN
            k = draw(st.sampled_from([1, 3]))
            bn = draw(st.booleans())
            branch = [Conv(channels, c_out, k, padding=k // 2, bias=not bn)]
            if bn:
                branch.append(BN(c_out))
            branch += [make_act(draw(st.sampled_from(ACTS))),
                       Conv(c_out, c_out, k, padding=k // 2, bias=not bn)]
            if bn:
                branch.append(BN(c_out))
            shortcut = None
            if c_out != channels or draw(st.booleans()):
                shortcut = nn.Sequential(Conv(channels, c_out, 1, bias=False), BN(c_out))
            layers.append(Residual(nn.Sequential(*branch), shortcut,
                                   make_act(draw(st.sampled_from(ACTS)))))
        channels, widest = c_out, max(widest, c_out)

    head = draw(st.sampled_from(["adaptive_avg", "adaptive_max", "flatten", "pool_flatten"]))
    if head in pools:
        layers += [pools[head](1), nn.Flatten()]
        features = channels
    elif head == "pool_flatten" and size >= 2:
        layers += [AvgPool(2), nn.Flatten()]
        features = channels * (size // 2) ** dim
    else:
        layers.append(nn.Flatten())
        features = channels * size ** dim
    if draw(st.booleans()):
        hidden = draw(st.integers(1, 6))
        layers += [nn.Linear(features, hidden), make_act(draw(st.sampled_from(ACTS)))]
        features, widest = hidden, max(widest, hidden)
    layers.append(nn.Linear(features, draw(st.integers(1, 3))))
    seed = draw(st.integers(0, 2**16))
    return Net(randomize(nn.Sequential(*layers), seed), input_shape, widest)


# -- the properties -----------------------------------------------------------------------------------------

def check_round_trip(net: Net) -> None:
    x = torch.randn(net.input_shape)
    graph = pg.from_module(net.module, x)
    graph.validate()
    assert graph.segments.unplaced == ()
    assert_state_equal(pg.to_state_dict(graph), reference_state(net.module))


def check_symmetry(net: Net) -> None:
    module = net.module.double()
    graph = pg.from_module(module, torch.randn(net.input_shape, dtype=torch.float64))
    x = torch.randn((16,) + net.input_shape[1:], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    y = output(module, x)
    reference = reference_state(module)
    for seed in range(3):
        moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(seed))
        other = pg.load_into(copy.deepcopy(module), moved)
        assert relative_error(output(other, x), y) < 1e-6, seed
    if net.widest_hidden < 2:
        return
    # a hidden layer of width >= 2 can be permuted: the group must say so, and a draw that
    # permutes must move weights (and keep the function)
    group, pos = graph.perm_group, graph.perm_pos
    assert any(int(pos[group == g].max()) >= 1 for g in group.unique().tolist() if g >= 0)
    identity = torch.arange(graph.num_nodes)
    for seed in range(100, 120):
        element = pg.random_element(graph, generator=torch.Generator().manual_seed(seed))
        if not torch.equal(element.node_perm, identity):
            break
    else:
        raise AssertionError("twenty draws, not one permutation")
    moved = pg.apply_element(graph, element)
    assert any(not torch.equal(v, reference[k]) for k, v in pg.to_state_dict(moved).items())
    other = pg.load_into(copy.deepcopy(module), moved)
    assert relative_error(output(other, x), y) < 1e-6


@SETTINGS
@given(mlps())
def test_random_mlp_round_trip(net):
    check_round_trip(net)


@settings(SETTINGS, max_examples=100)
@given(mlps())
def test_random_mlp_symmetry(net):
    check_symmetry(net)


@SETTINGS
@given(cnns())
def test_random_cnn_round_trip(net):
    check_round_trip(net)


@settings(SETTINGS, max_examples=150)
@given(cnns())
def test_random_cnn_symmetry(net):
    check_symmetry(net)
