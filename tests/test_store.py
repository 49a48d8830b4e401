"""The sharded on-disk graph store and the template fill used for zoos of one architecture."""

import copy

import pytest
import torch
from torch import nn

import paramgraph as pg
from paramgraph.store import CorruptShardError, GraphStore, rewrite_shard, write_store


def _small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def _graphs(n):
    torch.manual_seed(0)
    out = []
    for i in range(n):
        mlp = nn.Sequential(nn.Linear(3, 2 + i % 5), nn.Tanh(), nn.Linear(2 + i % 5, 2))
        net = _small_cnn() if i % 2 else mlp
        g = pg.from_module(net, torch.randn(2, 1, 6, 6) if i % 2 else torch.randn(2, 3))
        g.y = torch.tensor([float(i)])
        out.append(g)
    return out


def _assert_same(a, b):
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
    assert a.segments == b.segments and a.num_nodes == b.num_nodes


def test_store_reads_back_every_graph_exactly(tmp_path):
    graphs = _graphs(11)
    write_store(graphs, tmp_path, shard_size=4)
    store = GraphStore(tmp_path)
    assert len(store) == 11 and len(store.index["shards"]) == 3
    for i, g in enumerate(graphs):
        _assert_same(g, store[i])
    assert store.verify() == []
    _assert_same(graphs[-1], store[-1])
    with pytest.raises(IndexError):
        store[11]


def test_corrupt_shard_is_named_and_can_be_rebuilt(tmp_path):
    graphs = _graphs(8)
    write_store(graphs, tmp_path, shard_size=4)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))

    store = GraphStore(tmp_path)
    assert store.verify() == [shard]
    _assert_same(graphs[0], store[0])  # the intact shard still reads
    with pytest.raises(CorruptShardError, match="shard-00001"):
        store[5]
    rewrite_shard(tmp_path, 1, graphs[4:8])
    store = GraphStore(tmp_path)
    assert store.verify() == []
    _assert_same(graphs[5], store[5])


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(pg.GraphFormatError, match="not a graph store"):
        GraphStore(tmp_path)


def test_from_state_dict_fills_a_template_like_a_fresh_conversion():
    x = torch.randn(2, 1, 6, 6)
    template = pg.from_module(_small_cnn(), x)
    other = _small_cnn()
    other[1].running_mean.normal_()
    filled = pg.from_state_dict(template, other.state_dict())
    fresh = pg.from_module(other, x)
    assert torch.equal(filled.edge_value, fresh.edge_value)
    assert torch.equal(filled.node_value, fresh.node_value)
    restored = pg.load_into(copy.deepcopy(other).eval(), filled)
    assert torch.equal(restored(x), other.eval()(x))


def test_from_state_dict_names_a_missing_or_misshapen_tensor():
    template = pg.from_module(_small_cnn(), torch.randn(2, 1, 6, 6))
    state = _small_cnn().state_dict()
    del state["5.weight"]
    with pytest.raises(pg.GraphFormatError, match="5.weight"):
        pg.from_state_dict(template, state)
    state = _small_cnn().state_dict()
    state["0.weight"] = torch.zeros(4, 1, 5, 5)
    with pytest.raises(pg.GraphFormatError, match="0.weight"):
        pg.from_state_dict(template, state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_store_keeps_every_value_dtype(tmp_path, dtype):
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).to(dtype)
    graph = pg.from_module(net, torch.randn(2, 3, dtype=dtype))
    write_store([graph], tmp_path)
    back = GraphStore(tmp_path)[0]
    assert back.edge_value.dtype == dtype
    state = pg.to_state_dict(back)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
