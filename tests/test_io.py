"""Graph files, checkpoint loading without code execution, atomic writes."""

from __future__ import annotations

import json
import os
import pickle
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import paramgraph as pg
from paramgraph.architecture import build_architecture, fit_state_dict
from paramgraph.atomic import atomic_path, atomic_write
from paramgraph.checkpoint import check_finite, load_checkpoint
from paramgraph.convert import convert_checkpoint
from paramgraph.errors import CheckpointError
from paramgraph.formats import GRAPH_FORMAT
from paramgraph.layout import FIELDS
from paramgraph.graphfile import read_graph_file
from paramgraph.pt2audit import audit_pt2
from paramgraph.sniff import sniff_format
from tests.cli_archs import make_cnn



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
    return m


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- atomic writes -------------------------------------------------------------------------------


def test_atomic_write_publishes_complete_file_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as f:
        f.write(b"abc")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"abc"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert _leftovers(target.parent) == ["out.bin"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_failure_leaves_old_file_and_no_temporary(tmp_path, exc):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(exc):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise exc()
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["out.bin"]


# -- graph files ---------------------------------------------------------------------------------


def test_graph_file_round_trip_is_exact_and_pickle_free(tmp_path, cnn):
    graph = pg.from_module(cnn, torch.randn(2, 1, 8, 8))
    extra = {"bn.num_batches_tracked": torch.tensor(7)}
    path = pg.save_graph(graph, tmp_path / "g.pgraph", extra=extra, metadata={"source": "x.pt"})
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file
        assert f.metadata()["format"] == GRAPH_FORMAT
        assert {k for k in f.keys() if k.startswith("graph/")} == {f"graph/{k}" for k in FIELDS}
    loaded = read_graph_file(path)
    for key in FIELDS:
        a, b = getattr(graph, key), getattr(loaded.graph, key)
        assert a.dtype == b.dtype and torch.equal(a, b), key
    assert loaded.graph.segments == graph.segments
    assert loaded.graph.num_nodes == graph.num_nodes
    assert torch.equal(loaded.extra["bn.num_batches_tracked"], extra["bn.num_batches_tracked"])
    assert loaded.metadata == {"source": "x.pt"}
    state = pg.to_state_dict(pg.load_graph(path))
    for key, t in state.items():
        assert torch.equal(t, cnn.state_dict()[key]), key


def test_edge_index_is_int32_and_files_with_int64_ids_still_load(tmp_path, cnn):
    graph = pg.from_module(cnn, torch.randn(2, 1, 8, 8))
    assert graph.edge_index.dtype == torch.int32 == FIELDS["edge_index"][0]
    src, dst = graph.endpoints()  # what scatter operations read
    assert src.dtype == dst.dtype == torch.long
    assert torch.equal(torch.stack([src, dst]), graph.edge_index.long())
    old = graph.clone()
    old.edge_index = graph.edge_index.long()  # the layout of graph files written before int32
    path = pg.save_graph(old, tmp_path / "old.pgraph")
    # control: the saver narrows int64 fields on disk and says so, which is what lets it load
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert "edge_index" in json.loads(meta["int64_as_int32"])
    save_file(tensors, str(path), metadata={**meta, "format_version": "1"})  # as version 1 wrote
    loaded = pg.load_graph(path)
    assert loaded.edge_index.dtype == torch.int32
    assert torch.equal(loaded.edge_index, graph.edge_index)


def test_graph_file_keeps_extra_scalar_fields(tmp_path, cnn):
    graph = pg.from_module(cnn, torch.randn(2, 1, 8, 8))
    graph.y = 0.75
    graph.label = torch.tensor([3])
    loaded = pg.load_graph(pg.save_graph(graph, tmp_path / "g.pgraph"))
    assert loaded.y == 0.75 and torch.equal(loaded.label, graph.label)


def test_truncated_graph_file_names_the_file(tmp_path, cnn):
    path = pg.save_graph(pg.from_module(cnn, torch.randn(2, 1, 8, 8)), tmp_path / "g.pgraph")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(pg.ParamGraphError, match=r"g\.pgraph.*(truncated|corrupt)"):
        pg.load_graph(path)


def test_newer_graph_format_is_refused(tmp_path, cnn):
    path = pg.save_graph(pg.from_module(cnn, torch.randn(2, 1, 8, 8)), tmp_path / "g.pgraph")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, "format_version": "99"})
    with pytest.raises(pg.GraphFormatError, match="newer"):
        pg.load_graph(path)


def test_inconsistent_graph_file_is_refused(tmp_path, cnn):
    path = pg.save_graph(pg.from_module(cnn, torch.randn(2, 1, 8, 8)), tmp_path / "g.pgraph")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["graph/edge_index"] = tensors["graph/edge_index"] + 1000  # points past the nodes
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(pg.GraphFormatError, match=r"g\.pgraph.*edge_index"):
        pg.load_graph(path)


def test_checkpoint_is_not_a_graph_file(tmp_path, cnn):
    save_file(cnn.state_dict(), str(tmp_path / "c.safetensors"))
    with pytest.raises(pg.GraphFormatError, match="not a paramgraph graph file"):
        pg.load_graph(tmp_path / "c.safetensors")


# -- checkpoints ---------------------------------------------------------------------------------


def test_load_state_dicts(tmp_path, cnn):
    sd = cnn.state_dict()
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save(sd, tmp_path / "b.pt")
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "c.pth")
    torch.save(sd, tmp_path / "d.pt", _use_new_zipfile_serialization=False)
    for name in ("a.safetensors", "b.pt", "c.pth", "d.pt"):
        loaded = load_checkpoint(tmp_path / name)
        assert list(loaded) == list(sd) or set(loaded) == set(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd), name


def test_pickled_module_needs_trust(tmp_path, cnn):
    torch.save(cnn, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"whole\.pt: refusing to unpickle.*SmallCNN.*"
                                              r"--trust-pickle"):
        load_checkpoint(tmp_path / "whole.pt")
    assert isinstance(load_checkpoint(tmp_path / "whole.pt", trust_pickle=True), nn.Module)


@pytest.mark.parametrize("how", ["pickle", "torch_zip"])
def test_malicious_pickle_is_refused_without_running(tmp_path, how):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"w": Evil(target)}, protocol=2))
    else:
        torch.save({"w": Evil(target)}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(path)
    assert not target.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello, this is not a checkpoint", "unknown format"),
    (b"PK\x03\x04" + b"\0" * 40, "corrupt or truncated zip"),
    (b"\x80\x02garbage", "corrupt"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"x\.pt: .*{message}"):
        load_checkpoint(path)


def test_missing_and_truncated(tmp_path, cnn):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    save_file(cnn.state_dict(), str(tmp_path / "a.safetensors"))
    torch.save(cnn.state_dict(), tmp_path / "b.pt")
    for name in ("a.safetensors", "b.pt"):
        data = (tmp_path / name).read_bytes()
        for cut in (20, len(data) // 2, len(data) - 10):
            (tmp_path / name).write_bytes(data[:cut])
            with pytest.raises(CheckpointError, match=rf"{name}: .*(truncated|corrupt)"):
                load_checkpoint(tmp_path / name)


def test_sniff_format(tmp_path, cnn):
    save_file(cnn.state_dict(), str(tmp_path / "a.bin"))
    torch.save(cnn.state_dict(), tmp_path / "b.bin")
    pg.save_graph(pg.from_module(cnn, torch.randn(1, 1, 8, 8)), tmp_path / "c.bin")
    assert [sniff_format(tmp_path / n) for n in ("a.bin", "b.bin", "c.bin")] == \
        ["safetensors", "torch", "graph"]


def test_check_finite_names_tensors():
    check_finite({"a": torch.ones(3), "n": torch.tensor([1, 2])}, "f.pt")
    bad = {"ok": torch.ones(2), "w": torch.tensor([float("nan"), 1.0, float("inf")]),
           "b": torch.tensor([float("-inf")])}
    with pytest.raises(CheckpointError, match=r"f\.pt: non-finite weights in w \(1 NaN, 1 inf\), "
                                              r"b \(1 inf\).*--allow-nonfinite"):
        check_finite(bad, "f.pt")


# -- .pt2 programs -------------------------------------------------------------------------------


def _save_program(m, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(m, (torch.randn(2, 1, 8, 8),)), path)


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)


def test_plain_program_passes_audit_and_loads(tmp_path, cnn):
    _save_program(cnn, tmp_path / "m.pt2")
    audit_pt2((tmp_path / "m.pt2").read_bytes(), tmp_path / "m.pt2")
    ep = load_checkpoint(tmp_path / "m.pt2")
    assert isinstance(ep, torch.export.ExportedProgram)
    assert torch.equal(ep.state_dict["stem.weight"], cnn.stem.weight)


def _evil_sample_inputs(target):
    def edit(name, data):
        return pickle.dumps((Evil(target),), protocol=2) if "sample_inputs" in name else data
    return edit


def _pickled_weight(name, data):
    if name.endswith("_weights_config.json"):
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()
    return data


def _sympy_code(name, data):
    if name.endswith("models/model.json"):
        # A symbolic size whose expression torch.export.load hands to sympy.sympify (eval).
        program = json.loads(data)
        metas = program["graph_module"]["graph"]["tensor_values"]
        metas[next(iter(metas))]["sizes"][0] = {"as_expr": {
            "expr_str": "__import__('os').system('true')", "hint": {"as_int": 2}}}
        return json.dumps(program).encode()
    return data


@pytest.mark.parametrize("case", ["sample_inputs", "use_pickle", "sympy", "aoti", "legacy"])
def test_unsafe_programs_are_refused(tmp_path, cnn, case):
    _save_program(cnn, tmp_path / "m.pt2")
    target = tmp_path / "pwned"
    bad = tmp_path / "bad.pt2"
    if case == "aoti":
        _rewrite_zip(tmp_path / "m.pt2", bad, lambda n, d: d)
        with zipfile.ZipFile(bad, "a") as z:
            root = z.namelist()[0].split("/")[0]
            z.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    elif case == "legacy":
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("version", "1.0")
            z.writestr("serialized_state_dict.pt", pickle.dumps(Evil(target), protocol=2))
            z.writestr("archive_format", "pt2")
    else:
        edit = {"sample_inputs": _evil_sample_inputs(target), "use_pickle": _pickled_weight,
                "sympy": _sympy_code}[case]
        _rewrite_zip(tmp_path / "m.pt2", bad, edit)
    with pytest.raises(CheckpointError, match=r"bad\.pt2: refusing"):
        audit_pt2(bad.read_bytes(), bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt2: refusing.*--trust-pickle"):
        load_checkpoint(bad)
    assert not target.exists()


def test_truncated_program(tmp_path, cnn):
    _save_program(cnn, tmp_path / "m.pt2")
    data = (tmp_path / "m.pt2").read_bytes()
    (tmp_path / "m.pt2").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.pt2: corrupt or truncated"):
        load_checkpoint(tmp_path / "m.pt2")


# -- architectures and conversion ----------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("tests.cli_archs", "must look like"),
    ("no_such_pkg.nets:make", "cannot import 'no_such_pkg.nets'"),
    ("tests.cli_archs:nothing", "has no attribute 'nothing'"),
    ("tests.cli_archs:not_a_module", "not an nn.Module"),
])
def test_build_architecture_errors(spec, message):
    with pytest.raises(pg.ParamGraphError, match=message):
        build_architecture(spec)


def test_build_architecture_from_file(tmp_path):
    (tmp_path / "nets.py").write_text("import torch\n"
                                      "def make(width=3):\n"
                                      "    return torch.nn.Linear(2, width)\n")
    net = build_architecture(f"{tmp_path / 'nets.py'}:make", {"width": 5})
    assert net.out_features == 5


def test_fit_state_dict_lists_every_mismatch(cnn):
    sd = dict(cnn.state_dict())
    del sd["head.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["stem.weight"] = torch.zeros(4, 1, 3, 3)
    with pytest.raises(CheckpointError, match=r"c\.pt: does not fit arch: missing: head\.bias; "
                                              r"unexpected: extra\.weight; wrong shape: "
                                              r"stem\.weight \(checkpoint \[4, 1, 3, 3\], "
                                              r"architecture \[8, 1, 3, 3\]\)"):
        fit_state_dict(make_cnn(), sd, "c.pt", "arch")


def test_fit_state_dict_keeps_checkpoint_dtypes(cnn):
    sd = {k: v.double() if v.is_floating_point() else v for k, v in cnn.state_dict().items()}
    module = fit_state_dict(make_cnn(), sd, "c.pt")
    assert module.stem.weight.dtype == torch.float64
    assert torch.equal(module.stem.weight, sd["stem.weight"])


def test_convert_checkpoint_keeps_everything(tmp_path, cnn):
    torch.save(cnn.state_dict(), tmp_path / "c.pt")
    out = convert_checkpoint(tmp_path / "c.pt", arch="tests.cli_archs:make_cnn",
                             input_shape=(2, 1, 8, 8))
    state = {**pg.to_state_dict(out.graph), **out.extra}
    assert set(state) == set(cnn.state_dict())
    assert all(torch.equal(state[k], v) for k, v in cnn.state_dict().items())
    assert json.loads(out.metadata["keys"]) == list(cnn.state_dict())
    with pytest.raises(CheckpointError, match="--arch"):
        convert_checkpoint(tmp_path / "c.pt", input_shape=(2, 1, 8, 8))
    with pytest.raises(CheckpointError, match="--input-shape"):
        convert_checkpoint(tmp_path / "c.pt", arch="tests.cli_archs:make_cnn")


def test_unsupported_network_error_names_the_file(tmp_path):
    (tmp_path / "nets.py").write_text("import torch\n"
                                      "class Exp(torch.nn.Module):\n"
                                      "    def __init__(self):\n"
                                      "        super().__init__(); self.fc = torch.nn.Linear(2, 2)\n"
                                      "    def forward(self, x):\n"
                                      "        return torch.exp(self.fc(x))\n")
    torch.save({"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(2)}, tmp_path / "e.pt")
    with pytest.raises(pg.UnsupportedModuleError, match=r"e\.pt: .*exp"):
        convert_checkpoint(tmp_path / "e.pt", arch=f"{tmp_path / 'nets.py'}:Exp",
                           input_shape=(1, 2))



def test_dynamic_shape_program_passes_audit(tmp_path, cnn):
    # Symbolic sizes are stored as "Symbol('s77', positive=True, integer=True)": plain data.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(cnn, (torch.randn(2, 1, 8, 8),),
                                 dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(ep, tmp_path / "dyn.pt2")
    graph = pg.from_exported(load_checkpoint(tmp_path / "dyn.pt2"))
    live = pg.from_module(cnn, torch.randn(2, 1, 8, 8))
    assert torch.equal(graph.edge_index, live.edge_index) and graph.segments == live.segments


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "s0.__class__", "exec('1')",
                                  "S.true", "lambda: 1"])
def test_shape_expression_audit(expr):
    from paramgraph.pt2audit import _check_expression

    def refuse(what):
        raise CheckpointError("p.pt2", what)

    _check_expression("Symbol('s77', positive=True, integer=True)", refuse)
    _check_expression("2*s0 + FloorDiv(s1, 3)", refuse)
    with pytest.raises(CheckpointError):
        _check_expression(expr, refuse)


def test_convert_does_not_invent_entries(tmp_path, cnn):
    sd = {k: v for k, v in cnn.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "c.pt")
    out = convert_checkpoint(tmp_path / "c.pt", arch="tests.cli_archs:make_cnn",
                             input_shape=(2, 1, 8, 8))
    assert out.extra == {}
    assert set(pg.to_state_dict(out.graph)) == set(sd)


def test_bad_arch_error_names_the_checkpoint(tmp_path, cnn):
    torch.save(cnn.state_dict(), tmp_path / "c.pt")
    with pytest.raises(pg.ParamGraphError, match=r"c\.pt: --arch 'nope:x': cannot import"):
        convert_checkpoint(tmp_path / "c.pt", arch="nope:x", input_shape=(2, 1, 8, 8))


def test_atomic_write_failure_removes_directories_it_made(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a" / "b" / "out.bin") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError()
    assert _leftovers(tmp_path) == []
