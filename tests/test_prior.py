"""The metanet's tree prior: its trees predict what scikit-learn's do, it is cross-fitted by
training run, a training network gets its out-of-fold prediction, it is exactly invariant in
quasi and strict mode (control: perm's moves), and a run with it saves, reloads and evaluates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from torch_geometric.data import Batch

import paramgraph
from paramgraph import models
from paramgraph.models.prior import PRIOR_LINKS, TreePrior
from paramgraph.tasks.data import ZooDataset, load_graphs
from paramgraph.tasks.errors import TaskError
from paramgraph.tasks.prior import export_trees, fit_prior, run_folds
from paramgraph.tasks.train import TrainConfig, evaluate_run, load_run, train
from paramgraph.tasks.zoo import make_zoo
from script_loader import load_script

TINY = dict(hidden=16, layers=2, batch_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    # 12 runs of 4 checkpoints: enough training runs for 5 folds
    return make_zoo(tmp_path_factory.mktemp("zoo") / "cnn", "cnn", 48, seed=9, progress=False)


def _load(prior: TreePrior, x: np.ndarray, y: np.ndarray, **hgb) -> list:
    """Fit one ensemble per fold on ``x``, ``y`` (deep trees: many thresholds) and load them."""
    fitted = []
    for k in range(prior.folds):
        model = HistGradientBoostingRegressor(random_state=k, min_samples_leaf=2, **hgb)
        model.fit(x, y + 0.01 * k)
        prior.load_fold(k, [{n: torch.as_tensor(v) for n, v in t.items()}
                            for t in export_trees(model)[0]], export_trees(model)[1])
        fitted.append(model)
    return fitted


def test_the_trees_predict_what_scikit_learn_predicts():
    gen = np.random.default_rng(0)
    x = gen.normal(size=(300, 6)) * np.array([1, 10, 1e-3, 1, 1, 100])
    y = np.sin(x[:, 0]) + (x[:, 1] > 3) + gen.normal(size=300) * 0.1
    x[gen.random(x.shape) < 0.05] = np.nan  # missing values go where training sent them
    prior = TreePrior(None)
    fitted = _load(prior, x, y)
    probe = gen.normal(size=(500, 6)) * np.array([1, 10, 1e-3, 1, 1, 100])
    probe[gen.random(probe.shape) < 0.05] = np.nan
    mine = prior.ensembles(torch.as_tensor(probe)).numpy()
    for k, model in enumerate(fitted):
        np.testing.assert_allclose(mine[k], model.predict(probe), rtol=0, atol=1e-12)
    # net.float() must not round the thresholds (they are kept as int64 bit patterns)
    prior.float()
    np.testing.assert_allclose(prior.ensembles(torch.as_tensor(probe)).numpy()[0],
                               fitted[0].predict(probe), rtol=0, atol=1e-12)
    # control: an ensemble loaded with rounded thresholds predicts differently somewhere
    rounded = TreePrior(None)
    model = fitted[0]
    trees, base = export_trees(model)
    for t in trees:
        t["threshold"] = t["threshold"].astype(np.float16).astype(np.float64)
    for k in range(rounded.folds):
        rounded.load_fold(k, [{n: torch.as_tensor(v) for n, v in t.items()} for t in trees],
                          base)
    assert not np.allclose(rounded.ensembles(torch.as_tensor(probe)).numpy()[0],
                           model.predict(probe), rtol=0, atol=1e-12)


def test_too_many_trees_or_nodes_are_refused():
    prior = TreePrior(None, trees=2, nodes=3)
    x = np.random.default_rng(1).normal(size=(200, 3))
    model = HistGradientBoostingRegressor(max_iter=3, min_samples_leaf=2).fit(x, x[:, 0])
    trees, base = export_trees(model)
    with pytest.raises(ValueError, match="3 trees; the prior holds at most 2"):
        prior.load_fold(0, [{n: torch.as_tensor(v) for n, v in t.items()} for t in trees], base)
    with pytest.raises(ValueError, match="nodes; the prior holds at most 3"):
        prior.load_fold(0, [{n: torch.as_tensor(v) for n, v in t.items()}
                            for t in trees[:2]], base)


def test_folds_hold_whole_runs_and_need_enough_of_them():
    runs = [r for r in range(12) for _ in range(4)]
    folds = run_folds(runs, 5, seed=3)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    for r in range(12):
        assert len({int(f) for f, rr in zip(folds, runs) if rr == r}) == 1
    assert not np.array_equal(folds, run_folds(runs, 5, seed=4))  # the seed deals them
    assert sorted(set(run_folds([0, 0, 1, 2], 5, seed=0).tolist())) == [0, 1, 2]  # few runs
    with pytest.raises(TaskError, match="the training split has 1 run: .* --no-prior"):
        run_folds([7, 7, 7], 5, seed=0)


def test_links_invert_the_heads_outputs():
    p = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(torch.sigmoid(PRIOR_LINKS["logit"](p)), p)
    assert torch.equal(PRIOR_LINKS["identity"](p), p)
    with pytest.raises(ValueError, match="unknown prior link 'probit'"):
        TreePrior(None, "probit")


def _batch(zoo, ids):
    graphs = load_graphs(zoo, progress=False)
    return Batch.from_data_list([graphs[i] for i in ids])


def _fitted_net(mode: str, zoo) -> models.MetaNet:
    torch.manual_seed(0)
    net = models.MetaNet(mode=mode, hidden=16, layers=2, prior=True, prior_link="logit").eval()
    ds = ZooDataset(zoo, None, "test_acc", progress=False)
    y = np.array([r["test_acc"] for r in zoo.rows])
    fit_prior(net, ds, y, [r["run"] for r in zoo.rows], seed=0)
    return net


def test_an_unfitted_prior_adds_nothing_and_offsets_replace_the_trees(zoo):
    batch = _batch(zoo, range(8))
    torch.manual_seed(0)
    bare = models.MetaNet(mode="quasi", hidden=16, layers=2).eval()
    torch.manual_seed(0)
    with_prior = models.MetaNet(mode="quasi", hidden=16, layers=2, prior=True).eval()
    with torch.no_grad():
        assert torch.equal(bare(batch), with_prior(batch))
        net = _fitted_net("quasi", zoo)
        trees = net(batch)
        batch.prior_offset = torch.full((8,), 0.5, dtype=torch.float64)
        head = net(batch)  # logit(0.5) = 0: the head's output alone
        del batch.prior_offset
    net.prior.fitted.zero_()
    with torch.no_grad():
        assert torch.allclose(head, net(batch), atol=1e-6)
        assert not torch.allclose(trees, head, atol=1e-3)
    with pytest.raises(ValueError, match="a tree prior needs the invariant head"):
        models.MetaNet(task="weights", prior=True)


def test_a_fitted_prior_is_invariant_in_quasi_and_strict_mode_only(zoo):
    """The prior alone, on every network of the zoo: exact (1e-9) under random
    function-preserving permutations, scales and sign flips in quasi and strict mode, and the
    whole metanet within the invariance tolerance; control: perm's prior (raw statistics)
    moves."""
    graphs = load_graphs(zoo, progress=False)
    gen = torch.Generator().manual_seed(5)
    moved = [paramgraph.random_symmetry(g, generator=gen, scale_range=(1e-2, 1e2))
             for g in graphs]
    a, b = Batch.from_data_list(list(graphs)), Batch.from_data_list(moved)
    change = {}
    for mode in ("quasi", "strict", "perm"):
        net = _fitted_net(mode, zoo)
        with torch.no_grad():
            pa, pb = (net.prior(*_prior_args(x)) for x in (a, b))
            change[mode] = float((pa - pb).abs().max())
            if mode != "perm":
                out = (net(a) - net(b)).abs().max()
                assert float(out) <= 1e-5
    assert change["quasi"] <= 1e-9 and change["strict"] <= 1e-9
    assert change["perm"] > 1e-2


def _prior_args(batch):
    batch, st = models.prepare(batch)
    return st, batch.edge_value, batch.node_value, batch.node_mask


def test_a_run_with_a_prior_trains_saves_and_evaluates(zoo, tmp_path, capsys):
    from paramgraph.tasks.cli import main

    cfg = TrainConfig(task="generalization", zoo=str(zoo.root), mode="quasi", epochs=2,
                      model_kwargs={"prior": True}, **TINY)
    train(cfg, tmp_path / "run", threads=1, progress=False)
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["config"]["model_kwargs"]["prior"] is True
    assert set(info["prior_fit"]["out_of_fold"]) == {"kendall_tau", "r2", "mse"}
    _, objective, net, _ = load_run(tmp_path / "run")
    assert bool(net.prior.fitted.all())  # the trees are in the saved metanet
    result = evaluate_run(tmp_path / "run", "test", threads=1)
    assert set(result["prior_only"]) == {"kendall_tau", "r2", "mse"}
    assert result["prior_only"] != result["metrics"]
    ev = json.loads((tmp_path / "run" / "eval-test.json").read_text())
    ds = ZooDataset(zoo, "test", "test_acc", progress=False)
    with torch.no_grad():
        pred = objective.predict(net, *models.prepare(Batch.from_data_list(list(ds))))
    np.testing.assert_allclose(ev["pred"], pred.numpy(), atol=1e-6)
    from paramgraph.tasks.prior import prior_predictions

    np.testing.assert_allclose(ev["prior_pred"], prior_predictions(net.prior, ds), atol=1e-12)
    # scripts/probe_prior.py reads the same file: the run's scores, per seed
    probe = load_script("probe_prior")
    assert probe.method_runs(tmp_path, "run", "test") == {}  # not a METHOD-sSEED run dir
    effect = probe.gnn_effect(**probe.predictions(ev))
    tau, trees = result["metrics"]["kendall_tau"], result["prior_only"]["kendall_tau"]
    assert effect["tau"] == pytest.approx(tau, abs=1e-9, nan_ok=True)
    assert effect["trees"] == pytest.approx(trees, abs=1e-9, nan_ok=True)
    # the command line takes it; a task without one number per network refuses it in one line
    assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--prior",
                 "--epochs", "1", "--hidden", "16", "--layers", "2", "--threads", "1",
                 "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    inr = make_zoo(tmp_path / "inr", "inr", 12, seed=1, progress=False)
    status = main(["train", "--task", "inr-class", "--zoo", str(inr.root), "--prior",
                   "--epochs", "1", "--no-progress", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert status != 0 and "--prior is made for tasks that predict one number" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_training_networks_get_their_out_of_fold_prediction(zoo):
    """Fold k's trees never saw fold k's networks; the offsets are their predictions."""
    net = _fitted_net("strict", zoo)
    ds = ZooDataset(zoo, None, "test_acc", progress=False)
    y = np.array([r["test_acc"] for r in zoo.rows])
    fit = fit_prior(net, ds, y, [r["run"] for r in zoo.rows], seed=0)
    from paramgraph.tasks.prior import prior_features

    x = torch.as_tensor(prior_features(net.prior, ds))
    per_fold = net.prior.ensembles(x).numpy()
    np.testing.assert_allclose(fit.offsets, per_fold[fit.folds, np.arange(len(y))], atol=1e-12)
    # in-fold predictions fit their own targets better than out-of-fold ones (what cross-fitting
    # avoids handing to the GNN)
    inside = np.abs(per_fold.mean(0) - y).mean()
    assert inside < np.abs(fit.offsets - y).mean()


def test_a_training_split_of_few_runs_fits_as_many_folds(zoo):
    """Three runs: three folds fitted, and the prior is the mean of those three."""
    ids = [r["id"] for r in zoo.rows if r["run"] in sorted({r["run"] for r in zoo.rows})[:3]]
    ds = ZooDataset(zoo, None, "test_acc", progress=False)
    ds.ids = ids
    torch.manual_seed(0)
    net = models.MetaNet(mode="quasi", hidden=16, layers=2, prior=True).eval()
    y = np.array([zoo.rows[i]["test_acc"] for i in ids])
    fit_prior(net, ds, y, [zoo.rows[i]["run"] for i in ids], seed=0)
    assert net.prior.fitted.tolist() == [True, True, True, False, False]
    from paramgraph.tasks.prior import prior_features

    x = torch.as_tensor(prior_features(net.prior, ds))
    np.testing.assert_allclose(net.prior.mean_prediction(x).numpy(),
                               net.prior.ensembles(x)[:3].mean(0).numpy(), atol=1e-12)


def test_probe_prior_measures_what_the_gnn_adds_to_the_trees():
    """scripts/probe_prior.py: a GNN that adds nothing shifts nothing; one that moves every
    prediction onto the truth correlates 1 with the trees' residual and removes all of its
    error; one that moves at random removes none (the control)."""
    probe = load_script("probe_prior")
    rng = np.random.default_rng(0)
    true = rng.uniform(0.1, 0.9, 200)
    prior = true + rng.normal(0, 0.1, 200)
    nothing = probe.gnn_effect(prior.copy(), prior, true)
    assert nothing["shift"] == 0.0 and nothing["corr"] == 0.0 and nothing["mse_gain"] == 0.0
    assert nothing["tau"] == nothing["trees"]
    perfect = probe.gnn_effect(true.copy(), prior, true)
    assert perfect["corr"] == pytest.approx(1.0) and perfect["mse_gain"] == pytest.approx(1.0)
    noise = probe.gnn_effect(prior + rng.normal(0, 0.1, 200), prior, true)
    assert abs(noise["corr"]) < 0.2 and noise["mse_gain"] < 0
