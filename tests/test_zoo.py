"""Zoos: every architecture converts, every zoo kind builds and reloads, splits respect runs,
generation is deterministic and resumable, the graph cache is reused and invalidated, and bad
zoos give clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import paramgraph
from paramgraph.tasks.archs import build_model, example_input
from paramgraph.tasks.data import ZooDataset, cache_path, load_graphs
from paramgraph.tasks.errors import ZooError
from paramgraph.tasks.inr import Siren
from paramgraph.tasks.zoo import (
    SMALL_CNN,
    Zoo,
    make_zoo,
    sample_cnn_spec,
    sample_hetero_spec,
)

TINY_INR_STEPS = 30


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoos")
    return {
        "hetero": make_zoo(root / "hetero", "hetero", 12, seed=1, progress=False),
        "cnn": make_zoo(root / "cnn", "cnn", 12, seed=2, progress=False),
        "inr": make_zoo(root / "inr", "inr", 12, seed=3, inr_steps=TINY_INR_STEPS,
                        progress=False),
    }


def _specs():
    rng = np.random.default_rng(0)
    specs, seen = [], set()
    for _ in range(400):  # enough draws to hit every family and cnn variant
        s = sample_hetero_spec(rng)
        key = (s["family"], s.get("batch_norm"), s.get("residual"), s.get("act"))
        if key not in seen:
            seen.add(key)
            specs.append(s)
    specs += [{**SMALL_CNN, "act": "relu"}, {**SMALL_CNN, "act": "tanh"},
              {"family": "siren", "hidden": [32, 32]}, {"family": "siren", "hidden": [32, 32, 32]},
              {"family": "vit", "width": 16, "layers": 2, "heads": 4, "ff": 32, "dropout": 0.2}]
    return specs


def test_sampler_covers_every_family_and_variant():
    kinds = {(s["family"], s.get("batch_norm"), s.get("residual")) for s in _specs()}
    assert {("mlp", None, None), ("vit", None, None)} <= kinds
    assert {("cnn", bn, res) for bn in (False, True) for res in (False, True)} <= kinds


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: json.dumps(s, sort_keys=True)[:60])
def test_every_zoo_architecture_converts_and_round_trips(spec):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = example_input(spec)
    graph = paramgraph.from_module(model, x)
    state = paramgraph.to_state_dict(graph)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(state) == list(own)
    assert all(torch.equal(state[k], own[k]) for k in own)
    # the graph's symmetry group keeps the function: the converter understood the architecture
    moved = paramgraph.random_symmetry(graph, generator=torch.Generator().manual_seed(1))
    other = paramgraph.load_into(build_model(spec), moved).eval()
    xin = torch.rand(4, *x.shape[1:]) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(xin), other(xin), atol=1e-4, rtol=1e-3)


def test_every_zoo_kind_has_one_recipe():
    from paramgraph.tasks.zoo import RECIPES
    from paramgraph.tasks.zoo_kinds import KINDS

    assert tuple(RECIPES) == KINDS
    assert all(recipe.name == kind for kind, recipe in RECIPES.items())


def test_siren_is_the_documented_convention():
    m = Siren([32, 32])
    assert [type(l).__name__ for l in m.net] == ["Linear", "Sine", "Linear", "Sine", "Linear"]
    assert m.net[1].w0 == 30.0 and m.net[3].w0 == 1.0


@pytest.mark.parametrize("kind", ["hetero", "cnn", "inr"])
def test_every_zoo_kind_builds_and_reloads(zoos, kind):
    zoo = zoos[kind]
    again = Zoo(zoo.root)
    assert len(again) == len(zoo) == zoo.manifest["size"]
    assert (zoo.root / "metadata.csv").is_file()
    for i in range(len(again)):
        row = again.rows[i]
        model = again.model(i)  # rebuilt from its spec, weights loaded strictly
        assert isinstance(model, torch.nn.Module)
        from paramgraph.tasks.io import sha256_file

        assert sha256_file(again.path(i)) == row["sha256"]
        if kind == "inr":
            assert 0 <= row["label"] <= 9 and row["fit_mse"] >= 0
            with torch.no_grad():
                from paramgraph.tasks.inr import grid

                out = model(grid(row["side"])).squeeze(1)
            from paramgraph.tasks.inr_edits import zoo_images

            target = zoo_images(again)[i]  # the deformed view it was fitted to
            assert float((out - target).pow(2).mean()) == pytest.approx(row["fit_mse"], rel=1e-3,
                                                                        abs=1e-6)
        else:
            assert 0.0 <= row["test_acc"] <= 1.0
            assert 1 <= row["epoch"] <= row["hparams"]["epochs"]
    if kind == "cnn":
        assert {json.dumps({k: v for k, v in r["spec"].items() if k not in ("act", "dropout")},
                           sort_keys=True) for r in again.rows} == {
            json.dumps({k: v for k, v in SMALL_CNN.items() if k != "dropout"}, sort_keys=True)}


def test_checkpoints_of_a_run_are_different_epochs(zoos):
    rows = zoos["hetero"].rows
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    for run_rows in by_run.values():
        assert len(run_rows) > 1
        assert len({json.dumps(r["spec"]) for r in run_rows}) == 1
        epochs = [r["epoch"] for r in run_rows]
        assert epochs == sorted(epochs)


@pytest.mark.parametrize("kind", ["hetero", "cnn", "inr"])
def test_splits_never_straddle_a_run(zoos, kind):
    zoo = zoos[kind]
    names = ("train", "val", "test")
    ids = [i for n in names for i in zoo.split(n)]
    assert sorted(ids) == list(range(len(zoo)))  # disjoint and complete
    split_of_run = {}
    for n in names:
        for i in zoo.split(n):
            split_of_run.setdefault(zoo.rows[i]["run"], set()).add(n)
    assert all(len(s) == 1 for s in split_of_run.values())
    assert all(len(zoo.split(n)) > 0 for n in names)
    if kind == "hetero":
        held = {i for i, r in enumerate(zoo.rows) if r["family"] == zoo.splits["ood_family"]}
        assert set(zoo.split("ood_test")) == held
        assert not held & set(zoo.split("ood_train") + zoo.split("ood_val"))


def test_resumed_zoo_make_matches_an_uninterrupted_one(tmp_path):
    full = make_zoo(tmp_path / "full", "hetero", 9, seed=7, workers=2, progress=False)
    part = tmp_path / "part"
    make_zoo(part, "hetero", 9, seed=7, workers=1, progress=False)
    # Simulate an interruption: a run cut off after some checkpoints, a lost row, a stray
    # temporary file, no merged table and an unfinished manifest.
    (part / "nets" / "000005.safetensors").unlink()
    (part / "rows" / "000006.json").unlink()
    (part / "rows" / "000008.json").unlink()
    (part / "nets" / ".000006.safetensors.abc.tmp").write_bytes(b"half")
    (part / "metadata.jsonl").unlink()
    manifest = json.loads((part / "zoo.json").read_text())
    (part / "zoo.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ZooError, match="unfinished"):
        Zoo(part)
    resumed = make_zoo(part, "hetero", 9, seed=7, workers=1, progress=False)
    assert (part / "metadata.jsonl").read_bytes() == (full.root / "metadata.jsonl").read_bytes()
    assert (part / "splits.json").read_bytes() == (full.root / "splits.json").read_bytes()
    for i in range(9):
        assert resumed.path(i).read_bytes() == full.path(i).read_bytes()
    # asking again is a no-op, and other settings in the same directory are refused
    assert make_zoo(part, "hetero", 9, seed=7, progress=False).fingerprint() == full.fingerprint()
    with pytest.raises(ZooError, match="seed"):
        make_zoo(part, "hetero", 9, seed=8, progress=False)


def test_zoo_seed_changes_the_zoo(tmp_path):
    a = make_zoo(tmp_path / "a", "cnn", 4, seed=1, progress=False)
    b = make_zoo(tmp_path / "b", "cnn", 4, seed=2, progress=False)
    assert a.fingerprint() != b.fingerprint()


def test_graph_cache_is_reused_and_invalidated(zoos, tmp_path, monkeypatch):
    src = zoos["cnn"].root
    root = tmp_path / "zoo"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("cache"))
    zoo = Zoo(root)
    graphs = load_graphs(zoo, progress=False)
    first = cache_path(zoo)
    assert first.is_dir() and len(graphs) == len(zoo)

    import paramgraph.tasks.data as data

    def no_conversion(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "convert_network", no_conversion)
    cached = load_graphs(Zoo(root), progress=False)
    for g, h in zip(graphs, cached):
        assert torch.equal(g.edge_value, h.edge_value) and torch.equal(g.edge_index, h.edge_index)
    monkeypatch.undo()

    # the zoo changes (a checkpoint is replaced and its row updated): the cache is rebuilt
    from paramgraph.tasks.io import sha256_file

    shutil.copy(zoo.path(1), zoo.path(0))
    lines = (root / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["sha256"] = sha256_file(zoo.path(0))
    lines[0] = json.dumps(row)
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    changed = Zoo(root)
    assert cache_path(changed) != first
    rebuilt = load_graphs(changed, progress=False)
    assert torch.equal(rebuilt[0].edge_value, rebuilt[1].edge_value)
    assert not first.exists()  # the stale cache is gone


def test_dataset_yields_graphs_with_targets(zoos):
    from torch_geometric.loader import DataLoader

    ds = ZooDataset(zoos["hetero"], "train", "test_acc", progress=False)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.y.shape == (4,) and batch.net_id.shape == (4,)
    expected = torch.tensor([zoos["hetero"].rows[i]["test_acc"] for i in batch.net_id.tolist()])
    assert torch.allclose(batch.y, expected)
    inr = ZooDataset(zoos["inr"], "test", "dilate", progress=False)
    assert inr[0].y.shape == (1, 16 * 16)  # a dilated 16x16 view
    labels = ZooDataset(zoos["inr"], None, "label", progress=False)
    assert labels[3].y.item() == zoos["inr"].rows[3]["label"]


def test_bad_zoos_give_clear_errors(zoos, tmp_path):
    with pytest.raises(ZooError, match="does not exist"):
        Zoo(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="no zoo.json"):
        Zoo(tmp_path / "empty")
    bad = tmp_path / "bad"
    shutil.copytree(zoos["cnn"].root, bad, ignore=shutil.ignore_patterns("cache"))
    text = (bad / "metadata.jsonl").read_text().splitlines()
    text[2] = text[2][: len(text[2]) // 2]  # a truncated row
    (bad / "metadata.jsonl").write_text("\n".join(text) + "\n")
    with pytest.raises(ZooError, match=r"metadata\.jsonl' line 3 is corrupt"):
        Zoo(bad)
    (bad / "zoo.json").write_text("{not json")
    with pytest.raises(ZooError, match="zoo.json"):
        Zoo(bad)
    with pytest.raises(ZooError, match="unknown zoo kind"):
        make_zoo(tmp_path / "x", "resnet", 3, progress=False)
    with pytest.raises(ZooError, match="at most 32 views of each"):
        make_zoo(tmp_path / "x", "inr", 60000, progress=False)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file.txt").write_text("x")
    with pytest.raises(ZooError, match="not empty"):
        make_zoo(tmp_path / "occupied", "cnn", 2, progress=False)


def test_missing_checkpoint_names_the_file(zoos, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(zoos["cnn"].root, root, ignore=shutil.ignore_patterns("cache"))
    (root / "nets" / "000002.safetensors").write_bytes(b"garbage")
    zoo = Zoo(root)
    with pytest.raises(ZooError, match="000002.safetensors"):
        load_graphs(zoo, progress=False)


def test_cli_zoo_make_and_info(tmp_path, capsys):
    from paramgraph.tasks.cli import main

    out = tmp_path / "z"
    assert main(["zoo", "make", "--kind", "inr", "--size", "5", "--out", str(out),
                 "--inr-steps", "5", "--no-progress"]) == 0
    assert "5 inr networks" in capsys.readouterr().out
    assert main(["zoo", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == 5
    assert main(["zoo", "info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_inr_zoo_initialisation(zoos, tmp_path):
    rows = zoos["inr"].rows
    assert {r["init"] for r in rows} == {"shared"} and len({r["seed"] for r in rows}) == 1
    other = make_zoo(tmp_path / "ind", "inr", 3, seed=3, inr_steps=2, inr_init="independent",
                     progress=False)
    assert len({r["seed"] for r in other.rows}) == 3
    with pytest.raises(ZooError, match="initialisation"):
        make_zoo(tmp_path / "bad", "inr", 3, inr_init="zeros", progress=False)
    with pytest.raises(ZooError, match="inr_init"):  # a zoo's settings cannot change on resume
        make_zoo(tmp_path / "ind", "inr", 3, seed=3, inr_steps=2, progress=False)


def test_state_dict_is_in_forward_order_for_the_baseline(zoos):
    from paramgraph.tasks.archs import build_model

    for kind in ("hetero", "cnn"):
        zoo = Zoo(zoos[kind].root) if not isinstance(zoos[kind], Zoo) else zoos[kind]
        for i in range(len(zoo)):
            keys = list(zoo.state_dict(i))
            assert keys == list(build_model(zoo.rows[i]["spec"]).state_dict()), (kind, i)
    # control: the file itself stores them alphabetically, which is not the forward order
    from safetensors import safe_open

    zoo = zoos["hetero"]
    i = next(i for i in range(len(zoo)) if zoo.rows[i]["spec"]["family"] == "cnn")
    with safe_open(str(zoo.path(i)), framework="pt") as f:
        assert list(f.keys()) != list(zoo.state_dict(i))
