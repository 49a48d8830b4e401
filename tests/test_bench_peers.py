"""scripts/bench_peers.py: a bench_cnn checkpoint in ScaleGMN's per-layer (weights, biases)
layout, value by value (no ScaleGMN checkout needed)."""

from __future__ import annotations

import pytest
import torch

from script_loader import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("bench_peers")


@pytest.fixture(scope="module")
def state_dict():
    """bench_cnn's parameters, every value distinct (a misplaced one cannot match by chance),
    keys in safetensors' text order (8.* between 4.* and nothing after)."""
    net = load_script("bench_train").bench_cnn()
    sd = net.state_dict()
    start = 0
    for v in sd.values():
        v.copy_(torch.arange(start, start + v.numel(), dtype=v.dtype).reshape(v.shape))
        start += v.numel()
    return {k: sd[k] for k in sorted(sd)}


def test_bench_cnn_lands_where_scalegmn_reads_it(script, state_dict):
    weights, biases = script.to_scalegmn_layout(state_dict)
    assert [tuple(w.shape) for w in weights] == [(1, 8, 9), (8, 8, 9), (8, 8, 9), (8, 10, 1)]
    assert [tuple(b.shape) for b in biases] == [(8, 1), (8, 1), (8, 1), (10, 1)]
    for layer, name in enumerate(["0", "2", "4"]):  # conv: edge (in i, out o), kernel row-major
        w = state_dict[f"{name}.weight"]
        for o, i, kh, kw in [(0, 0, 0, 0), (7, 0, 2, 1), (3, 0, 1, 2)] + \
                ([(2, 5, 0, 2), (6, 7, 2, 2)] if layer else []):
            assert weights[layer][i, o, 3 * kh + kw] == w[o, i, kh, kw]
        assert torch.equal(biases[layer][:, 0], state_dict[f"{name}.bias"])
    lin = state_dict["8.weight"]  # the layer after the pooling: (in, out, 1)
    for o, i in [(0, 0), (9, 0), (0, 7), (4, 6)]:
        assert weights[3][i, o, 0] == lin[o, i]
    assert torch.equal(biases[3][:, 0], state_dict["8.bias"])
    assert script.conv_mask(state_dict) == [1, 1, 1, 0]
    assert script._layer_layout(state_dict) == [1, 8, 8, 8, 10]


def test_every_value_is_kept_once(script, state_dict):
    weights, biases = script.to_scalegmn_layout(state_dict)
    got = torch.cat([t.flatten() for t in weights + biases]).sort().values
    want = torch.cat([v.flatten() for v in state_dict.values()]).sort().values
    assert torch.equal(got, want)


def test_smaller_kernels_are_padded_as_scalegmn_pads_them(script):
    """1x1 in the centre; 2x2 top-left (ScaleGMN puts the odd row and column of padding after)."""
    sd = {"0.weight": torch.tensor([[[[5.0]]], [[[7.0]]]]), "0.bias": torch.zeros(2),
          "1.weight": torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]] * 2]), "1.bias": torch.zeros(1),
          "2.weight": torch.ones(3, 1), "2.bias": torch.zeros(3)}
    weights, _ = script.to_scalegmn_layout(sd)
    assert [tuple(w.shape) for w in weights] == [(1, 2, 9), (2, 1, 9), (1, 3, 1)]
    assert weights[0][0, 0].tolist() == [0, 0, 0, 0, 5, 0, 0, 0, 0]
    assert weights[0][0, 1].tolist() == [0, 0, 0, 0, 7, 0, 0, 0, 0]
    assert weights[1][1, 0].tolist() == [1, 2, 0, 3, 4, 0, 0, 0, 0]


def test_layers_follow_the_module_order_not_the_key_text(script):
    """``10.*`` comes after ``2.*`` although safetensors stores it first."""
    sd = {"10.bias": torch.zeros(3), "10.weight": torch.full((3, 4), 2.0),
          "2.bias": torch.zeros(4), "2.weight": torch.full((4, 5), 1.0)}
    weights, biases = script.to_scalegmn_layout(sd)
    assert [tuple(w.shape) for w in weights] == [(5, 4, 1), (4, 3, 1)]
    assert weights[0].unique().tolist() == [1.0] and weights[1].unique().tolist() == [2.0]
    assert script._layer_layout(sd) == [5, 4, 3]
