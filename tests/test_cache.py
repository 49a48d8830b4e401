"""The on-disk graph cache: sharded, read lazily, identical on every read (also from DataLoader
workers); a corrupted shard is reported by name with the command that repairs it, and
``zoo cache --rebuild`` / ``load_graphs(rebuild=True)`` rewrites only that shard."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch_geometric.loader import DataLoader

import paramgraph.tasks.data as data
from paramgraph.tasks.cli import main
from paramgraph.tasks.data import (
    CorruptCacheError,
    GraphCache,
    ZooDataset,
    cache_path,
    load_graphs,
    verify_cache,
)
from paramgraph.tasks.zoo import Zoo, make_zoo


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo") / "hetero", "hetero", 12, seed=4,
                    progress=False)


@pytest.fixture
def zoo(made, tmp_path, monkeypatch):
    """A private copy of the zoo whose cache has shards of 4 graphs (3 shards)."""
    root = tmp_path / "zoo"
    shutil.copytree(made.root, root, ignore=shutil.ignore_patterns("cache"))
    monkeypatch.setattr(data, "SHARD_SIZE", 4)
    return Zoo(root)


def _same(g, h) -> bool:
    keys = sorted(k for k, v in g.items() if isinstance(v, torch.Tensor))
    return keys == sorted(k for k, v in h.items() if isinstance(v, torch.Tensor)) and all(
        g[k].dtype == h[k].dtype and torch.equal(g[k], h[k]) for k in keys) \
        and g.segments.to_dict() == h.segments.to_dict() and g.num_nodes == h.num_nodes


def test_reading_twice_gives_identical_graphs(zoo):
    first = load_graphs(zoo, progress=False)
    assert isinstance(first, GraphCache) and len(first.counts) == 3  # sharded, lazy
    fresh = [data.convert_network(zoo, i) for i in range(len(zoo))]
    again = load_graphs(Zoo(zoo.root), progress=False)
    for i in range(len(zoo)):
        assert _same(first[i], fresh[i]) and _same(again[i], fresh[i])
    assert first.edge_counts() == [g.edge_index.shape[1] for g in fresh]
    # through DataLoader worker processes, twice: the same batches as in this process
    ds = ZooDataset(zoo, None, "test_acc", graphs=again)
    direct = [b for b in DataLoader(ds, batch_size=5)]
    for _ in range(2):
        for a, b in zip(direct, DataLoader(ds, batch_size=5, num_workers=2)):
            assert torch.equal(a.edge_value, b.edge_value) and torch.equal(a.y, b.y)
            assert torch.equal(a.edge_index, b.edge_index)


def _corrupt(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    path.write_bytes(bytes(raw))


def test_a_corrupt_shard_is_named_and_rebuilt_on_request(zoo, capsys):
    load_graphs(zoo, progress=False)
    # reference graphs converted afresh (graphs read from the cache are views of its files)
    graphs = [data.convert_network(zoo, i) for i in range(len(zoo))]
    store = cache_path(zoo)
    bad, good = store / "shard-00001.safetensors", store / "shard-00000.safetensors"
    good_bytes = good.read_bytes()
    _corrupt(bad)

    cache = load_graphs(zoo, progress=False)  # opening is lazy: no error yet
    assert _same(cache[0], graphs[0])  # shard 0 is fine
    with pytest.raises(CorruptCacheError, match=r"shard-00001\.safetensors.*--rebuild") as err:
        cache[5]
    assert err.value.path == bad
    with pytest.raises(CorruptCacheError, match=r"shard-00001"):  # from a worker process too
        list(DataLoader(ZooDataset(zoo, None, "test_acc", graphs=load_graphs(zoo, False)),
                        batch_size=4, num_workers=1))
    assert verify_cache(zoo) == [bad]
    assert main(["zoo", "cache", str(zoo.root), "--verify"]) == 2
    assert "shard-00001.safetensors" in capsys.readouterr().err

    assert main(["zoo", "cache", str(zoo.root), "--rebuild", "--no-progress"]) == 0
    assert "shard-00001.safetensors" in capsys.readouterr().out
    assert verify_cache(zoo) == [] and good.read_bytes() == good_bytes  # only the bad one
    rebuilt = load_graphs(zoo, progress=False)
    assert all(_same(rebuilt[i], graphs[i]) for i in range(len(zoo)))

    # the same through load_graphs(rebuild=True), which `train --rebuild-cache` uses
    _corrupt(bad)
    repaired = load_graphs(zoo, progress=False, rebuild=True)
    assert verify_cache(zoo) == [] and _same(repaired[5], graphs[5])


def test_a_missing_shard_is_named(zoo):
    load_graphs(zoo, progress=False)
    (cache_path(zoo) / "shard-00002.safetensors").unlink()
    with pytest.raises(CorruptCacheError, match=r"shard-00002\.safetensors.*missing"):
        load_graphs(zoo, progress=False)[11]
    assert [p.name for p in verify_cache(zoo)] == ["shard-00002.safetensors"]
