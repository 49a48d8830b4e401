"""Graph-wise edits without training: align, merge, canonicalize, prune (library and commands)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import paramgraph as pg
from paramgraph.align import align
from paramgraph.canonicalize import canonicalize
from paramgraph.merge import (_channel_stats, evaluate, interpolation_curve, loss_barrier,
                              merge, repair)
from paramgraph.prune import prune
from paramgraph.tasks.cli import main
from tests.catalogue import get, randomize
from tests.cli_archs import make_cnn

CNN = ["--arch", "tests.cli_archs:make_cnn", "--input-shape", "2,1,8,8"]
MLP = ["--arch", "tests.test_edit_ops:make_mlp", "--input-shape", "2,8"]
NETS = ("mlp_tanh", "resnet_tiny", "transformer_post_relu")  # MLP, residual CNN, transformer
GROUPED = NETS + ("resnext_tiny",)  # grouped convolutions: groups move as blocks
# branches side by side sharing their positions, and sets permuting run by run
BRANCHED = ("sknet_tiny", "resnest_tiny")


def make_mlp(hidden=(12, 10)) -> nn.Module:
    """A ReLU MLP whose widths are keyword arguments (prunable)."""
    return nn.Sequential(nn.Linear(8, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]),
                         nn.ReLU(), nn.Linear(hidden[1], 3))


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _graph(name, seed=0):
    entry = get(name)
    net = entry.build()
    if seed:
        randomize(net, 1000 + seed)
    return net, entry.example_input(), pg.from_module(net, entry.example_input())


def _outputs(net, graph, x):
    with torch.no_grad():
        return pg.load_into(copy.deepcopy(net), graph)(x)


def _power_of_two(element):
    """The element with its scales rounded to powers of two (exact in floating point)."""
    f = element.factor
    element.factor = torch.sign(f) * torch.exp2(torch.round(torch.log2(f.abs())))
    element.qk = {k: torch.diag_embed(torch.exp2(torch.randint(-2, 3, v.shape[:2]).double()))
                  for k, v in element.qk.items()}
    element.vo = {k: torch.diag_embed(torch.exp2(torch.randint(-2, 3, v.shape[:2]).double()))
                  for k, v in element.vo.items()}
    return element


# -- library ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_aligned_network_computes_the_same_function(name):
    net, x, ga = _graph(name)
    _, _, gb = _graph(name, seed=1)  # another network of the same architecture
    res = align(ga, gb)
    assert res.converged and res.similarity_after > res.similarity_before
    assert not torch.equal(res.graph.edge_value, gb.edge_value)
    ya, yb = _outputs(net, res.graph, x), _outputs(net, gb, x)
    assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5), (ya - yb).abs().max()


@pytest.mark.parametrize("name", GROUPED + BRANCHED)
def test_align_undoes_a_random_symmetry(name):
    _, _, g = _graph(name)
    moved = pg.random_symmetry(g, generator=torch.Generator().manual_seed(1), heads=False,
                               scale_range=(0.5, 2.0))
    res = align(g, moved)
    assert torch.allclose(res.graph.edge_value, g.edge_value, atol=1e-5)
    assert torch.allclose(res.graph.node_value, g.node_value, atol=1e-5)


def test_activation_matching_keeps_the_function():
    from paramgraph.activations import neuron_activations

    net_a, x, ga = _graph("resnet_tiny")
    net_b, _, gb = _graph("resnet_tiny", seed=1)
    xs = torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    acts = (neuron_activations(net_a, ga, xs), neuron_activations(net_b, gb, xs))
    assert acts[0] and set(acts[0]) == set(acts[1])
    res = align(ga, gb, match="activations", activations=acts)
    assert torch.allclose(_outputs(net_a, res.graph, x), net_b(x), atol=1e-5)


@pytest.mark.parametrize("name", GROUPED + BRANCHED + ("mha",))  # mha: a ReLU neuron reads heads
def test_canonical_form_is_identical_for_every_symmetric_copy(name):
    net, x, g = _graph(name)
    canon = canonicalize(g).graph
    gen = torch.Generator().manual_seed(5)
    # an element floating point represents exactly: bit-identical in float32
    exact = pg.apply_element(g, _power_of_two(pg.random_element(g, generator=gen)))
    assert not torch.equal(exact.edge_value, g.edge_value)
    again = canonicalize(exact).graph
    assert torch.equal(again.edge_value, canon.edge_value)
    assert torch.equal(again.node_value, canon.node_value)
    # any element (arbitrary scales, head maps) applied in float64, rounded to float32
    g64 = g.with_values(g.edge_value.double(), g.node_value.double())
    moved = pg.random_symmetry(g64, generator=gen)
    again = canonicalize(moved, dtype=torch.float32).graph
    assert torch.equal(again.edge_value, canon.edge_value)
    assert torch.equal(again.node_value, canon.node_value)
    # the same function
    assert torch.allclose(_outputs(net, canon, x), net(x), rtol=1e-5, atol=1e-5)
    # control: another network of the architecture has another canonical form
    _, _, other = _graph(name, seed=1)
    assert not torch.allclose(canonicalize(other).graph.edge_value, canon.edge_value)


def test_merge_is_a_weighted_average_and_curve_ends_at_the_networks():
    net, x, ga = _graph("mlp_relu")
    _, _, gb = _graph("mlp_relu", seed=1)
    mid = merge([ga, gb], [0.25, 0.75])
    assert torch.allclose(mid.edge_value, 0.25 * ga.edge_value + 0.75 * gb.edge_value)
    y = torch.randint(0, net(x).size(1), (x.size(0),))
    curve = interpolation_curve(copy.deepcopy(net), ga, gb, x, y, points=3)
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0]
    for point, g in ((curve[0], ga), (curve[-1], gb)):
        assert point == {"alpha": point["alpha"],
                         **evaluate(pg.load_into(copy.deepcopy(net), g), x, y)}
    line = [{"alpha": a, "loss": l} for a, l in ((0.0, 1.0), (0.5, 2.5), (1.0, 2.0))]
    assert loss_barrier(line) == pytest.approx(1.0)  # 2.5 above the line's 1.5
    with pytest.raises(pg.ParamGraphError, match="sum to"):
        merge([ga, gb], [0.5, 0.6])


@pytest.mark.parametrize("name", ("resnet1d_nobn", "resnet_tiny", "transformer_post_relu"))
def test_repair_gives_each_hidden_channel_the_average_statistics(name):
    net, x0, ga = _graph(name)
    _, _, gb = _graph(name, seed=1)
    x = torch.randn(64, *x0.shape[1:], generator=torch.Generator().manual_seed(3))
    w = [0.3, 0.7]
    merged = merge([ga, gb], w)
    fixed = repair(copy.deepcopy(net), [ga, gb], merged, x, w)
    assert not (torch.equal(fixed.edge_value, merged.edge_value)  # BN nets: node values only
                and torch.equal(fixed.node_value, merged.node_value))
    sa, sb = (_channel_stats(copy.deepcopy(net), g, x) for g in (ga, gb))
    got, before = (_channel_stats(copy.deepcopy(net), g, x) for g in (fixed, merged))
    assert got and set(got) == set(sa)  # hidden layers only: the output layer is not among them
    assert all(int(ga.perm_group[s.start]) >= 0 for s in ga.segments if s.name.endswith(".bias")
               and s.name.rsplit(".", 1)[0] in got)
    for path in got:
        for k in (0, 1):  # mean, std
            target = w[0] * sa[path][k] + w[1] * sb[path][k]
            assert torch.allclose(got[path][k], target, rtol=1e-4, atol=1e-4), (path, k)
    # the merged network did collapse somewhere; repairing an end point itself changes nothing
    assert any(bool((before[p][1] < 0.99 * (w[0] * sa[p][1] + w[1] * sb[p][1])).any())
               for p in got)
    same = repair(copy.deepcopy(net), [ga, gb], ga, x, [1.0, 0.0])
    assert torch.allclose(same.edge_value, ga.edge_value, rtol=1e-4, atol=1e-5)
    assert torch.allclose(same.node_value, ga.node_value, rtol=1e-4, atol=1e-5)


def test_prune_removes_dead_neurons_and_keeps_the_function():
    net = randomize(make_mlp(), 3)
    with torch.no_grad():  # neurons 2 and 5 of the first layer and 7 of the second are dead
        net[0].weight[[2, 5]] = 0
        net[2].weight[:, [2, 5]] = 0
        net[2].weight[7] = 0
        net[4].weight[:, 7] = 0
    x = torch.randn(4, 8)
    res = prune(pg.from_module(net, x), make_mlp, {"hidden": [12, 10]}, x)
    assert res.arch_kwargs == {"hidden": [10, 9]} and res.removed == 3
    small = make_mlp(**res.arch_kwargs)
    small.load_state_dict(res.state_dict)
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-6)


# -- commands --------------------------------------------------------------------------------------

def _save(net, path):
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _cnn(seed):
    return randomize(make_cnn(), seed)


def test_align_and_merge_commands(tmp_path, capsys):
    a, b = _save(_cnn(1), tmp_path / "a.safetensors"), _save(_cnn(2), tmp_path / "b.safetensors")
    code, out, err = run(["align", a, b, *CNN], capsys)
    assert code == 0, err
    aligned = tmp_path / "b_aligned.safetensors"
    assert "largest output change" in out and aligned.exists()
    net_b, net_al = _cnn(2), make_cnn()
    net_al.load_state_dict(load_file(str(aligned)))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net_al(x), net_b(x), atol=1e-5)
    data = tmp_path / "data.safetensors"
    save_file({"x": torch.randn(20, 64), "y": torch.randint(0, 10, (20,))}, str(data))
    code, out, err = run(["merge", a, b, "-o", tmp_path / "ab.safetensors", "--align",
                          "--curve", "3", "--eval", data, *CNN], capsys)
    assert code == 0, err
    assert "loss barrier" in out and (tmp_path / "ab.safetensors").exists()
    merged = load_file(str(tmp_path / "ab.safetensors"))
    assert merged["block.bn1.num_batches_tracked"].item() == 7  # counters come along
    code, out, err = run(["merge", a, b, a, "-o", tmp_path / "three.safetensors", *CNN], capsys)
    assert code == 0 and "merged 3 checkpoints" in out, err
    code, out, err = run(["merge", a, b, "-o", tmp_path / "abr.safetensors", "--align",
                          "--repair", "--curve", "3", "--eval", data, *CNN], capsys)
    assert code == 0, err
    assert "REPAIR on 20 inputs" in out and "(aligned, repaired)" in out
    assert not torch.equal(load_file(str(tmp_path / "abr.safetensors"))["bn.weight"],
                           merged["bn.weight"])


def test_canonicalize_command_gives_identical_files(tmp_path, capsys):
    net = _cnn(1)
    a = _save(net, tmp_path / "a.safetensors")
    g = pg.from_module(net, torch.randn(2, 1, 8, 8))
    gen = torch.Generator().manual_seed(0)
    moved = pg.apply_element(g, _power_of_two(pg.random_element(g, generator=gen)))
    b = _save(pg.load_into(copy.deepcopy(net), moved), tmp_path / "b.safetensors")
    c = _save(_cnn(2), tmp_path / "c.safetensors")  # control: another network
    assert a.read_bytes() != b.read_bytes()
    for f in (a, b, c):
        code, _, err = run(["canonicalize", f, *CNN], capsys)
        assert code == 0, err
    canon = [(tmp_path / f"{s}_canonical.safetensors").read_bytes() for s in "abc"]
    assert canon[0] == canon[1] and canon[0] != canon[2]
    # a directory: every checkpoint
    code, out, err = run(["canonicalize", tmp_path, "-o", tmp_path / "out", *CNN], capsys)
    assert code == 0 and "6 of 6" in out, err


def test_prune_command_writes_the_smaller_network_and_its_kwargs(tmp_path, capsys):
    net = randomize(make_mlp(), 3)
    with torch.no_grad():
        net[0].weight[4] = 0
        net[2].weight[:, 4] = 0
    src = _save(net, tmp_path / "m.safetensors")
    code, out, err = run(["prune", src, *MLP, "--dead-threshold", "1e-8"], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "m_pruned.safetensors.json").read_text())
    assert info["arch_kwargs"] == {"hidden": [11, 10]}
    small = make_mlp(**info["arch_kwargs"])
    small.load_state_dict(load_file(str(tmp_path / "m_pruned.safetensors")))
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-6)


def test_edit_commands_refuse_bad_input_with_one_line(tmp_path, capsys):
    a = _save(_cnn(1), tmp_path / "a.safetensors")
    mlp = _save(randomize(make_mlp(), 0), tmp_path / "mlp.safetensors")
    cases = [
        (["align", a, mlp, *CNN], "mlp.safetensors"),  # does not fit the architecture
        (["merge", a, "-o", tmp_path / "x.safetensors", *CNN], "at least two"),
        (["merge", a, a, "-o", tmp_path / "x.safetensors", "--alpha", "2", *CNN], "--alpha"),
        (["merge", a, a, "-o", tmp_path / "x.safetensors", "--curve", "3", *CNN], "--eval"),
        (["merge", a, a, "-o", tmp_path / "x.safetensors", "--repair", *CNN], "--data"),
        (["merge", a, a, "-o", tmp_path / "x.safetensors", "--curve", "3", "--eval",
          tmp_path / "nope.safetensors", *CNN], "nope.safetensors"),
        (["align", a, a, "--match", "activations", *CNN], "--data"),
        (["canonicalize", tmp_path / "missing.safetensors", *CNN], "missing.safetensors"),
        (["prune", a, "--input-shape", "2,1,8,8"], "--arch"),
        # make_cnn has one width for two channel sets: it cannot be rebuilt at the new widths
        (["prune", _save(_dead_inner_cnn(), tmp_path / "d.safetensors"), *CNN],
         "cannot rebuild"),
    ]
    for args, needle in cases:
        code, out, err = run(args, capsys)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("paramgraph: error:"), err
        assert needle in lines[0], (needle, lines[0])


def _dead_inner_cnn():
    net = _cnn(1)
    with torch.no_grad():
        net.block.conv1.weight[2] = 0
        net.block.conv2.weight[:, 2] = 0
    return net


def test_edit_commands_help_imports_no_torch(tmp_path):
    import subprocess
    import sys

    probe = ("import sys\nfrom paramgraph.tasks.cli import main\n"
             "codes = [main([c, '--help']) for c in ('align', 'merge', 'canonicalize', 'prune')]\n"
             "print('HEAVY', sorted(m for m in ('torch', 'torch_geometric') if m in sys.modules),"
             " codes)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert "HEAVY [] [0, 0, 0, 0]" in out.stdout, out.stdout[-300:] + out.stderr


def test_activation_matching_undoes_permutations_and_sign_flips():
    from paramgraph.activations import neuron_activations

    net, x, g = _graph("mlp_tanh")
    moved = pg.random_symmetry(g, generator=torch.Generator().manual_seed(2), scales=False)
    xs = torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    acts = (neuron_activations(net, g, xs),
            neuron_activations(pg.load_into(copy.deepcopy(net), moved), moved, xs))
    res = align(g, moved, match="activations", activations=acts)
    assert torch.allclose(res.graph.edge_value, g.edge_value, atol=1e-6)
