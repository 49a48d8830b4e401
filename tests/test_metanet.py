"""MetaNet: exact symmetry of every mode, the weight head's decoded networks, the gauge's gradients.

All symmetry tests run in float64 on heterogeneous batches (ReLU MLP, tanh/identity MLP, CNN with
batch norm, a residual block, pooling and a flatten, SIREN, transformer encoder layer), two
weight draws of each. Full-group tests of ``quasi`` include the attention heads' GL(d_head) maps
(the gauge's head section, issue 15); those of ``strict`` draw ``heads=False`` (its layers are
equivariant to scales and signs only).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch_geometric.data import Batch

from paramgraph import models
import paramgraph
from metanet_nets import graphs, random_input

MODES = ("perm", "strict", "quasi")
SMALL = dict(hidden=16, layers=2)


@pytest.fixture(scope="module")
def zoo():
    return graphs(seeds=(0, 1))


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row relative difference of two [B, D] outputs."""
    return (a - b).abs().amax(1) / a.abs().amax(1).clamp_min(1e-300)


def _net(mode, seed=0, **kw):
    torch.manual_seed(seed)
    return models.MetaNet(mode=mode, **{**SMALL, **kw}).double()


def _randomize_(net, std=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


# -- invariant head --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_permutation_invariance_and_batch_order(zoo, mode):
    _, _, gs = zoo
    net = _net(mode, out_dim=3)
    gen = torch.Generator().manual_seed(3)
    perm = [paramgraph.random_symmetry(g, generator=gen, scales=False, signs=False, heads=False)
            for g in gs]
    assert any(not torch.equal(p.edge_value, g.edge_value) for p, g in zip(perm, gs))
    y = net(Batch.from_data_list(gs))
    assert y.shape == (len(gs), 3) and y.dtype == torch.float64
    assert _rel(y, net(Batch.from_data_list(perm))).max() < 1e-8
    order = torch.randperm(len(gs), generator=gen).tolist()
    y_shuffled = net(Batch.from_data_list([gs[i] for i in order]))
    assert _rel(y[order], y_shuffled).max() < 1e-8


def test_full_symmetry_invariance(zoo):
    """quasi and strict: unchanged under permutations, scales in [1e-2, 1e2] and signs; perm is
    not."""
    names, _, gs = zoo
    batch = Batch.from_data_list(gs)
    for mode in ("quasi", "strict"):
        gen = torch.Generator().manual_seed(4)
        moved = [paramgraph.random_symmetry(g, generator=gen, heads=mode == "quasi",
                                            scale_range=(1e-2, 1e2)) for g in gs]
        batch_moved = Batch.from_data_list(moved)
        net = _net(mode, out_dim=2)
        rel = _rel(net(batch), net(batch_moved))
        assert rel.max() < 1e-6, (mode, dict(zip(names, rel.tolist())))
    rel = _rel(_net("perm", out_dim=2)(batch), _net("perm", out_dim=2)(batch_moved))
    # every one of these networks has a scale or a sign symmetry, so a plain GNN must notice
    assert rel.min() > 1e-4, dict(zip(names, rel.tolist()))


def test_gauge_jitter_moves_training_reads_only(zoo):
    """quasi with gauge_jitter: in evaluation exactly the metanet without it (so exactly
    invariant); in training every forward reads another random move of the gauged networks;
    control: those training outputs do differ."""
    _, _, gs = zoo
    batch = Batch.from_data_list(gs)
    plain = _net("quasi")
    jitter = _net("quasi", gauge_jitter=4.0)
    jitter.load_state_dict(plain.state_dict())
    plain.eval(), jitter.eval()
    with torch.no_grad():
        assert torch.equal(plain(batch), jitter(batch))
        jitter.train()
        torch.manual_seed(1)
        a = jitter(batch)
        b = jitter(batch)
    assert torch.isfinite(a).all() and _rel(a, b).max() > 1e-4
    for bad in (dict(mode="perm", gauge_jitter=4.0), dict(mode="quasi", gauge_jitter=0.5)):
        with pytest.raises(ValueError, match="gauge_jitter"):
            models.MetaNet(**bad)


FRAMES = ("balanced/bias", "balanced/incoming", "unit/bias")


def test_gauge_frames_average_exact_sections(zoo):
    """quasi with gauge_frames: in evaluation the mean of the metanets that read one frame each
    (same weights), exactly invariant under the whole group; in training one of them per
    forward. Controls: the frames' outputs differ from each other, and a frame's own output is
    not the mean."""
    names, _, gs = zoo
    batch = Batch.from_data_list(gs)
    net = _net("quasi", gauge_frames=FRAMES)
    _randomize_(net)
    net.eval()
    single = []
    for frame in FRAMES:
        section, signs = frame.split("/")
        one = _net("quasi", section=section, gauge_signs=signs)
        one.load_state_dict(net.state_dict())  # the frames share every parameter
        single.append(one.eval()(batch).detach())
    y = net(batch).detach()
    assert torch.allclose(y, torch.stack(single).mean(0), rtol=0, atol=1e-12)
    assert min(_rel(single[0], s).max() for s in single[1:]) > 1e-4  # control
    gen = torch.Generator().manual_seed(4)
    moved = Batch.from_data_list([paramgraph.random_symmetry(g, generator=gen, heads=True,
                                                             scale_range=(1e-2, 1e2))
                                  for g in gs])
    rel = _rel(y, net(moved).detach())
    assert rel.max() < 1e-6, dict(zip(names, rel.tolist()))
    net.train()
    torch.manual_seed(0)
    drawn = [net(batch).detach() for _ in range(8)]
    for out in drawn:
        assert any(torch.allclose(out, s, rtol=0, atol=1e-12) for s in single)
        assert not torch.allclose(out, y, rtol=0, atol=1e-6)  # control: not the mean
    assert len({int(torch.stack(single).sub(o).abs().amax((1, 2)).argmin()) for o in drawn}) > 1


def test_gauge_frames_share_one_learned_factor():
    """The frames are views of one gauge: one set of parameters, and a step on them moves every
    frame's factor; bad frames and modes raise."""
    net = _net("quasi", gauge_frames=FRAMES)
    plain = _net("quasi")
    assert net.state_dict().keys() == plain.state_dict().keys()
    assert all(view.out is net.gauge.out for view in net._views)
    with torch.no_grad():
        net.gauge.out[-1].bias.add_(1.0)
    assert all(torch.equal(view.out[-1].bias, net.gauge.out[-1].bias) for view in net._views)
    for bad, match in ((dict(gauge_frames=("balanced",)), "SECTION/SIGNS"),
                       (dict(gauge_frames=("balanced/none",)), "SECTION/SIGNS"),
                       (dict(gauge_frames=("round/bias",)), "section"),
                       (dict(gauge_frames=("balanced/sum",)), "signs"),
                       (dict(mode="perm", gauge_frames=FRAMES), "gauge_frames"),
                       (dict(task="weights", gauge_frames=FRAMES), "gauge_frames")):
        with pytest.raises(ValueError, match=match):
            models.MetaNet(**{"mode": "quasi", **bad})


@pytest.mark.parametrize("mode", MODES)
def test_prior_input_lets_the_correction_depend_on_the_trees(zoo, mode):
    """prior_input: the head reads the prior's prediction, so what the GNN adds to the prior
    changes with it; control: without prior_input the addition does not change at all."""
    _, _, gs = zoo
    batch = Batch.from_data_list(gs)
    corrections = {}
    for reads in (False, True):
        net = _net(mode, prior=True, prior_link="logit", prior_input=reads)
        _randomize_(net)
        net.prior.fitted[0] = True  # empty trees: the prior is the offsets given below
        outs = []
        for acc in (0.2, 0.9):
            batch.prior_offset = torch.full((len(gs),), acc, dtype=torch.float64)
            logit = torch.logit(torch.tensor(acc, dtype=torch.float64))
            outs.append(net(batch).detach()[:, 0] - logit)
        corrections[reads] = (outs[0] - outs[1]).abs().max()
    assert corrections[False] < 1e-12 and corrections[True] > 1e-6
    with pytest.raises(ValueError, match="prior_input"):
        models.MetaNet(mode=mode, prior_input=True)


def test_float32_and_float64_every_mode_and_task(zoo):
    _, _, gs = zoo
    for dtype in (torch.float32, torch.float64):
        batch = Batch.from_data_list([g.with_values(g.edge_value.to(dtype), g.node_value.to(dtype))
                                      for g in gs])
        for mode in MODES:
            torch.manual_seed(0)
            y = models.MetaNet(mode=mode, out_dim=2, **SMALL).to(dtype)(batch)
            assert y.dtype == dtype and y.shape == (len(gs), 2) and torch.isfinite(y).all()
            torch.manual_seed(0)
            out = models.MetaNet(mode=mode, task="weights", **SMALL).to(dtype)(batch)
            assert out.edge_value.dtype == dtype and torch.isfinite(out.edge_value).all()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_and_head_trains_under_bfloat16_autocast(zoo, mode):
    """``paramgraph train --precision bf16``: forward and backward of every head under CPU
    autocast on the whole catalogue (attention included) give finite float32 gradients, outputs
    within bfloat16's rounding of float32's, and the value channels' message mean is summed in
    float32 (summed in bfloat16 it would drift with the fan-in)."""
    _, _, gs = zoo
    batch = Batch.from_data_list([g.with_values(g.edge_value.float(), g.node_value.float())
                                  for g in gs])
    for task in ("invariant", "weights"):
        torch.manual_seed(0)
        net = models.MetaNet(mode=mode, task=task, **SMALL)
        _randomize_(net, std=0.1)
        exact = net(batch)
        messages = []
        net.backbone.layers[0].register_forward_hook(lambda m, i, out: messages.append(out[4]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(batch)
        assert messages[-1].dtype == torch.float32
        if task == "weights":
            exact, low = exact.edge_value, low.edge_value
        assert low.dtype in (torch.bfloat16, torch.float32) and not torch.equal(low.float(), exact)
        assert (low.float() - exact).abs().max() <= 0.05 * exact.abs().max()
        low.float().square().sum().backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_single_graph_and_bad_arguments(zoo):
    _, _, gs = zoo
    net = _net("quasi")
    y = net(gs[2])
    assert y.shape == (1, 1)
    assert torch.allclose(y, net(Batch.from_data_list([gs[2]])), rtol=1e-12, atol=0)
    with pytest.raises(TypeError, match="ParamGraph"):
        net(torch.zeros(3))
    bad = gs[3].with_values(gs[3].edge_value.clone(), gs[3].node_value.clone())
    bad.edge_value[5] = float("nan")
    with pytest.raises(ValueError, match="graph 2 of the batch has non-finite edge_value"):
        net(Batch.from_data_list([gs[0], gs[1], bad]))
    with pytest.raises(ValueError, match="mode"):
        models.MetaNet(mode="equivariant")
    with pytest.raises(ValueError, match="task"):
        models.MetaNet(task="regression")
    with pytest.raises(ValueError, match="aggregator"):
        models.MetaNet(aggrs=("sum", "median"))
    with pytest.raises(ValueError, match="value channel"):
        models.MetaNet(mode="strict", channels=0)
    assert models.MetaNet(mode="quasi", channels=0, **SMALL).double()(gs[0]).shape == (1, 1)


def test_checkpointing_gives_the_same_outputs_and_gradients(zoo):
    _, _, gs = zoo
    batch = Batch.from_data_list(gs)
    grads = []
    for checkpoint in (False, True):
        net = _net("quasi", checkpoint=checkpoint)
        y = net(batch)
        y.sum().backward()
        grads.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-12, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("task", ["invariant", "weights"])
def test_prepared_forward_never_reads_values_back_to_the_host(zoo, mode, task):
    """``prepare`` reads every size on the host; the forward and backward then run on the meta
    device, which has no values at all, so any ``.item()``, ``bool(tensor)``, ``nonzero()`` or
    boolean-mask index (a host round trip on a GPU) raises. On the CPU, ``prepare`` gives the
    same outputs as a plain call."""
    _, _, gs = zoo
    net = _net(mode, task=task, out_dim=2)
    plain = net(Batch.from_data_list(gs))
    prepared = net(*models.prepare(Batch.from_data_list(gs)))
    if task == "weights":
        assert torch.equal(plain.node_value, prepared.node_value)
        plain, prepared = plain.edge_value, prepared.edge_value
    assert torch.equal(plain, prepared)
    batch, st = models.prepare(Batch.from_data_list(gs), "meta")
    assert st.src.device.type == "meta" and isinstance(st.max_size, int)
    out = net.to("meta")(batch, st)
    if task == "weights":
        assert out.edge_value.device.type == "meta"
        out = out.edge_value.sum() + out.node_value.sum()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_tiny_and_zero_weights_give_finite_gradients():
    """A zoo MLP whose always-zero input pixels let weights decay to denormals (and to zero)."""
    import torch.nn as nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        mlp[0].weight[:, 0] = 1e-41
        mlp[0].weight[:, 1] = 0.0
        mlp[2].weight[1] = 1e-41  # a whole neuron with denormal incoming weights
        mlp[2].bias[1] = 0.0
    g = paramgraph.from_module(mlp, torch.randn(2, 6))
    batch = Batch.from_data_list([g, g])
    for mode in MODES:
        for task in ("invariant", "weights"):
            torch.manual_seed(0)
            net = models.MetaNet(mode=mode, task=task, **SMALL)
            _randomize_(net, std=0.05)
            out = net(batch)
            value = out if task == "invariant" else out.edge_value
            value.square().sum().backward()
            assert torch.isfinite(value).all(), (mode, task)
            for name, p in net.named_parameters():
                assert p.grad is None or torch.isfinite(p.grad).all(), (mode, task, name)


@pytest.mark.parametrize("mode", ("strict", "quasi"))
def test_kernels_longer_than_the_cap_keep_the_symmetry(zoo, mode):
    names, modules, gs = zoo
    keep = [i for i, n in enumerate(names) if n == "cnn_bn_res"]  # 3x3 kernels, 2x2 flatten
    net = _net(mode, task="weights", kernel_cap=4)
    _randomize_(net)
    gen = torch.Generator().manual_seed(9)
    sub = [gs[i] for i in keep]
    out = net(Batch.from_data_list(sub)).to_data_list()
    out_moved = net(Batch.from_data_list(_moved_list(sub, gen))).to_data_list()
    for i, o, om in zip(keep, out, out_moved):
        x = random_input(names[i], 8, gen)
        y = _run(modules[i], o, x)
        assert _rel(y, _run(modules[i], om, x)).max() < 1e-6
        assert _rel(y, modules[i](x).detach()).max() > 1e-2


def _moved_list(gs, gen):
    return [paramgraph.random_symmetry(g, generator=gen, heads=False, scale_range=(1e-2, 1e2))
            for g in gs]


# -- weight head -----------------------------------------------------------------------------------

def _run(module, graph, x):
    clone = copy.deepcopy(module)
    paramgraph.load_into(clone, graph)
    with torch.no_grad():
        return clone(x)


@pytest.mark.parametrize("mode", MODES)
def test_weight_head_starts_at_the_input_network(zoo, mode):
    names, modules, gs = zoo
    out = _net(mode, task="weights")(Batch.from_data_list(gs)).to_data_list()
    gen = torch.Generator().manual_seed(5)
    for name, module, g, o in zip(names, modules, gs, out):
        assert torch.equal(o.edge_index, g.edge_index) and o.segments == g.segments
        state = paramgraph.to_state_dict(o)
        assert list(state) == list(paramgraph.to_state_dict(g))
        x = random_input(name, 8, gen)
        want = module(x).detach()
        assert _rel(want.flatten(1), _run(module, o, x).flatten(1)).max() < 1e-10, name
        if mode != "quasi":  # not even moved by a gauge: the very same values
            assert torch.allclose(o.edge_value, g.edge_value, rtol=1e-14, atol=0)


def test_edge_width_narrows_the_edge_features_only(zoo):
    """edge_width: hidden edge features of that width, node features of ``hidden``; every mode
    and head still works, quasi and strict stay invariant to the whole group on every catalogue
    network (control: perm does not), and ``edge_width=hidden`` is the default model itself up to
    width 32."""
    names, modules, gs = zoo
    batch = Batch.from_data_list(gs)
    wide, default = _net("quasi", edge_width=SMALL["hidden"]), _net("quasi")
    assert {k: v.shape for k, v in wide.state_dict().items()} == \
        {k: v.shape for k, v in default.state_dict().items()}
    assert torch.equal(wide(batch), default(batch))
    # the default: min(hidden, 32)
    assert models.MetaNet(hidden=64).backbone.edge_enc.norm.normalized_shape == (32,)
    for mode in MODES:
        net = _net(mode, out_dim=2, edge_width=6)
        assert net.backbone.edge_enc.norm.normalized_shape == (6,)
        assert net.backbone.node_enc.norm.normalized_shape == (SMALL["hidden"],)
        assert all(r.hidden.edge_norm.normalized_shape == (6,) for r in net.backbone.layers)
        _randomize_(net)
        gen = torch.Generator().manual_seed(6)
        moved = Batch.from_data_list([paramgraph.random_symmetry(
            g, generator=gen, heads=mode == "quasi", scale_range=(1e-2, 1e2)) for g in gs])
        rel = _rel(net(batch), net(moved))
        if mode == "perm":
            assert rel.min() > 1e-4, dict(zip(names, rel.tolist()))
        else:
            assert rel.max() < 1e-6, (mode, dict(zip(names, rel.tolist())))
        out = _net(mode, task="weights", edge_width=6)(batch).to_data_list()
        gen = torch.Generator().manual_seed(5)
        for name, module, o in zip(names, modules, out):
            x = random_input(name, 8, gen)
            assert _rel(module(x).detach().flatten(1), _run(module, o, x).flatten(1)).max() \
                < 1e-10, (mode, name)


@pytest.mark.parametrize("mode,frame", [("quasi", "gauged"), ("quasi", "input"),
                                        ("strict", "gauged")])
def test_weight_head_decoded_networks_match_under_symmetry(zoo, mode, frame):
    """Random weight head (far from the identity): theta and g*theta give networks computing the
    same function, for every architecture in the batch."""
    names, modules, gs = zoo
    net = _net(mode, task="weights", frame=frame)
    _randomize_(net)
    gen = torch.Generator().manual_seed(6)
    moved = [paramgraph.random_symmetry(g, generator=gen, heads=mode == "quasi",
                                        scale_range=(1e-2, 1e2)) for g in gs]
    out = net(Batch.from_data_list(gs)).to_data_list()
    out_moved = net(Batch.from_data_list(moved)).to_data_list()
    for name, module, o, om in zip(names, modules, out, out_moved):
        x = random_input(name, 16, gen)
        y, y_moved = _run(module, o, x).flatten(1), _run(module, om, x).flatten(1)
        assert _rel(y, y_moved).max() < 1e-6, name
        assert _rel(y, module(x).detach().flatten(1)).max() > 1e-2, f"{name}: output is the input"
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("mode,frame", [("quasi", "gauged"), ("quasi", "input"),
                                        ("strict", "gauged")])
def test_weight_head_output_frames(zoo, mode, frame):
    """Gauged frame: g*theta gives the very same values as theta. Input frame and strict mode:
    the values of g*theta's output are g applied to theta's output (strict equivariance)."""
    _, _, gs = zoo
    net = _net(mode, task="weights", frame=frame)
    _randomize_(net)
    gen = torch.Generator().manual_seed(10)
    elements = [paramgraph.random_element(g, generator=gen, permutations=False,
                                          heads=mode == "quasi", scale_range=(1e-2, 1e2))
                for g in gs]
    batch = Batch.from_data_list(gs)
    moved = Batch.from_data_list([paramgraph.apply_element(g, e) for g, e in zip(gs, elements)])
    out, out_moved = net(batch), net(moved)
    if mode == "quasi" and frame == "gauged":
        want = out
    else:
        want = Batch.from_data_list([paramgraph.apply_element(o, e) for o, e in
                                     zip(out.to_data_list(), elements)])
    for a, b in ((out_moved.edge_value, want.edge_value), (out_moved.node_value, want.node_value)):
        scale = b.abs().clamp_min(1e-3 * b.abs().max())
        assert ((a - b).abs() / scale).max() < 1e-8
    assert not torch.allclose(out.edge_value, batch.edge_value, rtol=1e-3)


def test_perm_weight_head_is_not_scale_equivariant(zoo):
    names, modules, gs = zoo
    net = _net("perm", task="weights")
    _randomize_(net)
    gen = torch.Generator().manual_seed(7)
    i = names.index("mlp_relu")
    moved = paramgraph.random_symmetry(gs[i], generator=gen, heads=False, permutations=False,
                                       scale_range=(1e-2, 1e2))
    x = random_input("mlp_relu", 16, gen)
    y = _run(modules[i], net(gs[i]), x)
    y_moved = _run(modules[i], net(moved), x)
    assert _rel(y, y_moved).max() > 1e-3


# -- the gauge is learned, not a no-op -------------------------------------------------------------

def test_the_gauge_runs_in_full_precision_under_autocast(zoo):
    """Under bfloat16 autocast (``--precision bf16``) the gauged values and factors are exactly
    the float32 ones; the control: without the gauge's own guard the learned factors differ."""
    _, _, gs = zoo
    batch = Batch.from_data_list([g.with_values(g.edge_value.float(), g.node_value.float())
                                  for g in gs])
    torch.manual_seed(0)
    net = models.MetaNet(mode="quasi", **SMALL)
    _randomize_(net, std=0.3)
    batch, st = models.prepare(batch)
    args = (st, batch.edge_value, batch.node_value, batch.node_mask)
    exact = net.gauge.gauge(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net.gauge.gauge(*args)
        unguarded = net.gauge._gauge(*args)
    assert not torch.equal(unguarded.alpha, exact.alpha)  # the control
    for a, b in [(exact.edge_value, low.edge_value), (exact.node_value, low.node_value),
                 (exact.alpha, low.alpha)]:
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


def test_gauge_parameters_get_gradients_and_matter(zoo):
    _, _, gs = zoo
    batch = Batch.from_data_list(gs)
    net = _net("quasi", out_dim=1)
    params = net.gauge_parameters()
    assert params and all(p.requires_grad for p in params)
    y = net(batch)
    y.square().sum().backward()
    for name, p in net.gauge.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.2)
    y2 = net(batch)
    rel = _rel(y.detach(), y2.detach())
    scalable = torch.tensor([bool(g.node_scale.any()) for g in gs])
    assert rel[scalable].min() > 1e-6  # the learned factor acts on scalable neurons only
    assert rel[~scalable].max() < 1e-12  # (a SIREN has signs, no scales: nothing to learn)
    # the same perturbation keeps exact invariance
    gen = torch.Generator().manual_seed(8)
    moved = [paramgraph.random_symmetry(g, generator=gen, scale_range=(1e-2, 1e2)) for g in gs]
    assert _rel(y2.detach(), net(Batch.from_data_list(moved)).detach()).max() < 1e-6


def test_canonical_only_ablation_differs_from_learned(zoo):
    _, _, gs = zoo
    batch = Batch.from_data_list(gs)
    torch.manual_seed(0)
    learned = models.MetaNet(mode="quasi", **SMALL).double()
    canonical = models.MetaNet(mode="quasi", learn_gauge=False, **SMALL).double()
    canonical.load_state_dict({k: v for k, v in learned.state_dict().items()
                               if not k.startswith("gauge.")})
    assert canonical.gauge_parameters() == []
    with torch.no_grad():
        learned.gauge.out[-1].weight.normal_()
    scalable = torch.tensor([bool(g.node_scale.any()) for g in gs])
    assert _rel(learned(batch), canonical(batch))[scalable].min() > 1e-6


# -- scale -----------------------------------------------------------------------------------------

def _zoo_batch(count: int):
    """``count`` zoo-sized graphs (a few thousand parameters) of mixed architectures."""
    import torch.nn as nn

    from metanet_nets import ResCNN, Transformer, _randomize

    gs = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            m, x = ResCNN(c=8, classes=10), torch.randn(2, 2, 8, 8)
        elif kind == 1:
            m, x = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, 10)), torch.randn(2, 64)
        elif kind == 2:
            m, x = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(16, 10)), torch.randn(2, 1, 8, 8)
        else:
            m, x = Transformer(d_in=16, embed=16, heads=2, out=10), torch.randn(2, 4, 16)
        gs.append(paramgraph.from_module(_randomize(m, i), x.double()))
    return gs


@pytest.fixture(scope="module")
def zoo64():
    gs = _zoo_batch(64)
    return gs, Batch.from_data_list(gs)


@pytest.mark.parametrize("mode", MODES)
def test_forward_backward_on_64_zoo_graphs(zoo64, mode):
    gs, batch = zoo64
    assert min(g.num_params for g in gs) > 1000 and len({g.num_nodes for g in gs}) == 4
    torch.manual_seed(0)
    net = models.MetaNet(mode=mode, hidden=16, layers=2)
    y = net(batch)
    assert y.shape == (64, 1) and torch.isfinite(y).all()
    y.sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    torch.manual_seed(0)
    editor = models.MetaNet(mode=mode, task="weights", hidden=16, layers=2)
    _randomize_(editor, std=0.05)
    out = editor(batch)
    loss = sum((o.edge_value - g.edge_value.float()).square().mean()
               for o, g in zip(out.to_data_list(), gs))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0


def _tanh_net_with_bias(bias: float):
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        net[0].bias[2] = bias
    return paramgraph.from_module(net.double(), torch.randn(2, 6, dtype=torch.float64))


@pytest.mark.parametrize("soft", [True, False])
def test_soft_signs_make_quasi_continuous_where_a_bias_crosses_zero(soft):
    """A tanh neuron whose bias goes from +eps to -eps is flipped by the sign canonicaliser.
    With soft signs the prediction's jump shrinks with eps (continuity); with hard signs (the
    control) it stays the same size however small eps is."""
    net = _net("quasi", out_dim=2, soft_signs=soft)
    _randomize_(net, std=0.3)

    def jump(eps):
        return float((net(_tanh_net_with_bias(eps)) - net(_tanh_net_with_bias(-eps))).abs().max())

    if soft:
        assert jump(1e-9) < 1e-5 and jump(1e-9) < jump(1e-6) / 100
    else:
        assert jump(1e-9) > 1e-3 and jump(1e-9) > jump(1e-6) / 2


def test_type_code_embeddings_have_room_for_every_code():
    """The embedding tables have a fixed number of rows (a new layer type must not change the
    shape of trained metanets); every code of paramgraph.types must index into them."""
    from paramgraph.types import Activation, EdgeType, NodeType, NormKind
    from paramgraph.models.encoders import CODE_SLOTS

    for codes in (Activation, EdgeType, NodeType, NormKind):
        assert max(int(c) for c in codes) < CODE_SLOTS, codes
    net = models.MetaNet(mode="quasi", hidden=8, layers=1)
    rows = {name: m.num_embeddings for name, m in net.named_modules()
            if isinstance(m, torch.nn.Embedding) and name.endswith(("type_emb", "act_emb", "norm_emb"))}
    assert rows and set(rows.values()) == {CODE_SLOTS}, rows


def test_compiled_rounds_fall_back_to_eager_with_a_warning(zoo, monkeypatch):
    """``compile=True`` where torch.compile fails (no compiler, an unsupported operation): one
    warning, then the eager rounds, with the very outputs of an eager metanet."""
    _, _, gs = zoo
    batch = Batch.from_data_list(gs)
    eager = _net("quasi", out_dim=2)
    compiled = _net("quasi", out_dim=2, compile=True)
    calls = []

    def broken(fn, **kw):
        def run(*args):
            calls.append(kw)
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        y = compiled(batch)
    assert calls and calls[0] == {"dynamic": True}
    assert torch.equal(y, eager(batch))
    assert torch.equal(compiled(batch), y)  # later calls run eagerly, without a new warning
    assert len(calls) == 1


def test_strict_adds_invariant_edge_features_only_where_no_element_moves_the_edge(zoo):
    """``StrictReader.add_on_unmoved_edges`` equals the masked sum ``base + [unmoved] lin(feats)``
    on every catalogue network (wiring-rich and plain ones; control: adding on every edge
    differs), and ``GraphStructure.unmoved_ids`` are the edges ``edge_kinds`` calls unmoved."""
    from paramgraph.models.readers import StrictReader
    from paramgraph.models.structure import GraphStructure

    _, _, gs = zoo
    st = GraphStructure.of(Batch.from_data_list(gs))
    scaled, signed = st.edge_kinds()
    unmoved = ~(scaled | signed)
    assert torch.equal(st.unmoved_ids, unmoved.nonzero().squeeze(1))
    assert 0 < st.unmoved_ids.numel() < st.num_edges
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(st.num_edges, 3, generator=gen, dtype=torch.float64)
    feats = torch.randn(st.num_edges, 4, generator=gen, dtype=torch.float64)
    lin = torch.nn.Linear(4, 3, bias=False).double()
    reader = StrictReader(st, torch.float64)
    want = base + unmoved.unsqueeze(1).double() * lin(feats)
    got = reader.add_on_unmoved_edges(base, lin, feats)
    assert torch.allclose(got, want, rtol=1e-14, atol=1e-15)
    assert not torch.allclose(base + lin(feats), want)  # control
