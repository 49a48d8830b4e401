"""Invariance over whole test splits of real zoos, in the training dtype (float32).

For every network of the test split of a hetero and a cnn zoo, plus *collapsed* copies of them
(hidden channels whose incoming weights are scaled down to norms of 1e-7 and 1e-9, as in trained
networks whose weight decay killed a channel), the predicted accuracy of a ``quasi`` and a
``strict`` metanet moves by at most 1e-5 under random function-preserving permutations, scales
in [1e-2, 1e2] and sign flips, and for ``quasi`` also the attention head maps of the hetero zoo's
ViTs (issue 15; ``strict`` is equivariant to scales and signs only). The same with a fitted tree
prior (:mod:`paramgraph.models.prior`; deep trees, many thresholds), which is piecewise constant:
it must not jump. Control: a ``perm`` metanet's predictions move by far more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

import paramgraph
from paramgraph import models
from paramgraph.tasks.data import load_graphs
from paramgraph.tasks.objectives import get_objective
from paramgraph.tasks.zoo import make_zoo
from paramgraph.types import NodeType

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("inv")
    out = {}
    for kind, size, seed in (("hetero", 28, 21), ("cnn", 28, 22)):
        zoo = make_zoo(root / kind, kind, size, seed=seed, progress=False)
        graphs = load_graphs(zoo, progress=False)
        ids = zoo.split("test")
        if kind == "hetero":  # every ViT of the zoo too (ood_test holds the family out)
            ids = sorted(set(ids) | set(zoo.split("ood_test")))
        out[kind] = [graphs[i] for i in ids]
        out.setdefault("train", []).extend(graphs[i] for i in zoo.split("train"))
    return out


def _collapse(graph, norm: float, seed: int):
    """A copy of ``graph`` in which a few hidden neurons with a scale or sign symmetry get their
    incoming weights and bias scaled to L2 norm ``norm`` (a different network: a nearly dead
    channel)."""
    gen = torch.Generator().manual_seed(seed)
    symmetric = graph.node_scale | graph.node_sign
    hidden = ((graph.node_type == int(NodeType.HIDDEN)) & symmetric).nonzero().squeeze(1)
    if hidden.numel() == 0:
        return None
    chosen = hidden[torch.randperm(hidden.numel(), generator=gen)[:3]]
    value_edge = graph.value_edges()
    into = torch.isin(graph.edge_index[1], chosen) & graph.weight_edge_mask()
    edge_value, node_value = graph.edge_value.clone(), graph.node_value.clone()
    on = into[value_edge]
    for n in chosen.tolist():
        mine = on & (graph.edge_index[1][value_edge] == n)
        total = (edge_value[mine].double().square().sum()
                 + node_value[n, 0].double().square()).sqrt().clamp_min(1e-30)
        edge_value[mine] = (edge_value[mine].double() * norm / total).to(edge_value.dtype)
        node_value[n, 0] = (node_value[n, 0].double() * norm / total).to(node_value.dtype)
    return graph.with_values(edge_value, node_value)


def _networks(splits):
    nets = [g for kind in ("hetero", "cnn") for g in splits[kind]]
    collapsed = [_collapse(g, norm, i) for i, g in enumerate(nets) for norm in (1e-7, 1e-9)]
    return nets + [c for c in collapsed if c is not None]


def _net(mode: str, prior_on=None, **options):
    """A metanet moved away from initialisation; ``prior_on``: networks to fit a tree prior on
    (the zoos' training networks, as a run fits it; targets: a random function of the
    statistics; small leaves, so many thresholds); ``options``: more ``MetaNet`` options."""
    torch.manual_seed(0)
    net = models.MetaNet(mode=mode, hidden=16, layers=2, prior=prior_on is not None,
                         prior_link="logit", **options)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from initialisation: every part of the network matters
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    if prior_on is not None:
        _fit_deep_prior(net.prior, prior_on)
    return net.eval()


def _fit_deep_prior(prior, nets) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    from paramgraph.tasks.prior import export_trees

    batch, st = models.prepare(Batch.from_data_list(nets))
    x = prior.features(st, batch.edge_value, batch.node_value, batch.node_mask).numpy()
    rng = np.random.default_rng(0)
    y = 1 / (1 + np.exp(-np.tanh(x) @ rng.normal(size=x.shape[1])))
    for k in range(prior.folds):
        model = HistGradientBoostingRegressor(min_samples_leaf=2, random_state=k).fit(x, y)
        trees, base = export_trees(model)
        prior.load_fold(k, [{n: torch.as_tensor(v) for n, v in t.items()} for t in trees], base)


def _largest_change(mode: str, nets, prior_on=None, **options) -> float:
    objective = get_objective("generalization")
    net = _net(mode, prior_on, **options)
    gen = torch.Generator().manual_seed(2)
    worst = 0.0
    with torch.no_grad():
        for draw in range(2):
            moved = [paramgraph.random_symmetry(g, generator=gen, heads=mode != "strict",
                                                scale_range=(1e-2, 1e2)) for g in nets]
            a = objective.predict(net, *models.prepare(Batch.from_data_list(nets)))
            b = objective.predict(net, *models.prepare(Batch.from_data_list(moved)))
            worst = max(worst, float((a - b).abs().max()))
    return worst


def test_splits_hold_collapsed_and_float32_networks(splits):
    nets = _networks(splits)
    assert len(splits["hetero"]) >= 4 and len(splits["cnn"]) >= 4
    vits = sum(bool((g.node_type == int(NodeType.ATTN_Q)).any()) for g in splits["hetero"])
    assert vits >= 1
    assert all(g.edge_value.dtype == torch.float32 for g in nets)
    plain = len(splits["hetero"]) + len(splits["cnn"])
    # collapsed copies of most networks (GELU ViTs have no scalable or sign-symmetric neuron)
    assert len(nets) - plain >= plain - vits


@pytest.mark.parametrize("prior", [False, True], ids=["gnn", "with-prior"])
@pytest.mark.parametrize("mode", ["quasi", "strict"])
def test_every_test_network_predicts_the_same_after_a_symmetry(splits, mode, prior):
    prior_on = splits["train"] if prior else None
    assert _largest_change(mode, _networks(splits), prior_on) <= TOLERANCE


# the options that add inputs to quasi's invariant head (README, "Where the gauge pays")
OPTIONS = {"frames": dict(gauge_frames=("balanced/bias", "balanced/incoming", "unit/bias")),
           "stacked-prior": dict(prior_input=True)}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_quasi_options_stay_invariant_on_every_test_network(splits, option):
    assert _largest_change("quasi", _networks(splits), splits["train"],
                           **OPTIONS[option]) <= TOLERANCE


@pytest.mark.parametrize("prior", [False, True], ids=["gnn", "with-prior"])
def test_control_perm_metanet_moves(splits, prior):
    assert _largest_change("perm", _networks(splits), splits["train"] if prior else None) > 1e-3
