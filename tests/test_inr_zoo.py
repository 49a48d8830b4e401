"""The inr zoo of deformed digit views (issue 11): views are deterministic and deformed, the
splits hold out whole digits, the rows record fit and movement truthfully; the edits; output
channel expansion decodes into one wider SIREN whose output is exactly the copies' average, and
`paramgraph edit` writes it as one loadable checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

import paramgraph
from paramgraph import models
from paramgraph.tasks import zoo as zoo_module
from paramgraph.tasks.errors import TaskError, ZooError
from paramgraph.tasks.expansion import decode_siren, siren_outputs, widen_spec
from paramgraph.tasks.inr import Siren, dilate, grid, init_params, movement
from paramgraph.tasks.inr_edits import EDITS, translate, zoo_images
from paramgraph.tasks.inr_images import deform, view_images, view_of
from paramgraph.tasks.objectives import get_objective
from paramgraph.tasks.zoo import make_zoo

DIGITS = 5  # the test zoo pretends there are 5 source digits, so 15 networks hold 3 views each


@pytest.fixture(scope="module")
def views_zoo(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zoo_module, "NUM_IMAGES", DIGITS)
        return make_zoo(tmp_path_factory.mktemp("views") / "zoo", "inr", 15, seed=7,
                        inr_steps=25, inr_hidden=[8, 8], inr_side=12, inr_init="independent",
                        progress=False)


# -- views ----------------------------------------------------------------------------------------

def test_views_are_deterministic_deformed_and_in_range():
    pairs = [(3, 0), (3, 1), (4, 0)]
    a, b = view_images(0, pairs, 16), view_images(0, pairs, 16)
    assert a.shape == (3, 256) and np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert not np.allclose(a[0], a[1])  # two views of one digit differ
    assert not np.array_equal(a, view_images(1, pairs, 16))  # and depend on the zoo seed
    from paramgraph.tasks.digits import images

    plain = deform(images()[0][3].numpy(), None, 16).reshape(-1)
    assert not np.allclose(a[0], plain, atol=1e-3)  # moved, not only upsampled
    # ... but still the same digit: far closer to its own upsampling than to another digit's
    other = deform(images()[0][4].numpy(), None, 16).reshape(-1)
    assert np.abs(a[0] - plain).mean() < np.abs(a[0] - other).mean()


def test_networks_walk_every_digit_before_a_second_view():
    assert [view_of(i, 5) for i in (0, 4, 5, 11)] == [(0, 0), (4, 0), (0, 1), (1, 2)]


def test_splits_hold_out_whole_digits(views_zoo):
    rows = views_zoo.rows
    assert sorted({(r["image_index"], r["view"]) for r in rows}) == \
        [(d, v) for d in range(DIGITS) for v in range(3)]
    digits = {name: {rows[i]["image_index"] for i in views_zoo.split(name)}
              for name in ("train", "val", "test")}
    assert digits["test"] and digits["train"]
    assert not digits["test"] & digits["train"] and not digits["val"] & digits["train"]
    assert not digits["test"] & digits["val"]


def test_rows_record_the_fit_and_the_movement_from_init(views_zoo):
    images = zoo_images(views_zoo)
    assert images.shape == (15, 144)
    for i in (0, 7, 14):
        row = views_zoo.rows[i]
        with torch.no_grad():
            out = views_zoo.model(i)(grid(12)).squeeze(1)
        assert float((out - images[i]).pow(2).mean()) == pytest.approx(row["fit_mse"], rel=1e-3)
        state = views_zoo.state_dict(i)
        start = init_params([8, 8], [row["seed"]])
        end = [v.unsqueeze(0) for v in state.values()]
        assert float(movement(start, end)[0]) == pytest.approx(row["init_distance"], rel=1e-4)
        assert row["init_distance"] > 0.01  # the fit did move it


def test_inr_zoo_size_limit_and_side(tmp_path):
    with pytest.raises(ZooError, match="at most 32 views"):
        make_zoo(tmp_path / "big", "inr", 1797 * 32 + 1, progress=False)
    make_zoo(tmp_path / "s", "inr", 2, inr_steps=2, inr_side=8, progress=False)
    with pytest.raises(ZooError, match="inr_side"):  # the resolution cannot change on resume
        make_zoo(tmp_path / "s", "inr", 2, inr_steps=2, inr_side=10, progress=False)


# -- edits ----------------------------------------------------------------------------------------

def test_translate_moves_down_right_with_zeros_coming_in():
    img = np.zeros((1, 16, 16), dtype=np.float32)
    img[0, 5, 6] = 1.0
    img[0, 15, 15] = 0.5  # leaves the image
    out = translate(img.reshape(1, -1)).view(16, 16)
    expected = np.zeros((16, 16), dtype=np.float32)
    expected[7, 8] = 1.0
    assert np.array_equal(out.numpy(), expected)


def test_dilation_reaches_further_at_higher_resolution():
    img = np.zeros((1, 32, 32), dtype=np.float32)
    img[0, 10, 10] = 1.0
    out = dilate(img.reshape(1, -1)).view(32, 32)
    assert out[10, 12] == 1.0 and out[10, 13] == 0.0 and out[11, 11] == 0.0


def test_inr_edit_targets_are_the_edited_views(views_zoo):
    base = zoo_images(views_zoo)
    for name, edit in EDITS.items():
        task = get_objective("inr-edit", name).fitted(views_zoo, views_zoo.split("train"))
        assert task.side == 12 and task.state() == {"side": 12}
        assert torch.equal(task.targets(views_zoo), edit(base))
    with pytest.raises(TaskError, match="dilate, translate"):
        get_objective("inr-edit", "rotate")


# -- output channel expansion ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["quasi", "perm", "strict"])
def test_the_wide_siren_computes_the_average_of_the_copies(mode):
    torch.manual_seed(0)
    hidden, k = [6, 5], 4
    nets = [Siren(hidden) for _ in range(3)]
    graphs = [paramgraph.from_module(n, torch.zeros(2, 2)) for n in nets]
    metanet = models.MetaNet(mode=mode, task="weights", hidden=8, layers=1, copies=k)
    with torch.no_grad():
        outs = metanet(Batch.from_data_list(graphs))
        average = siren_outputs(outs, hidden, 10)
    assert isinstance(outs, list) and len(outs) == k
    for j in range(3):
        states = [paramgraph.to_state_dict(o.to_data_list()[j]) for o in outs]
        assert any(not torch.equal(states[0][n], states[1][n]) for n in states[0])  # copies differ
        wide = Siren([k * h for h in hidden])
        wide.load_state_dict(decode_siren(states, hidden))  # strict: every tensor, right shapes
        with torch.no_grad():
            assert torch.allclose(wide(grid(10)).squeeze(1), average[j], atol=1e-5, rtol=1e-5)


def test_expansion_needs_a_weight_head_and_a_siren():
    with pytest.raises(ValueError, match="weight head"):
        models.MetaNet(task="invariant", copies=2)
    with pytest.raises(TaskError, match="SIRENs only"):
        widen_spec({"family": "mlp", "hidden": [8]}, 2)


def test_edit_writes_one_wide_checkpoint_of_the_average(views_zoo, tmp_path):
    from paramgraph.tasks.edit import edit_path, zoo_spec_of
    from paramgraph.tasks.train import TrainConfig, load_run, train

    run = tmp_path / "run"
    train(TrainConfig(task="inr-edit", zoo=str(views_zoo.root), target="translate", hidden=8,
                      layers=1, epochs=1, batch_size=4, model_kwargs={"copies": 3}),
          run, threads=1, progress=False)
    (result,) = edit_path(run, views_zoo.path(2), tmp_path / "edited.safetensors")
    assert result["changed"] > 0
    spec = zoo_spec_of(tmp_path / "edited.safetensors")
    assert spec["hidden"] == [24, 24]
    from paramgraph.tasks.archs import build_model
    from paramgraph.tasks.io import load_safetensors

    wide = build_model(spec)
    wide.load_state_dict(load_safetensors(tmp_path / "edited.safetensors"))
    _, objective, net, _ = load_run(run)
    graph = paramgraph.from_module(views_zoo.model(2), torch.zeros(2, 2))
    with torch.no_grad():
        expected = siren_outputs(net(Batch.from_data_list([graph])), [8, 8], objective.side)[0]
        assert torch.allclose(wide(grid(12)).squeeze(1), expected, atol=1e-5)
    # a plain checkpoint with --arch: the widths come from --arch-kwargs, widened likewise
    from safetensors.torch import save_file

    save_file(views_zoo.state_dict(2), str(tmp_path / "plain.safetensors"))
    edit_path(run, tmp_path / "plain.safetensors", tmp_path / "o.safetensors",
              arch="paramgraph.tasks.inr:Siren", arch_kwargs={"hidden": [8, 8]},
              input_shape=(2, 2))
    other = Siren([24, 24])
    other.load_state_dict(load_safetensors(tmp_path / "o.safetensors"))
    with torch.no_grad():
        assert torch.allclose(other(grid(12)).squeeze(1), expected, atol=1e-5)


# -- probe features (each neuron's values at fixed coordinates) -----------------------------------

def _sirens(count=3, hidden=(8, 8)):
    torch.manual_seed(0)
    mods = [Siren(list(hidden)).double() for _ in range(count)]
    return mods, [paramgraph.from_module(m, torch.zeros(5, 2, dtype=torch.float64)) for m in mods]


def test_siren_probes_are_every_neurons_values():
    from paramgraph.tasks.inr import siren_probes

    mods, gs = _sirens()
    batch = Batch.from_data_list(gs)
    coords = grid(4).double()
    probes = siren_probes(batch, [8, 8], coords)
    assert probes.shape == (batch.num_nodes, 16)
    for k, (module, g) in enumerate(zip(mods, gs)):
        seen = {}
        hooks = [module.net[i].register_forward_hook(
            lambda _m, _i, out, i=i: seen.__setitem__(i, out)) for i in (1, 3, 4)]
        module(coords)
        for h in hooks:
            h.remove()
        rows = probes[batch.ptr[k]:batch.ptr[k + 1]]
        want = torch.cat([coords.t(), seen[1].t(), seen[3].t(), seen[4].t()])  # inputs first
        assert g.num_nodes == want.shape[0]
        order = [g.segments["net.0.bias"].start, g.segments["net.2.bias"].start,
                 g.segments["net.4.bias"].start]
        assert order == [2, 10, 18]  # the converter's node order: inputs, layer 1, 2, output
        assert torch.allclose(rows, want, atol=1e-12)


@pytest.mark.parametrize("output_readout", [False, True])
def test_quasi_with_probes_is_invariant_perm_is_not(output_readout):
    """quasi moves the probes with each neuron's gauge factor (sign flips of the sines), so
    its output stays put under the SIRENs' group, with or without the readout of the output
    neuron; perm's moves (the control)."""
    from paramgraph.tasks.inr import siren_probes

    _, gs = _sirens()
    coords = grid(4)
    gen = torch.Generator().manual_seed(1)
    moved = [paramgraph.random_symmetry(g, generator=gen) for g in gs]
    assert not torch.equal(moved[0].edge_value, gs[0].edge_value)
    change = {}
    for mode in ("quasi", "perm"):
        net = models.MetaNet(mode=mode, hidden=16, layers=2, probes=16,
                             output_readout=output_readout).double()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
            outs = [net(b, probes=siren_probes(b, [8, 8], coords))
                    for b in (Batch.from_data_list(gs), Batch.from_data_list(moved))]
        change[mode] = float((outs[0] - outs[1]).abs().max())
    assert change["quasi"] < 1e-9 and change["perm"] > 1e-3, change


def test_the_output_readout_reads_the_output_neurons_alone():
    """The head's extra input is the mean of each graph's output neurons' features (a SIREN
    has one: its features themselves); another neuron's features do not reach it."""
    from paramgraph.models.heads import InvariantHead
    from paramgraph.models.structure import GraphStructure
    from paramgraph.types import NodeType

    _, gs = _sirens(2)
    st = GraphStructure.of(Batch.from_data_list(gs))
    head = InvariantHead(4, 3, 8, 1, output_readout=True).double()
    seen = []
    head.mlp[0].register_forward_hook(lambda _m, inp, _o: seen.append(inp[0][:, -4:].clone()))
    h = torch.randn(st.num_nodes, 4, dtype=torch.float64)
    e = torch.randn(st.num_edges, 3, dtype=torch.float64)
    head(st, h, e)
    out = (st.node_type == int(NodeType.OUTPUT)).nonzero().squeeze(1)
    assert out.numel() == 2  # one output neuron per SIREN
    assert torch.equal(seen[0], h[out])
    hidden = h.clone()
    hidden[0] += 5.0  # an input neuron of the first SIREN
    head(st, hidden, e)
    assert torch.equal(seen[1], seen[0])
    # control: without the readout the head's input is narrower and holds no such block
    assert InvariantHead(4, 3, 8, 1).mlp[0].in_features == 2 * 4 + 2 * 3


def test_probe_features_are_checked():
    _, gs = _sirens(1)
    batch = Batch.from_data_list(gs)
    with pytest.raises(ValueError, match="probe features need mode perm or quasi"):
        models.MetaNet(mode="strict", probes=16)
    net = models.MetaNet(mode="perm", hidden=8, layers=1, probes=16).double()
    with pytest.raises(ValueError, match="reads 16 probe features"):
        net(batch)
    with pytest.raises(ValueError, match="width 9"):
        net(batch, probes=torch.zeros(batch.num_nodes, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="built with probes=0"):
        models.MetaNet(mode="perm", hidden=8, layers=1).double()(
            batch, probes=torch.zeros(batch.num_nodes, 16, dtype=torch.float64))
    with pytest.raises(TaskError, match="square number"):
        get_objective("inr-class").probe_features(batch, [8, 8], 10)
    with pytest.raises(TaskError, match="no probe features"):
        get_objective("generalization").probe_features(batch, None, 16)


def test_inr_class_defaults_to_probes_and_the_output_readout(views_zoo, tmp_path):
    """A run's config records the task's metanet defaults; --probes 0 and --no-output-readout
    switch them off; strict (which cannot read probes) gets none."""
    import json

    from paramgraph.tasks.cli import main

    common = ["--task", "inr-class", "--zoo", str(views_zoo.root), "--hidden", "8", "--layers",
              "1", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--no-progress"]
    kwargs = {}
    for name, extra in (("quasi", ["--mode", "quasi"]), ("off", ["--mode", "perm", "--probes", "0"]),
                        ("strict", ["--mode", "strict"]),
                        ("bare", ["--mode", "perm", "--probes", "0", "--no-output-readout"])):
        assert main(["train", *common, *extra, "--out", str(tmp_path / name)]) == 0
        kwargs[name] = json.loads((tmp_path / name / "config.json").read_text())["config"][
            "model_kwargs"]
    soft = {"soft_signs": True}  # inr-class was measured with soft signs and keeps them
    assert kwargs == {"quasi": {"probes": 64, "output_readout": True, **soft},
                      "off": {"probes": 0, "output_readout": True, **soft}, "strict": {},
                      "bare": {"probes": 0, "output_readout": False, **soft}}


def test_the_rendered_baseline_reads_what_each_siren_draws(views_zoo, capsys):
    from paramgraph.tasks.baseline import FEATURE_SETS, rendered_features
    from paramgraph.tasks.cli import main

    assert FEATURE_SETS["rendered"] is rendered_features
    x = rendered_features(views_zoo, [0, 3], side=8)
    assert x.shape == (2, 64)
    for row, i in zip(x, (0, 3)):
        siren = Siren([8, 8]).double()
        siren.load_state_dict({k: v.double() for k, v in views_zoo.state_dict(i).items()})
        with torch.no_grad():
            want = siren(grid(8).double()).squeeze(1).numpy()
        assert np.allclose(row, want, atol=1e-12)
    args = ["baseline", "--task", "inr-class", "--zoo", str(views_zoo.root), "--features"]
    assert main([*args, "rendered"]) == 0
    assert "rendered baseline, inr-class" in capsys.readouterr().out
    assert main([*args, "pixels"]) == 2
    assert "unknown --features 'pixels' (known: statistics, rendered)" in capsys.readouterr().err


def test_an_inr_run_with_probes_trains_and_predicts(views_zoo, tmp_path):
    from paramgraph.tasks.cli import main
    from paramgraph.tasks.train import evaluate_run

    run = tmp_path / "run"
    assert main(["train", "--task", "inr-class", "--zoo", str(views_zoo.root), "--mode", "quasi",
                 "--probes", "16", "--hidden", "8", "--layers", "1", "--epochs", "1",
                 "--batch-size", "4", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    assert evaluate_run(run, "test")["metrics"]["accuracy"] >= 0.0
