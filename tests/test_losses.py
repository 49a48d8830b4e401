"""The pairwise rank term (``--rank-loss``): its formula, its units, and that training uses it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from paramgraph.tasks.errors import TaskError
from paramgraph.tasks.losses import pairwise_rank_loss
from paramgraph.tasks.objectives import get_objective


def _by_hand(pred, y):
    """The module docstring's sum, pair by pair."""
    n = len(y)
    spread = float(torch.tensor(y, dtype=torch.float64).std())
    terms = [math.log1p(math.exp(-math.copysign(1, y[i] - y[j]) * (pred[i] - pred[j])
                                 / (spread / 2)))
             for i in range(n) for j in range(n) if y[i] != y[j]]
    return spread ** 2 * sum(terms) / len(terms)


def test_rank_term_follows_its_formula():
    pred, y = [0.3, 0.1, 0.5, 0.2], [0.4, 0.1, 0.9, 0.4]  # one tied pair: left out
    got = pairwise_rank_loss(torch.tensor(pred, dtype=torch.float64),
                             torch.tensor(y, dtype=torch.float64))
    assert float(got) == pytest.approx(_by_hand(pred, y), rel=1e-12)


def test_rank_term_rewards_order_not_values():
    y = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ordered = pairwise_rank_loss(torch.tensor([0.0, 1.0, 2.0, 3.0]), y)
    reversed_ = pairwise_rank_loss(torch.tensor([3.0, 2.0, 1.0, 0.0]), y)
    assert ordered < 0.01 * float(y.var()) < float(y.var()) < reversed_
    # a constant prediction: log 2 in units of the targets' variance, whatever their unit
    for scale in (1.0, 1e3):
        flat = pairwise_rank_loss(torch.zeros(4), y * scale)
        assert float(flat) == pytest.approx(math.log(2) * float((y * scale).var()), rel=1e-6)
    # without two distinct targets there is no pair, and the gradient is zero, not NaN
    p = torch.tensor([0.2, 0.7], requires_grad=True)
    loss = pairwise_rank_loss(p, torch.tensor([0.5, 0.5]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(p.grad, torch.zeros(2))


def test_objectives_add_the_rank_term_where_they_are_ranked():
    pred, y = torch.tensor([0.6, 0.2, 0.4]), torch.tensor([0.1, 0.5, 0.3])
    gen = get_objective("generalization")
    assert torch.equal(gen.training_loss(pred, y), gen.loss(pred, y))  # off unless asked
    ranked = gen.with_rank_loss(2.0)
    assert gen.rank_weight == 0.0  # a copy: the registered objective is unchanged
    assert float(ranked.training_loss(pred, y)) == pytest.approx(
        float(gen.loss(pred, y) + 2.0 * pairwise_rank_loss(pred, y)))
    # regression's squared error is in units of the training targets' variance: so is the term
    reg = get_objective("regression", "acc").restored({"mean": 0.0, "std": 0.5})
    assert float(reg.with_rank_loss(1.0).training_loss(pred, y)) == pytest.approx(
        float(reg.loss(pred, y) + pairwise_rank_loss(pred, y) / 0.25))
    with pytest.raises(TaskError, match="--rank-loss needs a task scored by Kendall tau"):
        get_objective("inr-class").with_rank_loss(1.0)


def test_a_run_trains_with_the_rank_term(tmp_path, capsys):
    from paramgraph.tasks.cli import main
    from paramgraph.tasks.zoo import make_zoo

    zoo = make_zoo(tmp_path / "cnn", "cnn", 12, seed=3, progress=False)
    # one training run: nothing to cross-fit a tree prior on
    args = ["train", "--task", "generalization", "--zoo", str(zoo.root), "--mode", "perm",
            "--epochs", "1", "--hidden", "16", "--layers", "2", "--batch-size", "4",
            "--threads", "1", "--no-progress", "--no-prior"]
    assert main(args + ["--rank-loss", "2", "--out", str(tmp_path / "ranked")]) == 0
    assert main(args + ["--rank-loss", "0", "--out", str(tmp_path / "plain")]) == 0
    config = json.loads((tmp_path / "ranked" / "config.json").read_text())["config"]
    assert config["rank_loss"] == 2.0

    def loss(run):
        return json.loads((tmp_path / run / "metrics.json").read_text())[0]["train_loss"]

    assert loss("ranked") > loss("plain")  # the same first epoch, plus a positive term
    capsys.readouterr()
    status = main(["train", "--task", "inr-class", "--zoo", str(zoo.root), "--rank-loss", "1",
                   "--out", str(tmp_path / "bad")])
    assert status == 2 and "--rank-loss needs a task scored by Kendall tau" in \
        capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
