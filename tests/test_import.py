"""Bring your own zoo: ``paramgraph zoo import`` of a folder of checkpoints with labels.csv (one
architecture, or one per row), of graph files and of the Small CNN Zoo layout; training on any
column; ``paramgraph predict`` on new checkpoints, equal to ``eval`` on the zoo's own; resuming;
and the one-line errors for bad input. Everything runs through the command line, as a user
would, on a few tiny networks made here."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from paramgraph.tasks.cli import main
from paramgraph.tasks.errors import ZooError
from paramgraph.tasks.zoo import Zoo

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--hidden", "8", "--layers", "1", "--batch-size", "4", "--no-progress",
        "--threads", "1"]
MYNETS = textwrap.dedent("""
    from torch import nn

    def SmallCNN(width=6):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))

    def MLP(hidden=5):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 3))
""")
ARCH = ["--arch", "mynets.py:SmallCNN", "--input-shape", "1,1,4,4"]


def _nets() -> dict:
    namespace: dict = {}
    exec(MYNETS, namespace)
    return namespace


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


def _save(net: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)


def _labels(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _source(root: Path, n: int = 12) -> Path:
    """``root/src``: n SmallCNN checkpoints (.pt and .safetensors), labels with a numeric
    column, a category, a run per two checkpoints; ``root/mynets.py``."""
    (root / "mynets.py").write_text(MYNETS)
    src = root / "src"
    rows = []
    for i in range(n):
        torch.manual_seed(i)
        name = f"nets/n{i:02d}.{'pt' if i % 2 else 'safetensors'}"
        _save(_nets()["SmallCNN"](), src / name)
        rows.append([name, round(0.1 + 0.06 * i, 3), ["cat", "dog"][i % 2], i // 2])
    _labels(src / "labels.csv", ["file", "test_acc", "kind", "run"], rows)
    return src


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A folder of checkpoints imported once (cwd-independent paths), with its root."""
    root = tmp_path_factory.mktemp("own")
    src = _source(root)
    status = main(["zoo", "import", str(src), "--out", str(root / "zoo"), "--arch",
                   f"{root / 'mynets.py'}:SmallCNN", "--input-shape", "1,1,4,4",
                   "--group-column", "run", "--no-progress"])
    assert status == 0
    return root


# -- import, train, eval, predict ------------------------------------------------------------------

def test_import_records_labels_sources_and_groups(imported):
    zoo = Zoo(imported / "zoo")
    assert len(zoo) == 12 and zoo.imported and not zoo.heterogeneous
    assert zoo.columns() == ["test_acc", "kind", "run"]
    assert zoo.column("kind")[:3] == ["cat", "dog", "cat"]
    row = zoo.rows[3]
    assert row["source"] == "nets/n03.pt" and row["labels_line"] == 5
    from paramgraph.tasks.io import sha256_file

    assert row["sha256"] == sha256_file(imported / "src" / "nets" / "n03.pt")
    for name in ("train", "val", "test"):  # the two checkpoints of a run share a split
        runs = {zoo.rows[i]["run"] for i in zoo.split(name)}
        assert all(sum(zoo.rows[i]["run"] == r for i in zoo.split(name)) == 2 for r in runs)
    torch.manual_seed(3)
    original = _nets()["SmallCNN"]().state_dict()
    assert all(torch.equal(zoo.state_dict(3)[k], v) for k, v in original.items())


def test_train_on_a_column_then_predict_equals_eval(imported, capsys, monkeypatch):
    monkeypatch.chdir(imported)
    status, out, err = _run(["train", "--task", "regression", "--target", "test_acc", "--zoo",
                             "zoo", "--out", "run", *FAST], capsys)
    assert status == 0, err
    status, out, err = _run(["eval", "run", "--split", "train", "--json"], capsys)
    assert status == 0, err
    ev = json.loads((imported / "run" / "eval-train.json").read_text())
    zoo = Zoo("zoo")
    i = ev["net_id"][0]
    status, out, err = _run(["predict", "run", f"src/{zoo.rows[i]['source']}", *ARCH], capsys)
    assert status == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["file", "test_acc"]
    assert float(table[0]["test_acc"]) == pytest.approx(ev["pred"][0], abs=1e-6)
    # new checkpoints, one of another width: a metanet reads any parameter graph
    torch.manual_seed(99)
    _save(_nets()["SmallCNN"](), imported / "new" / "a.safetensors")
    _save(_nets()["SmallCNN"](width=9), imported / "new" / "b.pt")
    status, out, err = _run(["predict", "run", "new/a.safetensors", "new/b.pt", *ARCH[:2],
                             "--arch-kwargs", '{"width": 9}', "--input-shape", "1,1,4,4",
                             "-o", "pred.csv"], capsys)
    # a.safetensors has width 6, not 9: named, the other is still predicted
    errors = [ln for ln in err.splitlines() if ln.startswith("paramgraph: error:")]
    assert status == 2 and len(errors) == 1 and "new/a.safetensors: does not fit" in errors[0]
    rows = list(csv.DictReader(open("pred.csv")))
    assert [r["file"] for r in rows] == ["new/b.pt"]
    assert np.isfinite(float(rows[0]["test_acc"]))
    status, _, err = _run(["plot", "run"], capsys)
    assert status == 0, err


def test_classification_and_baseline_on_a_category(imported, capsys, monkeypatch):
    monkeypatch.chdir(imported)
    status, _, err = _run(["train", "--task", "classification", "--target", "kind", "--zoo",
                           "zoo", "--out", "run-kind", *FAST], capsys)
    assert status == 0, err
    config = json.loads((imported / "run-kind" / "config.json").read_text())
    assert config["objective_state"] == {"classes": ["cat", "dog"]}
    status, out, err = _run(["predict", "run-kind", "src/nets", *ARCH, "--json"], capsys)
    assert status == 0, err
    rows = json.loads(out)
    assert len(rows) == 12 and set(rows[0]) == {"file", "kind", "p_cat", "p_dog"}
    assert all(r["kind"] in ("cat", "dog") and r["p_cat"] + r["p_dog"] == pytest.approx(1)
               for r in rows)
    status, out, err = _run(["baseline", "--task", "classification", "--target", "kind",
                             "--zoo", "zoo"], capsys)
    assert status == 0 and "accuracy" in out, err
    status, out, err = _run(["zoo", "info", "zoo", "--json"], capsys)
    info = json.loads(out)
    assert info["columns"]["kind"]["kind"] == "categorical"
    assert info["columns"]["test_acc"]["max"] == pytest.approx(0.76)


def test_a_second_import_reuses_and_notices_a_changed_file(tmp_path, capsys):
    src = _source(tmp_path, n=6)
    argv = ["zoo", "import", str(src), "--out", str(tmp_path / "zoo"), "--arch",
            f"{tmp_path / 'mynets.py'}:SmallCNN", "--input-shape", "1,1,4,4", "--no-progress"]
    assert _run(argv, capsys)[0] == 0
    before = Zoo(tmp_path / "zoo").rows
    status, out, _ = _run(argv, capsys)
    assert status == 0 and "0 converted, 6 reused" in out
    torch.manual_seed(123)
    _save(_nets()["SmallCNN"](), src / "nets" / "n02.safetensors")
    status, out, _ = _run(argv, capsys)
    assert status == 0 and "1 converted, 5 reused" in out
    after = Zoo(tmp_path / "zoo").rows
    assert after[2]["sha256"] != before[2]["sha256"] and after[3] == before[3]
    assert len(list((tmp_path / "zoo" / "graphs").glob("*.pgraph"))) == 6  # stale one removed


# -- heterogeneous zoos, graph files, the Small CNN Zoo -------------------------------------------

def test_a_heterogeneous_zoo_names_the_architecture_per_row(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mynets.py").write_text(MYNETS)  # an arch path is looked up in SRC
    nets, rows = _nets(), []
    for i in range(9):
        torch.manual_seed(i)
        if i % 3 == 0:
            net, arch, kwargs, shape = nets["MLP"](hidden=4 + i), "mynets.py:MLP", \
                json.dumps({"hidden": 4 + i}), "1,16"
        else:
            net, arch, kwargs, shape = nets["SmallCNN"](width=4 + i), "", \
                json.dumps({"width": 4 + i}), ""
        name = f"n{i}.pt2" if i == 4 else f"n{i}.safetensors"
        if i == 4:  # a torch.export program carries its own architecture
            torch.export.save(torch.export.export(net.eval(), (torch.randn(2, 1, 4, 4),)),
                              str(tmp_path / "src" / name))
            kwargs = ""
        else:
            _save(net, tmp_path / "src" / name)
        rows.append([name, 0.1 * i, arch, kwargs, shape])
    _labels(tmp_path / "src" / "labels.csv", ["file", "acc", "arch", "arch_kwargs",
                                              "input_shape"], rows)
    (tmp_path / "mynets.py").write_text(MYNETS)
    status, out, err = _run(["zoo", "import", "src", "--out", "zoo", *ARCH, "--no-progress"],
                            capsys)
    assert status == 0, err
    zoo = Zoo("zoo")
    assert zoo.heterogeneous and len({r["signature"] for r in zoo.rows}) == 9
    assert {r["arch"] for r in zoo.rows} == {"mynets.py:MLP", "mynets.py:SmallCNN",
                                             "torch.export"}
    assert "families: mynets.py:MLP 3" in out
    status, _, err = _run(["train", "--task", "regression", "--target", "acc", "--zoo", "zoo",
                           "--out", "run", *FAST], capsys)
    assert status == 0, err


def test_import_a_folder_of_graph_files(imported, tmp_path, capsys):
    src = tmp_path / "graphs"
    status, _, err = _run(["convert", str(imported / "src" / "nets"), "-o", str(src), "--arch",
                           f"{imported / 'mynets.py'}:SmallCNN", "--input-shape", "1,1,4,4"],
                          capsys)
    assert status == 0, err
    rows = [[f"n{i:02d}.pgraph", i % 3, i] for i in range(12)]
    _labels(src / "labels.csv", ["file", "label", "run"], rows)
    status, out, err = _run(["zoo", "import", str(src), "--format", "pgraph", "--out",
                             str(tmp_path / "zoo"), "--no-progress"], capsys)
    assert status == 0, err
    ours, theirs = Zoo(tmp_path / "zoo"), Zoo(imported / "zoo")
    for i in (0, 7):
        assert all(torch.equal(ours.state_dict(i)[k], v) for k, v in theirs.state_dict(i).items())
    status, _, err = _run(["zoo", "import", str(imported / "src"), "--format", "pgraph",
                           "--out", str(tmp_path / "z2"), "--no-progress"], capsys)
    assert status == 2 and "is not a graph file" in err and "line 2" in err


def _small_cnn_zoo(root: Path, runs: int = 4, steps=(20, 86)) -> list[nn.Module]:
    """The published layout from tiny CNNs: TensorFlow kernel order (HWIO, dense [in, out]), one
    weights.npy row per (run, step), metrics.csv.gz aligned with it. Returns the final nets."""
    layout, rows, metrics, finals = [], [], [], []
    for run in range(runs):
        act = ["relu", "tanh"][run % 2]
        for step in steps:
            torch.manual_seed(100 * run + step)
            net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                                nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU(),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
            parts, start, layout = [], 0, []
            for name, (k, b) in zip(("conv2d", "conv2d_1", "dense"), ((0, 0), (2, 2), (6, 6))):
                w, bias = net[k].weight.detach(), net[b].bias.detach()
                tf = w.permute(2, 3, 1, 0) if w.dim() == 4 else w.T  # OIHW -> HWIO, [in, out]
                for var, t in ((f"sequential/{name}/kernel:0", tf), (f"sequential/{name}/bias:0",
                                                                     bias)):
                    layout.append([var, start, start + t.numel(), t.numel(), str(tuple(t.shape))])
                    parts.append(t.reshape(-1))
                    start += t.numel()
            rows.append(torch.cat(parts).numpy())
            metrics.append([len(metrics), f"run{run}", step, 0.2 + 0.1 * run + step / 1000,
                            act, 0.01 * (run + 1)])
            if step == max(steps):
                finals.append(net)
    np.save(root / "weights.npy", np.stack(rows).astype(np.float32))
    buf = io.StringIO()
    csv.writer(buf).writerows([["varname", "start_idx", "end_idx", "size", "shape"], *layout])
    (root / "layout.csv").write_text(buf.getvalue())
    buf = io.StringIO()
    csv.writer(buf).writerows([["", "modeldir", "step", "test_accuracy", "config.activation",
                                "config.learning_rate"], *metrics])
    (root / "metrics.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode()))
    return finals


def test_import_the_small_cnn_zoo_layout(tmp_path, capsys):
    src = tmp_path / "scz"
    src.mkdir()
    finals = _small_cnn_zoo(src)
    status, out, err = _run(["zoo", "import", str(src), "--format", "small-cnn-zoo", "--out",
                             str(tmp_path / "zoo"), "--no-progress"], capsys)
    assert status == 0, err
    zoo = Zoo(tmp_path / "zoo")
    assert len(zoo) == 4  # the final step of each run
    assert zoo.column("step") == [86] * 4 and zoo.column("test_acc") == zoo.column(
        "test_accuracy")
    assert [r["arch"] for r in zoo.rows] == ["small-cnn-zoo/relu", "small-cnn-zoo/tanh"] * 2
    for i, net in enumerate(finals):  # HWIO kernels back in PyTorch's order, exactly
        got = list(zoo.state_dict(i).values())
        want = [t for t in net.state_dict().values()]
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    status, _, err = _run(["train", "--task", "generalization", "--zoo", str(tmp_path / "zoo"),
                           "--out", str(tmp_path / "run"), *FAST], capsys)
    assert status == 0, err
    status, _, err = _run(["zoo", "import", str(src), "--format", "small-cnn-zoo", "--steps",
                           "all", "--out", str(tmp_path / "all"), "--no-progress",
                           "--workers", "2"], capsys)
    assert status == 0 and len(Zoo(tmp_path / "all")) == 8, err


# -- bad input ------------------------------------------------------------------------------------

def test_labels_from_a_spreadsheet_are_read_typed(tmp_path):
    from paramgraph.tasks.labels import read_labels

    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "b.pt").write_bytes(b"x")
    (tmp_path / "labels.csv").write_bytes("\ufefffile;acc;name;kw\na.pt;0,5;x;NA\n"
                                          "b.pt;3;\"y; z\";\"{\"\"w\"\": 1}\"\n".encode())
    table = read_labels(tmp_path / "labels.csv", tmp_path)
    assert table.columns == ["acc", "name", "kw"]
    assert [r.values for r in table.rows] == [
        {"acc": "0,5", "name": "x", "kw": None}, {"acc": 3, "name": "y; z", "kw": '{"w": 1}'}]


def test_a_bad_checkpoint_fails_the_import_unless_skipped(tmp_path, capsys):
    src = _source(tmp_path, n=8)
    (src / "nets" / "n05.pt").write_bytes(b"not a checkpoint at all")
    argv = ["zoo", "import", str(src), "--out", str(tmp_path / "zoo"), "--arch",
            f"{tmp_path / 'mynets.py'}:SmallCNN", "--input-shape", "1,1,4,4", "--no-progress"]
    status, _, err = _run(argv, capsys)
    assert status == 2
    assert "labels.csv line 7: nets/n05.pt:" in err and "unfinished" in err
    with pytest.raises(ZooError, match="unfinished; run the same 'paramgraph zoo import'"):
        Zoo(tmp_path / "zoo")
    status, out, err = _run(argv + ["--skip-bad"], capsys)
    assert status == 0 and "7 reused" in out and "1 left out" in out
    zoo = Zoo(tmp_path / "zoo")
    assert len(zoo) == 7 and "nets/n05.pt" in zoo.manifest["failures"][0]


def _bad_labels(tmp_path: Path, case: str) -> tuple[list[str], str]:
    src = _source(tmp_path, n=6)
    table = (src / "labels.csv").read_text().splitlines()
    extra: list[str] = []
    if case == "no file column":
        table[0] = table[0].replace("file", "path")
        match = "has no 'file' column"
    elif case == "missing file":
        table[3] = table[3].replace("n02", "n99")
        match = "labels.csv line 4, column 'file': 'nets/n99.safetensors' does not exist"
    elif case == "bad split":
        table = [table[0] + ",split"] + [r + ",train" for r in table[1:]]
        table[2] = table[2].replace(",train", ",training")
        extra = ["--split-column", "split"]
        match = "line 3, column 'split': 'training' is not train, val or test"
    elif case == "split across a group":
        table = [table[0] + ",split"] + [r + f",{s}" for r, s in
                                         zip(table[1:], ["train", "val", "val", "val", "test",
                                                         "test"])]
        extra = ["--split-column", "split", "--group-column", "run"]
        match = "line 3, column 'split': 'val', but line 2 of the same group 0 says 'train'"
    elif case == "no arch":
        extra = ["--no-arch"]
        match = "line 2: 'nets/n00.safetensors' is a state_dict, which needs its architecture"
    else:  # a bad architecture name
        extra = ["--arch", "mynets.py:Nope"]
        match = "has no attribute 'Nope'"
    (src / "labels.csv").write_text("\n".join(table) + "\n")
    argv = ["zoo", "import", str(src), "--out", str(tmp_path / "zoo"), "--input-shape",
            "1,1,4,4", "--no-progress"]
    if "--no-arch" not in extra and "--arch" not in extra:
        argv += ["--arch", f"{tmp_path / 'mynets.py'}:SmallCNN"]
    argv += [a for a in extra if a != "--no-arch"]
    return argv, match


@pytest.mark.parametrize("case", ["no file column", "missing file", "bad split",
                                  "split across a group", "no arch", "bad arch"])
def test_bad_labels_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    argv, match = _bad_labels(tmp_path, case)
    status, _, err = _run(argv, capsys)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and match in err, err
    assert not (tmp_path / "zoo").exists()


def test_a_target_that_is_missing_or_not_a_number_names_line_and_column(imported, tmp_path,
                                                                         capsys):
    src = _source(tmp_path, n=6)
    table = (src / "labels.csv").read_text().splitlines()
    table[3] = table[3].replace("0.22", "n/a")
    table[5] = table[5].replace("0.34", "0.34x")
    (src / "labels.csv").write_text("\n".join(table) + "\n")
    status, _, err = _run(["zoo", "import", str(src), "--out", str(tmp_path / "zoo"), "--arch",
                           f"{tmp_path / 'mynets.py'}:SmallCNN", "--input-shape", "1,1,4,4",
                           "--no-progress"], capsys)
    assert status == 0 and "line 6, column 'test_acc': '0.34x' is not a number" in err
    base = ["--zoo", str(tmp_path / "zoo"), "--out", str(tmp_path / "run"), *FAST]
    status, _, err = _run(["train", "--task", "regression", "--target", "test_acc", *base],
                          capsys)
    assert status == 2 and "labels.csv line 4 (nets/n02.safetensors) has no value in column " \
        "'test_acc'" in err
    status, _, err = _run(["train", "--task", "regression", "--target", "kind", *base], capsys)
    assert status == 2 and "has 'cat' in column 'kind', not a number" in err
    status, _, err = _run(["train", "--task", "regression", *base], capsys)
    assert status == 2 and "needs --target COLUMN" in err
    status, _, err = _run(["train", "--task", "classification", "--target", "nope", *base],
                          capsys)
    assert status == 2 and "has no column 'nope' (its columns: test_acc, kind, run)" in err


def test_zoo_info_on_a_hand_written_zoo_without_families(tmp_path, capsys):
    """The reported failure: a zoo table without 'family' (or accuracies) made zoo info crash."""
    root = tmp_path / "zoo"
    (root / "nets").mkdir(parents=True)
    spec = {"family": "mlp", "hidden": [4], "act": "relu"}
    rows = [{"id": i, "run": i, "spec": spec, "file": f"nets/{i}.safetensors",
             "hparams": {"lr": 0.1 * i}} for i in range(3)]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "splits.json").write_text(json.dumps({"train": [0], "val": [1], "test": [2]}))
    (root / "zoo.json").write_text(json.dumps({"kind": "cnn", "size": 3, "complete": True}))
    status, out, err = _run(["zoo", "info", str(root)], capsys)
    assert status == 0 and "families: mlp 3" in out, err
    zoo = Zoo(root)  # a made zoo's metadata and hyperparameters are columns to train on
    assert zoo.columns() == ["hp_lr"] and zoo.column("hp_lr") == [0.0, 0.1, 0.2]


def test_the_readme_worked_example_runs_as_written(tmp_path, capsys, monkeypatch):
    """The README's "Your own zoo" section: its Python block, then its first shell block."""
    monkeypatch.chdir(tmp_path)
    section = (ROOT / "README.md").read_text().split("## Your own zoo")[1].split("\n## ")[0]
    exec(section.split("```python\n")[1].split("```")[0], {})
    shell = section.split("```bash\n")[1].split("```")[0].replace("\\\n", " ")
    for line in shell.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            assert argv[0] == "paramgraph"
            status, _, err = _run(argv[1:] + (["--threads", "1"] if argv[1] == "train" else []),
                                  capsys)
            assert status == 0, (line, err)
    rows = list(csv.DictReader(open("pred.csv")))
    assert [r["file"] for r in rows] == ["new1.pt", "new2.pt"] and "test_acc" in rows[0]
