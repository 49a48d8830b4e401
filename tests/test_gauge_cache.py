"""The quasi gauge's invariant inputs (exact section and kappa's features), computed once per graph
by a data set instead of once per training step (issue 18), change nothing: outputs, gradients
and training losses are bit-identical to the uncached path. A cache made under another gauge
setting is ignored; a graph with attention carries no usable cache."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from metanet_nets import graphs
from paramgraph import models
from paramgraph.models.gauge import GaugeInputs
from paramgraph.tasks.data import ZooDataset, _gauge_fields
from paramgraph.tasks.zoo import make_zoo

NO_ATTENTION = ("mlp_relu", "mlp_tanh_identity", "cnn_bn_res", "siren")


def _nets(names=NO_ATTENTION):
    all_names, _, gs = graphs(seeds=(0, 1))
    return [g for n, g in zip(all_names, gs) if n in names]


def _with_cache(net, gs, key=None):
    """The graphs, each carrying its own gauge inputs (computed one graph at a time)."""
    table = {}
    for i, g in enumerate(gs):
        one, st = models.prepare(g)
        table[i] = None if st.heads is not None else net.gauge_inputs(one, st)
    out = []
    for i, g in enumerate(gs):
        c = g.with_values(g.edge_value, g.node_value)
        fields = _gauge_fields(net.gauge_input_key() if key is None else key, table, i,
                               g.num_nodes)
        for name, value in fields.items():
            setattr(c, name, value)
        out.append(c)
    return out


def _output_and_grads(net, batch):
    net.zero_grad()
    b, st = models.prepare(batch)
    y = net(b, st)
    out = y if isinstance(y, torch.Tensor) else torch.cat([y.edge_value, y.node_value.flatten()])
    (out * torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)).sum().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]


@pytest.mark.parametrize("task,dtype", [("invariant", torch.float32), ("invariant", torch.float64),
                                        ("weights", torch.float32)])
def test_cached_gauge_inputs_give_bit_identical_outputs_and_gradients(task, dtype):
    torch.manual_seed(0)
    kw = {"frame": "input"} if task == "weights" else {}
    net = models.MetaNet(mode="quasi", task=task, hidden=16, layers=2, **kw).to(dtype)
    gs = _nets()
    plain = Batch.from_data_list(gs)
    cached = Batch.from_data_list(_with_cache(net, gs))
    assert models.prepare(cached)[1].gauge_key == net.gauge_input_key()
    y0, g0 = _output_and_grads(net, plain)
    y1, g1 = _output_and_grads(net, cached)
    assert torch.equal(y0, y1)
    assert len(g0) == len(g1) and all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_a_cache_is_read_only_under_its_own_key():
    torch.manual_seed(0)
    net = models.MetaNet(mode="quasi", hidden=16, layers=2)
    gs = _nets()
    y0, _ = _output_and_grads(net, Batch.from_data_list(gs))
    # control: garbage under the right key moves the output, so the cache is what is read
    spoiled = _with_cache(net, gs)
    for g in spoiled:
        g.gauge_factor = g.gauge_factor * 3.0
    y_spoiled, _ = _output_and_grads(net, Batch.from_data_list(spoiled))
    assert (y_spoiled - y0).abs().max() > 1e-3
    # the same garbage under another gauge setting's key (another section) is ignored
    other = models.MetaNet(mode="quasi", hidden=16, layers=2, section="unit")
    assert other.gauge_input_key() != net.gauge_input_key()
    stale = _with_cache(net, gs, key=other.gauge_input_key())
    for g in stale:
        g.gauge_factor = g.gauge_factor * 3.0
    y_stale, _ = _output_and_grads(net, Batch.from_data_list(stale))
    assert torch.equal(y_stale, y0)
    # and another dtype is another key (the section reads the values as forward converts them)
    assert net.double().gauge_input_key() != other.gauge_input_key() != net.float().gauge_input_key()


def test_a_batch_with_attention_computes_its_gauge_in_the_step():
    torch.manual_seed(0)
    net = models.MetaNet(mode="quasi", hidden=16, layers=2)
    gs = _nets(NO_ATTENTION + ("transformer",))
    carried = _with_cache(net, gs)
    batch = Batch.from_data_list(carried)
    assert models.prepare(batch)[1].gauge_key is None  # the transformer's key is -1
    y0, g0 = _output_and_grads(net, Batch.from_data_list(gs))
    y1, g1 = _output_and_grads(net, batch)
    assert torch.equal(y0, y1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    with pytest.raises(ValueError, match="attention"):
        net.gauge_inputs(Batch.from_data_list(gs))
    with pytest.raises(ValueError, match="no gauge"):
        models.MetaNet(mode="perm").gauge_inputs(Batch.from_data_list(gs[:1]))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo") / "cnn", "cnn", 12, seed=3, progress=False)


def _losses(net, dataset, steps: int = 4) -> list[float]:
    from torch_geometric.loader import DataLoader

    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for k, batch in enumerate(DataLoader(dataset, batch_size=4)):
        if k == steps:
            break
        b, st = models.prepare(batch)
        loss = (net(b, st).squeeze(1) - batch.y.float()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_data_set_with_cached_inputs_trains_exactly_as_without(zoo):
    def fresh():
        torch.manual_seed(0)
        return models.MetaNet(mode="quasi", hidden=16, layers=2)

    plain = ZooDataset(zoo, None, "test_acc", progress=False)
    reference = _losses(fresh(), plain)
    cached = ZooDataset(zoo, None, "test_acc", progress=False)
    net = fresh()
    cached.attach_gauge_inputs(net, batch_size=5)  # chunks that cut across loader batches
    assert cached.get(0).gauge_factor.shape == (cached.get(0).num_nodes,)
    assert _losses(net, cached) == reference
    # a metanet without gauge clears the cache
    cached.attach_gauge_inputs(models.MetaNet(mode="perm", hidden=16, layers=2))
    assert cached.gauge_inputs is None and not hasattr(cached.get(0), "gauge_factor")


def test_gauge_inputs_are_what_the_gauge_computes():
    torch.manual_seed(0)
    net = models.MetaNet(mode="quasi", hidden=16, layers=2)
    batch, st = models.prepare(Batch.from_data_list(_nets()))
    inputs = net.gauge_inputs(batch, st)
    assert isinstance(inputs, GaugeInputs) and inputs.factor.dtype == torch.float64
    f, sums = net.gauge.section_factors(st, batch.edge_value.float().double(),
                                        batch.node_value.float().double())
    assert torch.equal(inputs.factor, f)
    assert inputs.features.shape == (st.num_nodes, 12)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def test_a_data_set_collates_the_batch_a_loader_makes_of_its_items(zoo):
    ds = ZooDataset(zoo, "train", "test_acc", progress=False)
    ds.prior_offsets = {i: i / 7 for i in ds.ids}
    ds.attach_gauge_inputs(models.MetaNet(mode="quasi", hidden=16, layers=2))
    idx = [len(ds) - 1, 0, 2, 1]
    fast = ds.collate(idx)
    slow = Batch.from_data_list([ds.get(k) for k in idx])
    assert sorted(fast.keys()) == sorted(slow.keys())
    assert all(_same(fast[key], slow[key]) for key in slow.keys())
    assert fast.num_graphs == slow.num_graphs == 4
    for a, b in zip(fast.to_data_list(), slow.to_data_list(), strict=True):
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(_same(a[key], b[key]) for key in b.keys())


def test_new_values_drop_the_cache_they_would_make_stale():
    """A graph whose values change (``with_values``, a random symmetry, training augmentation)
    loses its cached gauge inputs, and the metanet then computes the gauge of the new values:
    reading the unmoved network's section for moved values broke quasi's invariance (control)."""
    from paramgraph import random_symmetry
    from paramgraph.tasks.augment import augment

    torch.manual_seed(0)
    net = models.MetaNet(mode="quasi", hidden=16, layers=2).double()
    gs = _with_cache(net, _nets())
    assert all("gauge_factor" not in g.with_values(g.edge_value, g.node_value) for g in gs)
    moved = [random_symmetry(g, generator=torch.Generator().manual_seed(k))
             for k, g in enumerate(gs)]
    assert all("gauge_key" not in g for g in moved)
    y_moved, _ = _output_and_grads(net, Batch.from_data_list(moved))
    y0, _ = _output_and_grads(net, Batch.from_data_list(gs))
    assert (y_moved - y0).abs().max() < 1e-8  # invariant: the moved graphs' own sections
    batch, st = models.prepare(Batch.from_data_list(gs))
    torch.manual_seed(1)
    augmented = augment(batch, st, 4.0)
    assert "gauge_factor" not in augmented and st.gauge_key == net.gauge_input_key()
    with torch.no_grad():
        y_aug = net(augmented, st)
        assert (y_aug - y0.detach()).abs().max() < 1e-8
        # control: the stale cache put back on the moved values moves the prediction
        stale = Batch.from_data_list(gs)
        stale.edge_value, stale.node_value = augmented.edge_value, augmented.node_value
        assert (net(stale, st) - y0).abs().max() > 1e-4
