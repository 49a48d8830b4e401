"""The transformers people use (issue 14): embeddings, learned and sinusoidal positions, CLS
tokens, attention written out (fused qkv, GPT-2's Conv1D, eager softmax, scaled-dot-product
attention with masks and is_causal), RMSNorm, rotary embeddings and SwiGLU, through both front
ends, from the command line with token-id inputs, and the controls that show the checks can fail.

The look-alikes are ``catalogue.TRANSFORMER_LOOKALIKES`` (pure torch; transformers and timm are
never needed).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import paramgraph as pg
from catalogue import (
    TRANSFORMER_LOOKALIKES,
    FusedAttention,
    GPTBlock,
    GPTLike,
    GQABlock,
    GQALlama,
    LlamaLike,
    ViTCls,
    _images,
    _tokens,
    assert_exact_and_symmetric,
    assert_state_equal,
    randomize,
    reference_state,
    relative_error,
    rotate_half,
    states_differ,
)
from paramgraph import EdgeType, HeadRole, NodeType, NormKind
from paramgraph.errors import ParamGraphError, UnsupportedModuleError
from paramgraph.export import from_exported
from paramgraph.inputs import InputSpec, make_inputs, parse_input_spec
from paramgraph.symmetry import GroupElement, apply_element, random_element


class ViTRegisters(ViTCls):
    """timm's ViT with register tokens (no_embed_class): learned positions added to the patches,
    then a CLS token and two registers (one ``[1, 2, dim]`` parameter) joined in front."""

    def __init__(self, channels=3, dim=8, heads=2, classes=3, patches=4, registers=2):
        super().__init__(channels, dim, heads, classes, patches)
        self.pos_embed = nn.Parameter(torch.zeros(1, patches, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, registers, dim))

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos_embed
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.reg_token.expand(b, -1, -1), x],
                      dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


class TiedGPT(GPTLike):
    """GPT-2 as Hugging Face ties it: the language-model head's weight is the token table."""

    def __init__(self):
        super().__init__()
        self.lm_head.weight = self.wte.weight


class HFRMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm, written in tensor operations (a cast, pow, mean, rsqrt)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        dtype = x.dtype
        h = x.to(torch.float64)  # HF casts to float32; float64 keeps the test's precision
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class NewGELU(nn.Module):
    """GPT-2's default activation ``gelu_new``: tanh-GELU in arithmetic."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                           * (x + 0.044715 * torch.pow(x, 3.0))))


def hf_spelled(module: nn.Module) -> nn.Module:
    """``module`` with every nn.RMSNorm written out as HFRMSNorm (same state_dict)."""
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.RMSNorm):
            parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            setattr(parent, name.rpartition(".")[2], HFRMSNorm(child.normalized_shape[0]))
    return module


class HFGPTBlock(GPTBlock):
    """A GPT block whose MLP uses gelu_new written out (Hugging Face GPT2MLP)."""

    def __init__(self, dim=8, heads=2):
        super().__init__(dim, heads)
        self.act = NewGELU()

    def mlp_act(self, h):
        return self.act(h)


class HFGPT(GPTLike):
    def __init__(self):
        super().__init__()
        self.h = nn.ModuleList(HFGPTBlock() for _ in range(2))


# the catalogue's look-alikes and those of the spellings added here
LOOKALIKES = {
    **TRANSFORMER_LOOKALIKES,
    "gpt_tied_embeddings": (lambda: randomize(TiedGPT(), 405), _tokens(11)),
    "llama_hf_rmsnorm": (lambda: randomize(hf_spelled(GQALlama()), 406), _tokens(11)),
    "gpt_gelu_new": (lambda: randomize(HFGPT(), 407), _tokens(11)),
    "vit_registers": (lambda: randomize(ViTRegisters(), 409), _images()),
}
NAMES = sorted(LOOKALIKES)
FIELDS = ("edge_index", "edge_type", "edge_size", "edge_value", "node_type", "node_value",
          "node_mask", "node_act", "node_norm", "node_layer", "perm_group", "perm_pos",
          "node_head", "head_role", "node_scale", "node_sign")


def convert64(name):
    factory, inputs = LOOKALIKES[name]
    module = factory().double()
    return module, inputs, pg.from_module(module, inputs(0))


def function_change(module, inputs, graph) -> float:
    x = inputs(7)
    with torch.no_grad():
        want = module(x)
        got = pg.load_into(copy.deepcopy(module), graph)(x)
    return relative_error(got, want)


@pytest.mark.parametrize("name", NAMES)
def test_lookalike_round_trip_is_bit_exact_and_symmetry_keeps_the_function(name):
    module, inputs, graph = convert64(name)
    assert_exact_and_symmetric(module, graph, lambda moved: function_change(module, inputs,
                                                                             moved))
    # control: a move outside the group (every weight nudged by 1e-3) changes the function
    nudged = graph.with_values(graph.edge_value * (1 + 1e-3 * torch.randn(
        graph.edge_value.shape, generator=torch.Generator().manual_seed(0),
        dtype=torch.float64)), graph.node_value)
    assert function_change(module, inputs, nudged) > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_both_front_ends_give_the_same_graph(name):
    factory, inputs = LOOKALIKES[name]
    module = factory().eval()
    x = inputs(0).float() if inputs(0).is_floating_point() else inputs(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = from_exported(torch.export.export(module, (x,)))
    traced = pg.from_module(module, x)
    for field in FIELDS:
        assert torch.equal(getattr(traced, field), getattr(exported, field)), field
    assert_state_equal(pg.to_state_dict(exported), reference_state(module))


def test_pt2_of_a_transformer_converts_bit_exactly(tmp_path):
    from paramgraph.convert import convert_checkpoint

    factory, inputs = TRANSFORMER_LOOKALIKES["gpt_decoder"]
    module = factory().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(module, (inputs(0),)), tmp_path / "gpt.pt2")
    converted = convert_checkpoint(tmp_path / "gpt.pt2")
    assert_state_equal(pg.to_state_dict(converted.graph), reference_state(module))


def _count(graph, field, code) -> int:
    return int((getattr(graph, field) == int(code)).sum())


def test_gpt_graph_has_token_and_position_nodes_and_attention_heads():
    module, _, graph = convert64("gpt_decoder")
    assert _count(graph, "node_type", NodeType.TOKEN) == 11
    assert _count(graph, "node_type", NodeType.POSITION) == 8
    assert _count(graph, "edge_type", EdgeType.EMBED) == (11 + 8) * 8
    # two blocks: 8 query, key and value neurons each, carved out of each fused Conv1D
    for t in (NodeType.ATTN_Q, NodeType.ATTN_K, NodeType.ATTN_V):
        assert _count(graph, "node_type", t) == 16
    assert _count(graph, "edge_type", EdgeType.ATTN_IN_Q) == 2 * 8 * 8
    assert _count(graph, "edge_type", EdgeType.ATTN_OUT) == 2 * 8 * 8
    # token and position nodes are fixed; the residual stream permutes (one group)
    fixed = graph.node_type.long().unsqueeze(1) == torch.tensor(
        [int(NodeType.TOKEN), int(NodeType.POSITION)])
    assert bool((graph.perm_group[fixed.any(1)] == -1).all())
    q = graph.node_type == int(NodeType.ATTN_Q)
    assert set(graph.head_role[q].tolist()) == {int(HeadRole.QK)}
    assert set(graph.node_head[q].tolist()) == {0, 1}


def test_vit_cls_token_and_learned_positions_are_recorded():
    _, _, graph = convert64("vit_cls_learned_pos")
    assert _count(graph, "node_type", NodeType.SEQUENCE) == 8
    assert _count(graph, "edge_type", EdgeType.SEQUENCE) == 16
    assert _count(graph, "node_type", NodeType.POSITION) == 5
    names = graph.segments.names()
    assert "cls_token" in names and "pos_embed" in names


def test_register_tokens_are_a_table_of_positions():
    _, _, graph = convert64("vit_registers")
    # 4 patch positions, 2 registers (one [1, 2, 8] parameter: 2 values per feature, a table);
    # the CLS token stays 8 bias-only neurons
    assert _count(graph, "node_type", NodeType.POSITION) == 4 + 2
    assert _count(graph, "edge_type", EdgeType.EMBED) == (4 + 2) * 8
    assert _count(graph, "edge_type", EdgeType.SEQUENCE) == 3 * 8
    names = graph.segments.names()
    assert "reg_token" in names and "cls_token" in names


def test_sinusoidal_positions_pin_the_residual_stream():
    _, _, graph = convert64("vit_sinusoidal")
    assert _count(graph, "node_type", NodeType.CONSTANT) == 8
    assert _count(graph, "node_norm", NormKind.LAYER) > 0
    stream = graph.node_type == int(NodeType.RESIDUAL)
    assert bool((graph.perm_group[stream] == -1).all())  # a constant added: not permutable
    hidden = graph.node_act == int(pg.Activation.GELU)
    assert bool((graph.perm_group[hidden] >= 0).all())  # the MLP's hidden neurons still are


def test_llama_rotary_heads_admit_only_scaled_rotations():
    module, inputs, graph = convert64("llama_block")
    q = graph.node_type == int(NodeType.ATTN_Q)
    v = graph.node_type == int(NodeType.ATTN_V)
    assert set(graph.head_role[q].tolist()) == {int(HeadRole.QK_ROTARY)}
    assert set(graph.head_role[v].tolist()) == {int(HeadRole.VO)}
    # 2 layers x (q, k) x 2 heads x 2 pairs of a head's 4 dimensions
    assert _count(graph, "edge_type", EdgeType.ROTARY) == 2 * 2 * 2 * 2
    assert _count(graph, "node_norm", NormKind.RMS) > 0
    # the function is kept under the recorded group (head maps on)
    moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(3),
                               permutations=False, scales=False, signs=False)
    assert states_differ(pg.to_state_dict(moved), reference_state(module))
    assert function_change(module, inputs, moved) < 1e-10
    # control 1: a general invertible q/k map (not commuting with the rotation) breaks it
    element = random_element(graph, generator=torch.Generator().manual_seed(3),
                             permutations=False, scales=False, signs=False)
    for key, m in element.qk.items():
        element.qk[key] = m + 0.3 * torch.randn(m.shape, generator=torch.Generator().manual_seed(1),
                                                dtype=torch.float64)
    assert function_change(module, inputs, apply_element(graph, element)) > 1e-3
    # control 2: permuting dimensions inside a rotary head (a symmetry without the rotation)
    # changes the function, and the ROTARY edges make the graph refuse it as a group element
    swapped = copy.deepcopy(module)
    with torch.no_grad():
        for proj in (swapped.layers[0].q_proj, swapped.layers[0].k_proj):
            proj.weight[[0, 1]] = proj.weight[[1, 0]]
    x = inputs(7)
    with torch.no_grad():
        assert relative_error(swapped(x), module(x)) > 1e-3
    wrong = copy.copy(graph)
    wrong.head_role = torch.where(graph.head_role == int(HeadRole.QK_ROTARY),
                                  torch.tensor(int(HeadRole.QK), dtype=torch.int8),
                                  graph.head_role)
    with pytest.raises(ValueError, match="does not map the graph onto itself"):
        pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(0), scales=False,
                           signs=False, heads=False)


def test_causal_attention_is_read_and_a_wrong_head_boundary_is_caught():
    module, inputs, graph = convert64("gpt_decoder")
    wrong = copy.copy(graph)
    wrong.node_head = torch.where(graph.node_head >= 0, graph.node_head.flip(0) * 0, graph.node_head)
    # one head of 8 instead of two of 4: a 8x8 head map mixes the heads
    moved = pg.random_symmetry(wrong, generator=torch.Generator().manual_seed(0),
                               permutations=False, scales=False, signs=False)
    assert function_change(module, inputs, moved) > 1e-3


class MaskedVit(nn.Module):
    """Optional ``attn_mask`` (timm's signature): left at None, or given as an additive mask."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.attn = FusedAttention(8, 2)
        self.out = nn.Linear(8, 2)

    def forward(self, x, attn_mask=None):
        return self.out(self.attn(self.inp(x), attn_mask))


def test_optional_inputs_tuples_and_dicts_of_inputs():
    module = randomize(MaskedVit(), 7).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.zeros(2, 1, 5, 5, dtype=torch.float64).masked_fill(
        torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    plain = pg.from_module(module, x)
    for example in ((x,), {"x": x}, (x, mask), {"x": x, "attn_mask": mask}):
        graph = pg.from_module(module, example)
        assert torch.equal(graph.edge_index, plain.edge_index)
        assert_state_equal(pg.to_state_dict(graph), reference_state(module))
    with pytest.raises(UnsupportedModuleError, match="not keyword inputs"):
        pg.from_module(module, {"y": x})


def test_token_ids_as_float_are_refused_with_a_hint():
    module = GPTLike()
    with pytest.raises(UnsupportedModuleError, match="input-spec"):
        pg.from_module(module, torch.zeros(2, 6))


def _heads_of(graph, ntype, layer_first_node: int) -> Tensor:
    """Nodes of type ``ntype`` in the attention block whose first query node is given."""
    group = graph.perm_group[layer_first_node]
    return ((graph.node_type == int(ntype)) & (graph.perm_group == group)).nonzero().squeeze(1)


def _first_block(graph) -> tuple[Tensor, Tensor, Tensor]:
    """The query, key and value nodes of the graph's first attention block."""
    q0 = int((graph.node_type == int(NodeType.ATTN_Q)).nonzero()[0])
    return tuple(_heads_of(graph, t, q0) for t in (NodeType.ATTN_Q, NodeType.ATTN_K,
                                                   NodeType.ATTN_V))


def _assert_the_group_keeps_the_function(module, inputs, graph, seed: int) -> None:
    """Head maps alone, then the whole group: the weights move, the function stays."""
    for kw in ({"permutations": False, "scales": False, "signs": False}, {}):
        moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(seed), **kw)
        assert states_differ(pg.to_state_dict(moved), reference_state(module))
        assert function_change(module, inputs, moved) < 1e-10


def _query_head_left_behind(graph, element, q: Tensor, head: int):
    """``element`` applied to the graph, except that query head ``head``'s projection keeps its
    old values while the key head it shares moves: an untied map, no symmetry."""
    src, dst = graph.edge_index
    moved = apply_element(graph, element)
    rows = q[graph.node_head[q] == head]
    into = ((graph.edge_type == int(EdgeType.ATTN_IN_Q)) & torch.isin(dst, rows)).nonzero()
    ids = graph.edge_offsets()[into.squeeze(1)]
    values = moved.edge_value.clone()
    values[ids] = graph.edge_value[ids]
    return moved.with_values(values, moved.node_value)


def test_grouped_query_heads_share_their_key_value_maps():
    module, inputs, graph = convert64("llama_gqa")
    src, dst = graph.edge_index
    q, k, v = _first_block(graph)
    assert (q.numel(), k.numel(), v.numel()) == (16, 8, 8)
    assert graph.node_head[q].tolist() == [h for h in range(4) for _ in range(4)]
    assert graph.node_head[k].tolist() == [g for g in range(2) for _ in range(4)]
    # query head h is wired to key head h // 2; each value neuron feeds o_proj once per query head
    qk = (graph.edge_type == int(EdgeType.ATTN_QK)) & torch.isin(src, q)
    assert torch.equal(graph.node_head[dst[qk]], graph.node_head[src[qk]] // 2)
    out = (graph.edge_type == int(EdgeType.ATTN_OUT)) & torch.isin(src, v)
    assert int(out.sum()) == 2 * v.numel() * 16
    # the tied group keeps the function: heads maps only, then everything
    _assert_the_group_keeps_the_function(module, inputs, graph, 5)
    # control 1: untie the query map, leaving query head 1 unmoved while its key head (0) moves
    element = random_element(graph, generator=torch.Generator().manual_seed(5),
                             permutations=False, scales=False, signs=False)
    assert function_change(module, inputs, _query_head_left_behind(graph, element, q, 1)) > 1e-3
    # control 2: swapping query heads 0 and 2 (of key heads 0 and 1) without their key heads is
    # no symmetry, and the graph refuses it as a group element
    perm = torch.arange(graph.num_nodes)
    perm[q[:4]], perm[q[8:12]] = q[8:12], q[:4]
    wrong = GroupElement(perm, torch.ones(graph.num_nodes, dtype=torch.float64), {}, {})
    with pytest.raises(ValueError, match="does not map the graph onto itself"):
        apply_element(graph, wrong)
    swapped = copy.deepcopy(module)
    with torch.no_grad():
        w = swapped.layers[0].q_proj.weight
        w[:4], w[8:12] = w[8:12].clone(), w[:4].clone()
        o = swapped.layers[0].o_proj.weight
        o[:, :4], o[:, 8:12] = o[:, 8:12].clone(), o[:, :4].clone()
    x = inputs(7)
    with torch.no_grad():
        assert relative_error(swapped(x), module(x)) > 1e-3
    # align and canonicalize do not know the tied group yet: they say so
    from paramgraph.canonicalize import canonicalize

    with pytest.raises(ParamGraphError, match="grouped-query attention heads cannot be aligned"):
        canonicalize(graph)


def test_tied_embeddings_move_together():
    module, inputs, graph = convert64("gpt_tied_embeddings")
    assert module.lm_head.weight is module.wte.weight
    for seed in range(2):
        state = pg.to_state_dict(pg.random_symmetry(graph,
                                                    generator=torch.Generator().manual_seed(seed)))
        assert not torch.equal(state["wte.weight"], module.wte.weight)
        assert torch.equal(state["wte.weight"], state["lm_head.weight"])  # one parameter
    # the table's features and the head's inputs are one permutable set, with no scales
    src, dst = graph.edge_index
    table = graph.node_type[src] == int(NodeType.TOKEN)
    head = graph.node_type[dst] == int(NodeType.OUTPUT)
    features, inputs_of_head = dst[table].unique(), src[head].unique()
    assert graph.perm_group[features].unique().tolist() == \
        graph.perm_group[inputs_of_head].unique().tolist() != [-1]
    assert not bool(graph.node_scale[inputs_of_head].any() | graph.node_sign[features].any())
    # control: the same weights untied (two parameters) have a larger group (the final norm's
    # scale moves into the head alone), whose moves break the tied network
    untied = copy.deepcopy(module)
    untied.lm_head.weight = nn.Parameter(module.wte.weight.detach().clone())
    loose = pg.from_module(untied, inputs(0))
    assert int(loose.node_scale.sum()) > int(graph.node_scale.sum())
    moved = pg.random_symmetry(loose, generator=torch.Generator().manual_seed(0))
    state = pg.to_state_dict(moved)
    assert not torch.equal(state["wte.weight"], state["lm_head.weight"])
    assert function_change(untied, inputs, moved) < 1e-10
    assert function_change(module, inputs, moved) > 1e-3


def test_a_table_reused_by_a_hidden_layer_pins_its_outputs():
    class Reused(nn.Module):  # the table reused as a square hidden layer: outputs are tokens
        def __init__(self):
            super().__init__()
            self.wte, self.fc = nn.Embedding(8, 8), nn.Linear(8, 8, bias=False)
            self.fc.weight = self.wte.weight
            self.out = nn.Linear(8, 3)

        def forward(self, idx):
            return self.out(torch.relu(self.fc(torch.relu(self.wte(idx)))))

    module = randomize(Reused(), 9).double()
    inputs = _tokens(8, (2, 4))
    graph = pg.from_module(module, inputs(0))
    assert_state_equal(pg.to_state_dict(graph), reference_state(module))
    hidden = graph.edge_index[1][graph.edge_type == int(EdgeType.LINEAR)].unique()[:8]
    assert bool((graph.perm_group[hidden] == -1).all()) and not bool(graph.node_scale[hidden].any())
    for seed in range(2):
        moved = pg.random_symmetry(graph, generator=torch.Generator().manual_seed(seed))
        assert states_differ(pg.to_state_dict(moved), reference_state(module))
        assert function_change(module, inputs, moved) < 1e-10


@pytest.mark.parametrize("spelled, fused", [("llama_hf_rmsnorm", GQALlama),
                                            ("gpt_gelu_new", GPTLike)])
def test_written_out_rmsnorm_and_gelu_new_give_the_module_graph(spelled, fused):
    factory, inputs = LOOKALIKES[spelled]
    module = factory()
    reference = fused()
    reference.load_state_dict(module.state_dict())
    for convert in (pg.from_module, _exported):
        a, b = convert(module, inputs(0)), convert(reference.eval(), inputs(0))
        for field in FIELDS:
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    code = NormKind.RMS if "rms" in spelled else pg.Activation.GELU_TANH
    field = "node_norm" if "rms" in spelled else "node_act"
    assert _count(a, field, code) > 0
    # control: a constant off by 1e-3 is not the pattern (read op by op, and refused)
    off = copy.deepcopy(module)
    if "rms" in spelled:
        off.layers[0].input_layernorm.forward = lambda x: x * torch.rsqrt(
            x.pow(3).mean(-1, keepdim=True) + 1e-6)
    else:
        off.h[0].act.forward = lambda x: 0.5 * x * (1.0 + torch.tanh(0.798 * (
            x + 0.044715 * torch.pow(x, 3.0))))
    with pytest.raises(UnsupportedModuleError):
        pg.from_module(off, inputs(0))


def _exported(module, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_exported(torch.export.export(module, (x,)))


def test_multi_query_attention_with_rope_keeps_one_rotary_key_value_head():
    module, inputs, graph = convert64("llama_mqa_rope")
    src, dst = graph.edge_index
    q, k, v = _first_block(graph)
    assert (q.numel(), k.numel(), v.numel()) == (16, 4, 4)
    assert set(graph.node_head[k].tolist()) == {0}
    assert set(graph.head_role[torch.cat([q, k])].tolist()) == {int(HeadRole.QK_ROTARY)}
    # 3 layers x (4 query heads + the key head) x 2 pairs of a head's 4 dimensions
    assert _count(graph, "edge_type", EdgeType.ROTARY) == 3 * 5 * 2
    qk = (graph.edge_type == int(EdgeType.ATTN_QK)) & torch.isin(src, q)
    assert set(graph.node_head[dst[qk]].tolist()) == {0}
    # the tied rotary group keeps the function: head maps only, then everything
    _assert_the_group_keeps_the_function(module, inputs, graph, 6)
    # control 1: a general invertible q/k map (not commuting with the rotation) breaks it
    element = random_element(graph, generator=torch.Generator().manual_seed(6),
                             permutations=False, scales=False, signs=False)
    general = copy.deepcopy(element)
    for key, m in general.qk.items():
        general.qk[key] = m + 0.3 * torch.randn(m.shape, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(1))
    assert function_change(module, inputs, apply_element(graph, general)) > 1e-3
    # control 2: query head 1 left unmoved while the key head it shares moves
    assert function_change(module, inputs, _query_head_left_behind(graph, element, q, 1)) > 1e-3


def test_rope_on_a_head_not_split_off_by_a_view_is_refused_in_one_line():
    class Unsqueezed(nn.Module):  # the key head made by unsqueeze(1), not view(b, t, 1, d)
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(8, n) for n in (8, 4, 4, 8))

        def forward(self, x):
            b, t, _ = x.shape
            angle = torch.arange(t, dtype=x.dtype)[:, None] * torch.tensor([1.0, 0.5, 1.0, 0.5])
            q = self.q(x).view(b, t, 2, 4).transpose(1, 2)
            k, v = self.k(x).unsqueeze(1), self.v(x).view(b, t, 1, 4).transpose(1, 2)
            q, k = (h * angle.cos() + rotate_half(h) * angle.sin() for h in (q, k))
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            return self.o(y.transpose(1, 2).reshape(b, t, 8))

    with pytest.raises(UnsupportedModuleError, match=r"split the head with view") as err:
        pg.from_module(Unsqueezed(), torch.randn(2, 3, 8))
    assert "\n" not in str(err.value)


def test_key_value_heads_shared_out_of_order_are_refused_in_one_line():
    class Tiled(nn.Module):  # query head h reads key head h % 2: tiled, not repeat_kv's order
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            b, t, _ = x.shape
            q = self.q(x).view(b, t, 4, 2).transpose(1, 2)
            k, v = (f(x).view(b, t, 2, 2).transpose(1, 2)[:, None].expand(b, 2, 2, t, 2)
                    .reshape(b, 4, t, 2) for f in (self.k, self.v))
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 8)

    with pytest.raises(UnsupportedModuleError, match="not shared by consecutive query heads") \
            as err:
        pg.from_module(Tiled(), torch.randn(2, 3, 8))
    assert "\n" not in str(err.value)


def test_input_spec_parses_and_makes_inputs():
    specs = parse_input_spec("int64:1,16:0-100; attention_mask=int64:1,16:1-2")
    assert specs == [InputSpec((1, 16), "int64", 0, 100),
                     InputSpec((1, 16), "int64", 1, 2, "attention_mask")]
    made = make_inputs(specs)
    assert made[0].dtype == torch.int64 and 0 <= int(made[0].min()) and int(made[0].max()) < 100
    assert bool((made["attention_mask"] == 1).all())
    assert make_inputs(parse_input_spec("2,3"), torch.float64).dtype == torch.float64
    for bad in ("int65:2,3", "int64:2,x", "int64:2,3:5-1", "a=2;3", ""):
        with pytest.raises(ParamGraphError, match="input-spec"):
            parse_input_spec(bad)


def test_cli_converts_a_token_model_with_input_spec_and_restores_bit_exactly(tmp_path, capsys,
                                                                            monkeypatch):
    from safetensors.torch import load_file, save_file

    from paramgraph.tasks.cli import main

    module = randomize(GPTLike(), 5)
    save_file(module.state_dict(), tmp_path / "gpt.safetensors")
    (tmp_path / "nets.py").write_text("from catalogue import GPTLike\n")
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "gpt.safetensors", "--arch", "nets.py:GPTLike",
                 "--input-spec", "int64:2,6:0-11"]) == 0
    assert main(["restore", "gpt.pgraph", "-o", "back.safetensors"]) == 0
    back = load_file(tmp_path / "back.safetensors")
    for k, v in module.state_dict().items():
        assert torch.equal(back[k], v), k
    capsys.readouterr()
    assert main(["convert", "gpt.safetensors", "--arch", "nets.py:GPTLike",
                 "--input-spec", "int64:2,6:0-11;nope=int64:2", "-o", "x.pgraph"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not keyword inputs ['nope']" in err and "\n" not in err
