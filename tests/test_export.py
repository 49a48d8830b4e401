"""The torch.export front end: a .pt2 program converts to the same graph as the live module."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paramgraph as pg
from paramgraph.export import from_exported
from tests.catalogue import catalogue, get
from tests.cli_archs import make_cnn

FIELDS = ("edge_index", "edge_value", "edge_size", "edge_type", "node_value", "node_mask",
          "node_type", "node_layer", "node_act", "node_norm", "node_scale", "node_sign",
          "perm_group", "perm_pos", "node_head", "head_role")


class MLPRes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.c(F.gelu(self.b(h)) + h)


class Siren(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(2, 16), nn.Linear(16, 16), nn.Linear(16, 1)
        self.sine = pg.Sine(30.0)

    def forward(self, x):
        return self.l3(torch.sin(self.l2(self.sine(self.l1(x)))))


class FlattenHead(nn.Module):
    """conv -> bn -> relu -> maxpool -> flatten -> linear (a FLATTEN_LINEAR layer)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2), 1))


class SeqNorm(nn.Module):
    """conv1d, channels moved last, layer norm, silu, mean over positions."""

    def __init__(self):
        super().__init__()
        self.conv, self.ln, self.fc = nn.Conv1d(3, 5, 3), nn.LayerNorm(5), nn.Linear(5, 2)

    def forward(self, x):
        h = F.silu(self.ln(self.conv(x).transpose(1, 2)))
        return self.fc(h.mean(1))


CASES = {
    "cnn_bn_residual": (make_cnn, (2, 1, 8, 8)),
    "mlp_residual": (MLPRes, (3, 4)),
    "siren": (Siren, (5, 2)),
    "flatten_head": (FlattenHead, (2, 1, 8, 8)),
    "conv1d_layernorm": (SeqNorm, (2, 3, 9)),
}


def _randomised(make) -> nn.Module:
    torch.manual_seed(0)
    m = make().eval()
    with torch.no_grad():
        for key, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in key else torch.randn_like(t))
    return m


def _export(m, shape, decompose=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(m, (torch.randn(*shape),))
        return ep.run_decompositions() if decompose else ep


def _assert_same_graph(a, b):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f
    assert a.segments == b.segments


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("decompose", [False, True], ids=["training_ir", "core_aten"])
def test_same_graph_as_live_module(case, decompose):
    make, shape = CASES[case]
    m = _randomised(make)
    live = pg.from_module(m, torch.randn(*shape))
    graph = from_exported(_export(m, shape, decompose))
    _assert_same_graph(live, graph)
    state = pg.to_state_dict(graph)
    ref = m.state_dict()
    assert list(state) == [k for k in ref if not k.endswith("num_batches_tracked")]
    for key, t in state.items():
        assert t.dtype == ref[key].dtype and torch.equal(t, ref[key]), key


ATTENTION = ("attention", "transformer")


@pytest.mark.parametrize("name", [e.name for e in catalogue()
                                  if not set(e.tags) & set(ATTENTION) and "no-export" not in e.tags])
def test_catalogue_converts_like_the_live_module(name):
    entry = get(name)
    m, x = entry.build(), entry.example_input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(m, (x,))
    _assert_same_graph(pg.from_module(m, x), from_exported(ep))


@pytest.mark.parametrize("name", [e.name for e in catalogue() if set(e.tags) & set(ATTENTION)])
def test_catalogue_attention_is_refused(name):
    entry = get(name)
    m, x = entry.build(), entry.example_input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(m, (x,))
    with pytest.raises(pg.UnsupportedModuleError, match="attention is not supported"):
        from_exported(ep)


def test_program_saved_and_loaded_from_file(tmp_path):
    m = _randomised(make_cnn)
    path = tmp_path / "cnn.pt2"
    torch.export.save(_export(m, (2, 1, 8, 8)), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.load(path)
    _assert_same_graph(pg.from_module(m, torch.randn(2, 1, 8, 8)), from_exported(ep))


def test_exported_in_training_mode_reads_batch_norm_as_inference():
    m = _randomised(make_cnn)
    live = pg.from_module(m, torch.randn(2, 1, 8, 8))
    m.train()
    for decompose in (False, True):  # functional running-stat updates become extra outputs
        _assert_same_graph(live, from_exported(_export(m, (2, 1, 8, 8), decompose)))


def test_symmetry_of_exported_graph_preserves_the_function():
    m = _randomised(make_cnn)
    graph = from_exported(_export(m, (2, 1, 8, 8)))
    moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(1))
    twin = pg.load_into(make_cnn(), moved)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(m(x), twin(x), atol=1e-4)
        assert not torch.equal(pg.to_state_dict(moved)["stem.weight"], m.stem.weight)


def test_attention_is_refused_with_a_clear_message():
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()
    with pytest.raises(pg.UnsupportedModuleError, match="attention is not supported"):
        from_exported(_export(layer, (2, 3, 8)))


class Exp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.exp(self.fc(x))


class Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.ConvTranspose2d(4, 4, 3)

    def forward(self, x):
        return self.conv(x)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


@pytest.mark.parametrize("make, shape, message", [
    (Exp, (2, 4), r"aten\.exp.*not supported"),
    (Transposed, (2, 4, 5, 5), r"submodule 'conv' \(aten\.conv_transpose2d\)"),
    (Shared, (2, 4), r"fc\.weight"),
])
def test_unsupported_programs_name_the_operator(make, shape, message):
    with pytest.raises(pg.UnsupportedModuleError, match=message):
        from_exported(_export(make(), shape))


def test_rejects_non_program():
    with pytest.raises(TypeError, match="ExportedProgram"):
        from_exported(nn.Linear(2, 2))


class Mixed(nn.Module):
    """Own parameter and buffer at the root, nested containers, batch norms."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(2))
        self.bn = nn.BatchNorm1d(2)
        self.seq = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        self.p = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.seq(self.bn(self.a(x) * self.scale * self.p))


@pytest.mark.parametrize("make, shape", [(make_cnn, (2, 1, 8, 8)), (Mixed, (3, 2))])
def test_state_dict_order_is_the_modules(make, shape):
    from paramgraph.export import state_dict_order

    m = make().eval()
    ep = _export(m, shape)
    assert list(ep.state_dict) != list(m.state_dict())  # the program lists buffers last
    assert state_dict_order(ep) == list(m.state_dict())
