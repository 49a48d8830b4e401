"""Task building blocks: the SIREN convention and its batched/graph forms, dilation, the
statistics baseline, metrics, objectives, and editing checkpoints with a weight-head metanet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

import paramgraph
from paramgraph.tasks.archs import build_model
from paramgraph.tasks.baseline import K_ENDS, STATS, features, fit_predict, zoo_features
from paramgraph.tasks.errors import RunError, TaskError
from paramgraph.tasks.inr import (
    Siren,
    batched_forward,
    dilate,
    fit_sirens,
    grid,
    init_params,
    siren_forward_from_batch,
    stack,
    unstack,
)
from paramgraph.tasks.metrics import accuracy, is_better, kendall_tau, r2
from paramgraph.tasks.objectives import get_objective
from paramgraph.tasks.zoo import make_zoo


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("inr") / "zoo", "inr", 16, seed=4, inr_steps=40,
                    progress=False)


@pytest.fixture(scope="module")
def hetero_zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("het") / "zoo", "hetero", 16, seed=11,
                    progress=False)


# -- SIRENs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", [[32, 32], [32, 32, 32]])
def test_batched_sirens_equal_the_module(hidden):
    params = init_params(hidden, [3, 4, 5])
    coords = grid()
    out = batched_forward(params, coords)
    for j in range(3):
        m = Siren(hidden)
        m.load_state_dict(unstack(params, hidden, j))
        with torch.no_grad():
            assert torch.allclose(m(coords).squeeze(1), out[j], atol=1e-5)
    restacked = stack([unstack(params, hidden, j) for j in range(3)], hidden)
    assert all(torch.equal(a, b) for a, b in zip(restacked, params))  # stack inverts unstack


def test_siren_init_is_per_image_and_batch_independent():
    a = init_params([32, 32], [7, 8])
    b = init_params([32, 32], [8])
    assert all(torch.equal(x[1], y[0]) for x, y in zip(a, b))


def test_grid_is_row_major_in_minus_one_one():
    g = grid()
    assert g.shape == (64, 2)
    assert torch.equal(g[0], torch.tensor([-1.0, -1.0])) and torch.equal(g[7], torch.tensor([-1.0, 1.0]))
    assert torch.equal(g[8, 0], torch.tensor(-1.0 + 2 / 7))


def test_fitting_reduces_the_error():
    from paramgraph.tasks.digits import images

    x = images()[0][:6]
    params = init_params([32, 32], list(range(6)))
    before = (batched_forward(params, grid()) - x).pow(2).mean(1)
    _, after = fit_sirens(x, [32, 32], list(range(6)), steps=60)
    assert (after < before / 10).all()


def test_dilation_with_a_cross():
    img = np.zeros((1, 8, 8), dtype=np.float32)
    img[0, 3, 3] = 1.0
    img[0, 0, 7] = 0.5
    out = dilate(img).view(8, 8)
    expected = np.zeros((8, 8), dtype=np.float32)
    for r, c in [(3, 3), (2, 3), (4, 3), (3, 2), (3, 4)]:
        expected[r, c] = 1.0
    for r, c in [(0, 7), (1, 7), (0, 6)]:
        expected[r, c] = 0.5
    assert np.array_equal(out.numpy(), expected)


def test_siren_from_graph_values_matches_modules_and_is_differentiable(inr_zoo):
    from paramgraph.tasks.data import ZooDataset

    ds = ZooDataset(inr_zoo, None, None, progress=False)
    batch = Batch.from_data_list([ds[i] for i in (0, 3, 5)])
    batch.edge_value.requires_grad_(True)
    out = siren_forward_from_batch(batch, [32, 32])
    for row, i in enumerate((0, 3, 5)):
        with torch.no_grad():
            ref = inr_zoo.model(i)(grid()).squeeze(1)
        assert torch.allclose(out[row], ref, atol=1e-5)
    out.sum().backward()
    grad = batch.edge_value.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_siren_from_graph_rejects_other_architectures():
    g = paramgraph.from_module(Siren([16]), torch.zeros(2, 2))
    with pytest.raises(TaskError, match="SIREN"):
        siren_forward_from_batch(Batch.from_data_list([g]), [32, 32])


# -- baseline ---------------------------------------------------------------------------------------

def test_baseline_features_have_a_fixed_length_across_architectures():
    specs = [{"family": "mlp", "hidden": [8]},
             {"family": "mlp", "hidden": [64, 32, 16, 8]},
             {"family": "cnn", "channels": [8, 8, 8], "kernels": [3, 3, 5], "batch_norm": True,
              "residual": True},
             {"family": "vit", "width": 16, "layers": 2, "heads": 2, "ff": 32}]
    lengths = {features(build_model(s).state_dict(), hetero=True).shape for s in specs}
    assert lengths == {(2 * K_ENDS * (1 + STATS) + 2 * STATS + 2,)}
    # a network with fewer tensors than slots is padded, with its presence flags at zero
    small = features(build_model(specs[0]).state_dict(), hetero=True)
    assert small[0] == 1.0 and np.isfinite(small).all()


def test_baseline_statistics_are_right():
    t = torch.arange(5.0)
    f = features({"w": t.view(5, 1)}, hetero=False)
    assert np.allclose(f, [2.0, 2.0, 0.0, 1.0, 2.0, 3.0, 4.0])


def test_baseline_fits_every_task(hetero_zoo, inr_zoo):
    r = fit_predict("generalization", hetero_zoo)
    assert set(r["metrics"]) == {"kendall_tau", "r2", "mse"} and r["pred"].shape == r["true"].shape
    assert zoo_features(hetero_zoo).shape[0] == len(hetero_zoo)
    r = fit_predict("inr-class", inr_zoo)
    assert 0.0 <= r["metrics"]["accuracy"] <= 1.0 and r["pred"].shape[1] == 10
    r = fit_predict("inr-edit", inr_zoo)
    assert r["pred"].shape[1] == 16 * 16 and r["metrics"]["mse"] >= 0  # the zoo's 16x16 views
    with pytest.raises(TaskError, match="unknown task"):
        fit_predict("segmentation", inr_zoo)
    with pytest.raises(TaskError, match="test_acc"):
        fit_predict("generalization", inr_zoo)


# -- metrics and objectives ----------------------------------------------------------------------------

def test_metrics():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)
    assert r2([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert r2([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(0.0)
    assert accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), [1, 1]) == 0.5
    assert is_better("mse", 0.1, 0.2) and not is_better("kendall_tau", 0.1, 0.2)
    assert not is_better("kendall_tau", float("nan"), 0.2)


def test_objectives_are_registered_by_name_and_target():
    from paramgraph.tasks.objectives import OBJECTIVES, objective_of_target
    from paramgraph.tasks.zoo_kinds import IMPORTED, KINDS

    assert all(o.name == name for name, o in OBJECTIVES.items())
    assert all(objective_of_target(o.target) is o for o in OBJECTIVES.values() if o.target)
    assert all(set(o.zoo_kinds) <= {*KINDS, IMPORTED} for o in OBJECTIVES.values())
    with pytest.raises(TaskError, match="unknown target 'x' \\(known: test_acc, label, dilate;"):
        objective_of_target("x")


def test_objectives_check_their_zoo(hetero_zoo, inr_zoo):
    with pytest.raises(TaskError, match="unknown task"):
        get_objective("nonexistent")
    with pytest.raises(TaskError, match="needs a inr zoo"):
        get_objective("inr-class").check_zoo(hetero_zoo)
    with pytest.raises(TaskError, match="hetero or cnn"):
        get_objective("generalization").check_zoo(inr_zoo)
    get_objective("inr-edit").check_zoo(inr_zoo)


# -- editing ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def edit_run(inr_zoo, tmp_path_factory):
    from paramgraph.tasks.train import TrainConfig, train

    run = tmp_path_factory.mktemp("runs") / "edit"
    cfg = TrainConfig(task="inr-edit", zoo=str(inr_zoo.root), mode="quasi", hidden=8, layers=1,
                      epochs=1, batch_size=8, lr=5e-3)
    train(cfg, run, threads=1, progress=False)
    return run


def test_edit_writes_a_checkpoint_that_loads_and_differs(inr_zoo, edit_run, tmp_path):
    from paramgraph.tasks.edit import edit_path

    src = inr_zoo.path(2)
    out = tmp_path / "edited.safetensors"
    (result,) = edit_path(edit_run, src, out)
    assert result["changed"] > 0
    spec = inr_zoo.rows[2]["spec"]
    edited = build_model(spec)
    from safetensors.torch import load_file

    edited.load_state_dict(load_file(str(out)), strict=True)  # loads into the architecture
    original = inr_zoo.model(2)
    with torch.no_grad():
        a, b = original(grid()), edited(grid())
    assert not torch.allclose(a, b, atol=1e-4)  # the function changed
    # the edited file carries its architecture, so it can be edited again
    (again,) = edit_path(edit_run, out, tmp_path / "twice.safetensors")
    assert again["tensors"] == len(load_file(str(out)))


def test_edit_a_directory_and_through_the_cli(inr_zoo, edit_run, tmp_path, capsys):
    from paramgraph.tasks.cli import main

    outdir = tmp_path / "edited"
    assert main(["edit", "--metanet", str(edit_run), "--input", str(inr_zoo.root / "nets"),
                 "-o", str(outdir)]) == 0
    assert len(list(outdir.glob("*.safetensors"))) == len(inr_zoo)
    assert capsys.readouterr().out.count("->") == len(inr_zoo)
    # a plain checkpoint without an architecture needs --arch or --spec
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file(inr_zoo.state_dict(0), str(plain))
    assert main(["edit", "--metanet", str(edit_run), "--input", str(plain),
                 "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "carries no architecture" in capsys.readouterr().err
    spec = json.dumps(inr_zoo.rows[0]["spec"])
    assert main(["edit", "--metanet", str(edit_run), "--input", str(plain), "--spec", spec,
                 "-o", str(tmp_path / "x.safetensors")]) == 0


def test_edit_needs_a_weight_head_run(hetero_zoo, inr_zoo, tmp_path):
    from paramgraph.tasks.edit import edit_path
    from paramgraph.tasks.train import TrainConfig, train

    run = tmp_path / "cls"
    train(TrainConfig(task="inr-class", zoo=str(inr_zoo.root), hidden=8, layers=1, epochs=1),
          run, threads=1, progress=False)
    with pytest.raises(RunError, match="weight-head"):
        edit_path(run, inr_zoo.path(0), tmp_path / "o.safetensors")
    with pytest.raises(RunError, match="does not exist"):
        edit_path(tmp_path / "nope", inr_zoo.path(0), tmp_path / "o.safetensors")


def test_edit_a_plain_checkpoint_with_arch(inr_zoo, edit_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from paramgraph.tasks.edit import edit_path

    plain = tmp_path / "plain.safetensors"
    save_file(inr_zoo.state_dict(1), str(plain))
    out = tmp_path / "edited.safetensors"
    (result,) = edit_path(edit_run, plain, out, arch="paramgraph.tasks.inr:Siren",
                          arch_kwargs={"hidden": [32, 32]}, input_shape=(2, 2))
    m = Siren([32, 32])
    m.load_state_dict(load_file(str(out)), strict=True)
    assert result["changed"] > 0


def test_generalization_predictions_are_accuracies():
    class Extreme(torch.nn.Module):
        def forward(self, batch):
            return torch.tensor([[1e6], [-1e6], [0.0]])

    pred = get_objective("generalization").predict(Extreme(), None)
    assert pred.tolist() == [1.0, 0.0, 0.5]
