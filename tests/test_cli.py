"""The ``paramgraph`` command line: round trips, refusals, error policy, directories, summaries."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import networkx as nx
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import paramgraph as pg
from paramgraph.tasks.cli import main
from tests.cli_archs import make_cnn, make_mlp

REPO = Path(__file__).resolve().parents[1]
CNN = ["--arch", "tests.cli_archs:make_cnn", "--input-shape", "2,1,8,8"]


class Evil:
    """Unpickling this creates a file: the stand-in for code hidden in a checkpoint."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture()
def cnn():
    torch.manual_seed(0)
    m = make_cnn()
    with torch.no_grad():
        for key, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in key else torch.randn_like(t))
            else:
                t.fill_(17)  # num_batches_tracked: must come back too
    return m


def run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def assert_bit_identical(restored: dict, original: dict):
    assert list(restored) == list(original) or set(restored) == set(original)
    for key, t in original.items():
        r = restored[key]
        assert r.dtype == t.dtype and r.shape == t.shape, key
        assert torch.equal(r.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), key


def save_program(m, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(m, (torch.randn(2, 1, 8, 8),)), path)


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["safetensors", "pt", "pt2"])
def test_round_trip_is_bit_identical(tmp_path, capsys, cnn, kind):
    original = cnn.state_dict()
    src = tmp_path / f"cnn.{kind}"
    if kind == "safetensors":
        save_file(original, str(src))
    elif kind == "pt":
        torch.save(original, src)
    else:
        save_program(cnn, src)
    extra = [] if kind == "pt2" else CNN
    code, out, err = run(["convert", src, "-o", tmp_path / "g.pgraph", *extra], capsys)
    assert (code, err) == (0, ""), err
    assert "g.pgraph" in out
    for suffix in ("safetensors", "pt"):
        code, _, err = run(["restore", tmp_path / "g.pgraph", "-o", tmp_path / f"r.{suffix}"],
                           capsys)
        assert code == 0, err
    assert_bit_identical(load_file(str(tmp_path / "r.safetensors")), original)
    restored = torch.load(tmp_path / "r.pt", weights_only=True)
    # the checkpoint's own key order (a safetensors file has its own)
    order = list(load_file(str(src))) if kind == "safetensors" else list(original)
    assert list(restored) == order
    assert_bit_identical(restored, original)


def test_default_output_name_and_float64(tmp_path, capsys, cnn):
    original = {k: v.double() if v.is_floating_point() else v for k, v in
                cnn.state_dict().items()}
    save_file(original, str(tmp_path / "net.safetensors"))
    code, _, err = run(["convert", tmp_path / "net.safetensors", *CNN], capsys)
    assert code == 0, err
    assert (tmp_path / "net.pgraph").exists()
    code, _, _ = run(["restore", tmp_path / "net.pgraph", "-o", tmp_path / "r.safetensors"],
                     capsys)
    assert code == 0
    assert_bit_identical(load_file(str(tmp_path / "r.safetensors")), original)


def test_pickled_module_with_trust(tmp_path, capsys, cnn):
    torch.save(cnn, tmp_path / "whole.pt")
    code, _, err = run(["convert", tmp_path / "whole.pt", "--input-shape", "2,1,8,8",
                        "--trust-pickle", "-o", tmp_path / "g.pgraph"], capsys)
    assert code == 0, err
    run(["restore", tmp_path / "g.pgraph", "-o", tmp_path / "r.safetensors"], capsys)
    assert_bit_identical(load_file(str(tmp_path / "r.safetensors")), cnn.state_dict())


def test_nonfinite_weights_convert_when_allowed(tmp_path, capsys, cnn):
    sd = dict(cnn.state_dict())
    sd["head.weight"] = sd["head.weight"].clone()
    sd["head.weight"][0, :2] = torch.tensor([float("nan"), float("-inf")])
    save_file(sd, str(tmp_path / "bad.safetensors"))
    code, _, err = run(["convert", tmp_path / "bad.safetensors", *CNN, "--allow-nonfinite",
                        "-o", tmp_path / "g.pgraph"], capsys)
    assert code == 0, err
    run(["restore", tmp_path / "g.pgraph", "-o", tmp_path / "r.safetensors"], capsys)
    assert_bit_identical(load_file(str(tmp_path / "r.safetensors")), sd)


# -- refusals and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pickle", "torch_zip"])
def test_malicious_pickle_is_refused(tmp_path, capsys, how):
    target = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    if how == "pickle":
        src.write_bytes(pickle.dumps({"w": Evil(target)}, protocol=2))
    else:
        torch.save({"w": Evil(target)}, src)
    code, out, err = run(["convert", src, *CNN, "-o", tmp_path / "g.pgraph"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(src) in err
    assert "refusing to unpickle" in err and "--trust-pickle" in err
    assert not target.exists()
    assert files(tmp_path) == ["evil.pt"]


def _make_case(case: str, d: Path, cnn) -> tuple[list, str]:
    """Build the input of one error case; returns (arguments, expected text in the message)."""
    sd = cnn.state_dict()
    if case == "missing":
        return ["convert", d / "absent.pt", *CNN], "absent.pt: no such file"
    if case == "truncated_pt":
        torch.save(sd, d / "c.pt")
        data = (d / "c.pt").read_bytes()
        (d / "c.pt").write_bytes(data[: len(data) // 2])
        return ["convert", d / "c.pt", *CNN], "c.pt: corrupt or truncated"
    if case == "truncated_safetensors":
        save_file(sd, str(d / "c.safetensors"))
        data = (d / "c.safetensors").read_bytes()
        (d / "c.safetensors").write_bytes(data[:-64])
        return ["convert", d / "c.safetensors", *CNN], "c.safetensors: corrupt or truncated"
    if case == "corrupt_pt2":
        save_program(cnn, d / "c.pt2")
        data = bytearray((d / "c.pt2").read_bytes())
        data[len(data) // 3 : len(data) // 3 + 200] = os.urandom(200)
        (d / "c.pt2").write_bytes(bytes(data))
        return ["convert", d / "c.pt2"], "c.pt2: corrupt"
    if case == "unknown_format":
        (d / "notes.pt").write_text("these are not weights\n")
        return ["convert", d / "notes.pt", *CNN], "notes.pt: unknown format"
    if case == "arch_not_importable":
        torch.save(sd, d / "c.pt")
        return (["convert", d / "c.pt", "--arch", "no_such_package.nets:make", "--input-shape",
                 "2,1,8,8"], "c.pt: --arch 'no_such_package.nets:make': cannot import")
    if case == "arch_missing_callable":
        torch.save(sd, d / "c.pt")
        return (["convert", d / "c.pt", "--arch", "tests.cli_archs:make_nothing",
                 "--input-shape", "2,1,8,8"], "has no attribute 'make_nothing'")
    if case == "does_not_fit":
        torch.save(sd, d / "c.pt")
        return (["convert", d / "c.pt", *CNN, "--arch-kwargs", '{"channels": 4}'],
                "c.pt: does not fit --arch tests.cli_archs:make_cnn: wrong shape: stem.weight "
                "(checkpoint [8, 1, 3, 3], architecture [4, 1, 3, 3])")
    if case == "missing_and_unexpected":
        bad = {("renamed." + k if k.startswith("head") else k): v for k, v in sd.items()}
        torch.save(bad, d / "c.pt")
        return (["convert", d / "c.pt", *CNN],
                "missing: head.weight, head.bias; unexpected: renamed.head.weight")
    if case == "nonfinite":
        bad = dict(sd)
        bad["stem.bias"] = torch.full_like(sd["stem.bias"], float("nan"))
        save_file(bad, str(d / "c.safetensors"))
        return (["convert", d / "c.safetensors", *CNN],
                "c.safetensors: non-finite weights in stem.bias (8 NaN); pass --allow-nonfinite")
    if case == "nonfinite_pt2":
        with torch.no_grad():
            cnn.head.weight[0, 0] = float("inf")
        save_program(cnn, d / "c.pt2")
        return ["convert", d / "c.pt2"], "c.pt2: non-finite weights in head.weight (1 inf)"
    if case == "bad_arch_kwargs":
        torch.save(sd, d / "c.pt")
        return ["convert", d / "c.pt", *CNN, "--arch-kwargs", "{channels: 4}"], "not valid JSON"
    if case == "bad_input_shape":
        torch.save(sd, d / "c.pt")
        return (["convert", d / "c.pt", "--arch", "tests.cli_archs:make_cnn", "--input-shape",
                 "2,a"], "--input-shape '2,a'")
    if case == "graph_not_found":
        return ["restore", d / "g.pgraph", "-o", d / "r.safetensors"], "g.pgraph: no such file"
    if case == "restore_from_checkpoint":
        save_file(sd, str(d / "c.safetensors"))
        return (["restore", d / "c.safetensors", "-o", d / "r.safetensors"],
                "c.safetensors: not a paramgraph graph file")
    if case == "restore_unknown_suffix":
        pg.save_graph(pg.from_module(cnn, torch.randn(1, 1, 8, 8)), d / "g.pgraph")
        return ["restore", d / "g.pgraph", "-o", d / "r.txt"], "r.txt: unknown output format"
    raise AssertionError(case)


ERROR_CASES = ["missing", "truncated_pt", "truncated_safetensors", "corrupt_pt2",
               "unknown_format", "arch_not_importable", "arch_missing_callable", "does_not_fit",
               "missing_and_unexpected", "nonfinite", "nonfinite_pt2", "bad_arch_kwargs",
               "bad_input_shape", "graph_not_found", "restore_from_checkpoint",
               "restore_unknown_suffix"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_is_one_line_exit_2_no_output(tmp_path, capsys, cnn, case):
    args, expected = _make_case(case, tmp_path, cnn)
    before = files(tmp_path)
    out_dir = tmp_path / "out"
    if args[0] == "convert":
        args += ["-o", out_dir / "g.pgraph"]
    code, out, err = run(args, capsys)
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("paramgraph: error: "), err
    assert "Traceback" not in err
    assert expected in err, err
    assert files(tmp_path) == before  # no output, no temporary file, no output directory


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, _, err = run(["convert", tmp_path / "absent.pt", "--debug"], capsys)
    assert code == 2
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("paramgraph: error:")


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_or_interrupted_write_leaves_nothing(tmp_path, capsys, cnn, monkeypatch, exc):
    save_file(cnn.state_dict(), str(tmp_path / "c.safetensors"))

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise exc

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    code, _, err = run(["convert", tmp_path / "c.safetensors", *CNN, "-o",
                        tmp_path / "g.pgraph"], capsys)
    assert code == (130 if isinstance(exc, KeyboardInterrupt) else 2)
    assert err.count("\n") == 1
    assert files(tmp_path) == ["c.safetensors"]


def test_output_must_not_overwrite_the_source(tmp_path, capsys, cnn):
    pg.save_graph(pg.from_module(cnn, torch.randn(1, 1, 8, 8)), tmp_path / "g.pgraph")
    data = (tmp_path / "g.pgraph").read_bytes()
    code, _, err = run(["convert", tmp_path / "g.pgraph", "-o", tmp_path / "g.pgraph"], capsys)
    assert code == 2 and "g.pgraph" in err
    assert (tmp_path / "g.pgraph").read_bytes() == data


# -- directories ---------------------------------------------------------------------------------


def test_directory_of_50_with_one_corrupt(tmp_path, capsys):
    src, out = tmp_path / "zoo", tmp_path / "graphs"
    src.mkdir()
    torch.manual_seed(0)
    for i in range(50):
        sd = make_mlp().state_dict()
        if i % 2:
            save_file(sd, str(src / f"net{i:02d}.safetensors"))
        else:
            torch.save(sd, src / f"net{i:02d}.pt")
    (src / "README.txt").write_text("not a checkpoint: ignored\n")
    data = (src / "net13.safetensors").read_bytes()
    (src / "net13.safetensors").write_bytes(data[: len(data) // 2])
    code, stdout, err = run(["convert", src, "-o", out, "--arch", "tests.cli_archs:make_mlp",
                             "--input-shape", "3,2", "--workers", "2"], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("paramgraph: error:")]
    assert len(errors) == 1 and "net13.safetensors" in errors[0], err
    assert "converted 49 of 50" in stdout and "1 failed" in stdout
    converted = files(out)
    assert len(converted) == 49 and "net13.pgraph" not in converted
    assert all(name.endswith(".pgraph") for name in converted)
    sd = load_file(str(src / "net49.safetensors"))
    restored = pg.to_state_dict(pg.load_graph(out / "net49.pgraph"))
    assert_bit_identical(restored, sd)


def test_directory_name_collisions_and_graph_files(tmp_path, capsys):
    src = tmp_path / "zoo"
    src.mkdir()
    sd = make_mlp().state_dict()
    save_file(sd, str(src / "a.safetensors"))
    torch.save(sd, src / "a.pt")
    code, stdout, err = run(["convert", src, "--arch", "tests.cli_archs:make_mlp",
                             "--input-shape", "3,2"], capsys)
    assert code == 0, err
    assert {"a.safetensors.pgraph", "a.pt.pgraph"} <= set(files(src))
    code, stdout, err = run(["convert", src, "--arch", "tests.cli_archs:make_mlp",
                             "--input-shape", "3,2"], capsys)  # again: graph files are skipped
    assert code == 0 and "converted 2 of 2" in stdout, err


def test_empty_directory(tmp_path, capsys):
    code, _, err = run(["convert", tmp_path], capsys)
    assert code == 2 and "no checkpoint files" in err and err.count("\n") == 1


# -- inspect -------------------------------------------------------------------------------------


def test_inspect_json_counts(tmp_path, capsys, cnn):
    graph = pg.from_module(cnn, torch.randn(2, 1, 8, 8))
    pg.save_graph(graph, tmp_path / "g.pgraph")
    code, out, err = run(["inspect", tmp_path / "g.pgraph", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["parameters"] == sum(t.numel() for k, t in cnn.state_dict().items()
                                     if not k.endswith("num_batches_tracked"))
    assert info["nodes"]["total"] == graph.num_nodes == sum(info["nodes"]["by_type"].values())
    assert info["edges"]["total"] == graph.edge_index.size(1) == \
        sum(info["edges"]["by_type"].values())
    assert info["nodes"]["by_type"] == {"input": 1, "hidden": 24, "output": 10, "residual": 8}
    assert info["edges"]["by_type"] == {"linear": 80, "conv": 136, "residual": 16}
    assert info["layers"]["count"] == int(graph.node_layer.max()) + 1
    assert sum(info["layers"]["nodes_per_layer"]) == graph.num_nodes
    sym = info["symmetry"]
    # stem/residual stream (tied by the skip connection) and the block's inner channels
    assert sym["permutable_sets"] == 2 and sym["permutable_set_sizes"] == [8, 8]
    assert sym["scalable_neurons"] == int(graph.node_scale.sum()) == 8
    assert sym["sign_symmetric_neurons"] == 0 and sym["attention_heads"] == 0


def test_inspect_checkpoint_and_attention(tmp_path, capsys, cnn):
    torch.save(cnn.state_dict(), tmp_path / "c.pt")
    code, out, err = run(["inspect", tmp_path / "c.pt", *CNN, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "checkpoint" and info["tensors"] == 19
    assert info["extra"] == ["block.bn1.num_batches_tracked", "block.bn2.num_batches_tracked",
                             "bn.num_batches_tracked"]
    net = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = pg.from_module(net, torch.randn(2, 3, 8))
    pg.save_graph(graph, tmp_path / "t.pgraph")
    code, out, err = run(["inspect", tmp_path / "t.pgraph", "--json"], capsys)
    sym = json.loads(out)["symmetry"]
    assert sym["attention_heads"] == 4 and sym["attention_blocks"] == 2


def test_inspect_text(tmp_path, capsys, cnn):
    pg.save_graph(pg.from_module(cnn, torch.randn(2, 1, 8, 8)), tmp_path / "g.pgraph",
                  metadata={"source": "cnn.pt"})
    code, out, _ = run(["inspect", tmp_path / "g.pgraph"], capsys)
    assert code == 0
    for text in ("parameters      1,426", "permutable channel sets  2 (sizes 8x2)",
                 "scalable neurons         8", "source          source=cnn.pt",
                 "block.conv1.weight"):
        assert text in out, out


# -- export and draw -----------------------------------------------------------------------------


def test_export_graphml_and_json(tmp_path, capsys, cnn):
    graph = pg.from_module(cnn, torch.randn(2, 1, 8, 8))
    pg.save_graph(graph, tmp_path / "g.pgraph")
    code, _, err = run(["export", tmp_path / "g.pgraph", "--format", "graphml", "-o",
                        tmp_path / "g.graphml"], capsys)
    assert code == 0, err
    g = nx.read_graphml(tmp_path / "g.graphml")
    assert g.number_of_nodes() == graph.num_nodes
    assert g.number_of_edges() == graph.edge_index.size(1)
    code, _, err = run(["export", tmp_path / "g.pgraph", "-o", tmp_path / "g.json"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "g.json").read_text())
    assert len(data["nodes"]) == graph.num_nodes and len(data["edges"]) == graph.edge_index.size(1)
    by_ends = {(e["source"], e["target"]): e["value"] for e in data["edges"]}
    seg = graph.segments["head.weight"]  # edges ordered (output, input), one per weight
    src, dst = graph.edge_index[:, seg.start : seg.start + seg.count]
    w = cnn.head.weight.detach().reshape(-1)
    assert [by_ends[(int(s), int(d))] for s, d in zip(src, dst)] == w.tolist()
    seg = graph.segments["stem.weight"]
    s, d = graph.edge_index[:, seg.start]
    assert by_ends[(int(s), int(d))] == cnn.stem.weight[0, 0].flatten().tolist()  # a 3x3 kernel
    assert [s["name"] for s in data["graph"]["segments"]["segments"]] == graph.segments.names()


def test_export_needs_a_format(tmp_path, capsys, cnn):
    pg.save_graph(pg.from_module(cnn, torch.randn(1, 1, 8, 8)), tmp_path / "g.pgraph")
    code, _, err = run(["export", tmp_path / "g.pgraph", "-o", tmp_path / "g.txt"], capsys)
    assert code == 2 and "--format" in err and not (tmp_path / "g.txt").exists()


def test_draw(tmp_path, capsys, cnn):
    pg.save_graph(pg.from_module(cnn, torch.randn(1, 1, 8, 8)), tmp_path / "g.pgraph")
    code, out, err = run(["draw", tmp_path / "g.pgraph", "-o", tmp_path / "g.png"], capsys)
    assert code == 0 and "every neuron" in out, err
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(["draw", tmp_path / "g.pgraph", "-o", tmp_path / "s.svg", "--max-nodes",
                        "10"], capsys)
    assert code == 0 and "summarised per layer" in out
    assert "SUMMARISED PER LAYER" in (tmp_path / "s.svg").read_text()
    code, _, err = run(["draw", tmp_path / "g.pgraph", "-o", tmp_path / "g.gif"], capsys)
    assert code == 2 and "g.gif" in err and not (tmp_path / "g.gif").exists()


# -- the installed console script ----------------------------------------------------------------


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("paramgraph")
    assert script.exists(), "the paramgraph console script is not installed (pip install -e .)"
    target = tmp_path / "pwned"
    torch.save({"w": Evil(target)}, tmp_path / "evil.pt")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(script), "convert", str(tmp_path / "evil.pt"), *CNN],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("paramgraph: error: ") and "evil.pt" in lines[0]
    assert not target.exists() and not (tmp_path / "evil.pgraph").exists()


# -- token-input checkpoints: zoo import and predict with --input-spec ---------------------------

TOKEN_NETS = """
import torch
from torch import nn


class TokenNet(nn.Module):
    def __init__(self, vocab=7, dim=4):
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab, dim), nn.Linear(dim, 1)

    def forward(self, idx):
        return self.out(torch.relu(self.emb(idx))).mean(1)
"""
TOKENS = ["--arch", "nets.py:TokenNet", "--input-spec", "int64:2,5:0-7"]
FAST_TRAIN = ["--epochs", "1", "--hidden", "8", "--layers", "1", "--batch-size", "4",
              "--no-progress", "--threads", "1"]


def _token_source(root: Path, n: int = 8) -> list[dict]:
    """``root/src``: n TokenNet checkpoints with labels.csv (a 'score' column);
    ``root/nets.py``. Returns the state_dicts."""
    (root / "nets.py").write_text(TOKEN_NETS)
    namespace: dict = {}
    exec(TOKEN_NETS, namespace)
    (root / "src").mkdir()
    states, lines = [], ["file,score"]
    for i in range(n):
        torch.manual_seed(i)
        states.append(namespace["TokenNet"]().state_dict())
        save_file(states[-1], root / "src" / f"t{i}.safetensors")
        lines.append(f"t{i}.safetensors,{0.1 * i:.1f}")
    (root / "src" / "labels.csv").write_text("\n".join(lines) + "\n")
    return states


def test_zoo_import_and_predict_take_token_inputs(tmp_path, capsys, monkeypatch):
    from paramgraph import NodeType
    from paramgraph.tasks.zoo import Zoo

    states = _token_source(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["zoo", "import", "src", "--out", "zoo", *TOKENS, "--no-progress"],
                         capsys)
    assert code == 0, err
    zoo = Zoo("zoo")
    assert len(zoo) == 8
    for i in (0, 5):  # each checkpoint comes back whole from its graph
        k = [r["source"] for r in zoo.rows].index(f"t{i}.safetensors")
        assert all(torch.equal(zoo.state_dict(k)[key], v) for key, v in states[i].items())
    graph = pg.load_graph(next((tmp_path / "zoo" / "graphs").iterdir()))
    assert int((graph.node_type == int(NodeType.TOKEN)).sum()) == 7  # one node per token id
    code, out, err = run(["train", "--task", "regression", "--target", "score", "--zoo", "zoo",
                          "--out", "run", *FAST_TRAIN], capsys)
    assert code == 0, err
    code, out, err = run(["predict", "run", "src/t3.safetensors", *TOKENS], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "file,score" and out.splitlines()[1].startswith("src/t3")
    # control: the same checkpoints traced from a float input of that shape are refused, each
    # with the hint to give --input-spec
    code, out, err = run(["predict", "run", "src/t3.safetensors", *TOKENS[:2], "--input-shape",
                          "2,5"], capsys)
    assert code == 2 and "input-spec" in err
    code, out, err = run(["zoo", "import", "src", "--out", "zoo2", *TOKENS[:2], "--input-shape",
                          "2,5", "--no-progress"], capsys)
    assert code == 2 and "input-spec" in err


@pytest.mark.parametrize("command", ["zoo import", "predict"])
def test_a_bad_input_spec_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, command):
    _token_source(tmp_path, 3)
    monkeypatch.chdir(tmp_path)
    argv = command.split() + (["src", "--out", "zoo"] if command == "zoo import"
                              else ["run", "src/t0.safetensors"])
    code, out, err = run([*argv, *TOKENS[:2], "--input-spec", "int64:2,x"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--input-spec 'int64:2,x'" in lines[0], err
    assert not (tmp_path / "zoo").exists()
