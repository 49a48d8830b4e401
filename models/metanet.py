"""``MetaNet``: a GNN that reads any parameter graph and is exactly as symmetric as the networks.

Three modes share one code path (ARCHITECTURE.md):

* ``"quasi"``: the learned gauge map of :mod:`paramgraph.models.gauge` (exact canonicaliser composed with a
  learned, invariantly computed scale), then the unconstrained permutation-equivariant backbone
  (:mod:`paramgraph.models.backbone`). Exactly invariant (invariant head) or quasi-equivariant (weight
  head) to permutations, positive scalings, sign flips and attention head maps.
* ``"perm"``: the same backbone without the gauge (the GMN / Neural Graphs family): exactly
  permutation invariant/equivariant, not scale or sign invariant.
* ``"strict"``: the same backbone with exactly scale- and sign-equivariant layers (value channels
  read only through canonicalisation, :mod:`paramgraph.models.readers`; the ScaleGMN family).

All three share one architecture (:class:`~paramgraph.models.backbone.Backbone`: encoders, rounds of
:class:`~paramgraph.models.layers.ValueLayer` with node and edge updates in both directions, heads), so a
comparison between modes measures the symmetry treatment, nothing else.

Example::

    from torch_geometric.data import Batch
    import paramgraph
    from paramgraph import models

    batch = Batch.from_data_list([paramgraph.from_module(m, x) for m, x in nets])
    net = models.MetaNet(mode="quasi", task="invariant", out_dim=1)
    y = net(batch)                                   # [num_graphs, 1]

    y = net(*models.prepare(batch, "cuda"))          # structure read on the CPU, then moved

    editor = models.MetaNet(mode="quasi", task="weights")
    out = editor(batch)                              # a Batch in the same layout, new values
    state_dicts = [paramgraph.to_state_dict(g) for g in out.to_data_list()]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from paramgraph.layout import FIELDS

from .backbone import Backbone
from .defaults import EDGE_WIDTH, HIDDEN, LAYERS, MODES
from .gauge import (BALANCE_SWEEPS, GAUGE_INPUT_FIELDS, GaugeInputs, GaugeMap, random_move,
                    sign_confidence, soften_signs)
from .prior import TreePrior
from .statistics import LayerStatistics
from .structure import GraphStructure

TASKS = ("invariant", "weights")
FRAMES = ("gauged", "input")


def parse_gauge_frame(name: str) -> tuple[str, str]:
    """``"SECTION/SIGNS"`` -> ``(section, signs)`` (:class:`GaugeMap`'s ``section`` and
    ``signs``, checked there). Raises ``ValueError`` for another shape, or for signs ``none``
    (not invariant to sign flips)."""
    section, sep, signs = name.partition("/")
    if not sep or signs == "none":
        raise ValueError(f"gauge frame '{name}': expected SECTION/SIGNS with an invariant sign "
                         "statistic, e.g. 'balanced/bias' or 'unit/incoming'")
    return section, signs


class MetaNet(nn.Module):
    """A metanet over batches of parameter graphs.

    Args:
        mode: ``"perm"``, ``"strict"`` or ``"quasi"`` (see the module docstring).
        task: ``"invariant"``: ``forward`` returns ``[num_graphs, out_dim]``; ``"weights"``:
            ``forward`` returns a batch of graphs in the input's layout with new values (at
            initialisation: the input network, gauged in ``quasi`` mode).
        out_dim: output size of the invariant head.
        hidden: feature width; ``layers``: message-passing rounds.
        aggrs: aggregators for the messages (any of sum, mean, max, min, std).
        kernel_cap: kernels longer than this are averaged into this many bins for the encoder.
        edge_width: width of the hidden edge features (default ``min(hidden, 32)``,
            :data:`~paramgraph.models.defaults.EDGE_WIDTH`). Edges outnumber neurons 6-150x in a
            parameter graph, so this width sets most of a round's cost.
        channels: value channels per node and edge (default ``hidden // 2``); 0 gives a plain
            edge/node GNN in ``perm``/``quasi`` mode (``strict`` needs at least 1).
        gauge_hidden, gauge_bound: width of the learned gauge factor's network, and the bound
            ``s_max`` of its log-scale (``quasi``).
        learn_gauge: ``False`` keeps only the exact section (an ablation of ``quasi``).
        gauge_signs: which statistic of a sign-symmetric neuron the canonicaliser makes
            positive: ``"bias"`` (default) or ``"incoming"`` (the sum of its incoming weights;
            :mod:`paramgraph.canonical`); ``"none"`` leaves such neurons unflipped, the
            section's scales only (an ablation of ``quasi`` that measures what canonicalising
            signs costs; the metanet is then *not* invariant to sign flips).
        section, sweeps: the exact section of the scaling group the gauge starts from
            (``"balanced"``: the minimum-norm point of the orbit, approached by ``sweeps``
            rebalancing sweeps from the unit-norm form; ``"unit"``: unit-norm incoming weights);
            see :mod:`paramgraph.models.gauge`.
        compress: ``perm``/``quasi``: read value channels through ``symlog`` (``strict`` reads
            them canonicalised whatever this says).
        soft_signs: ``quasi`` invariant head: fade out the gauged values of neurons near the
            jump of the sign canonicaliser (:func:`~paramgraph.models.gauge.sign_confidence`),
            which makes the invariant features continuous in the weights. Off by default: hard
            signs ranked better on the cnn zoo (+0.009 Kendall tau over both held-out halves)
            and level on the hetero zoo (-0.001) (README, "The four levers and hard signs as the
            default").
        statistics: add the per-layer statistics pathway (:mod:`paramgraph.models.statistics`)
            to the invariant head, computed on the gauged values (``quasi``), the exact section
            (``strict``) or the raw values (``perm``). Off by default: it did not help ``quasi``
            on the cnn zoo's validation split (README).
        frame: ``quasi`` weight head only. ``"gauged"`` (default): values are returned in gauged
            coordinates, so ``theta`` and ``g theta`` (g a scaling, sign flip or head map) give
            the *same* output values (quasi-equivariance with ``g' = 1``; with permutations,
            the same values permuted). ``"input"``: the gauge is undone (``alpha(theta)^-1`` and the
            inverse head maps applied to the output), which makes the output strictly equivariant,
            ``F(g theta) = g F(theta)``, because ``alpha(g theta) = alpha(theta) g^-1``.
        checkpoint: recompute each message-passing round during backward instead of storing
            its activations (for graphs of millions of edges; same results, more time).
        copies: weight head only: output channel expansion, ``forward`` returns a list of
            ``copies`` edited batches (their networks' outputs are meant to be averaged, e.g.
            :func:`paramgraph.tasks.expansion.decode_siren`); 1 returns one batch.
        compile: run the message-passing rounds through ``torch.compile`` (same results to
            float rounding; pays off on long runs, see README "Training throughput"), with an
            eager fallback where it fails.
        probes: read ``probes`` probe features per neuron (``forward``'s ``probes``).
        output_readout: the invariant head also reads the mean of the output neurons' features
            (:class:`~paramgraph.models.heads.InvariantHead`).
        gauge_jitter: ``quasi``, while training only: the gauged network is moved by a random
            element of its scale/sign group (scales log-uniform in ``[1/R, R]`` for
            ``gauge_jitter=R`` > 1, fair random signs; :func:`~paramgraph.models.gauge.random_move`)
            before the backbone reads it, so the backbone learns around the canonical frame
            instead of at one point of it (the regularisation ``--augment`` gives ``perm``). In
            evaluation the gauged network is read as it is, so the metanet stays exactly
            invariant. 0 (default): off.
        gauge_frames: ``quasi`` invariant head: read each network through several exact
            sections at once, each named ``"SECTION/SIGNS"`` (``"balanced/bias"``,
            ``"balanced/incoming"``, ``"unit/bias"``, ...), all sharing one learned factor and
            one backbone. While training, each batch is read through one of them, drawn at
            random (an augmentation over a fixed, finite set of canonical frames); in evaluation
            the outputs of all of them are averaged. Each frame is exactly invariant, so their
            mean is too (frame averaging), while the backbone is kept from relying on one
            canonicaliser's discontinuities (e.g. a sign chosen by a bias near zero).
            Empty (default): the one frame ``section``/``gauge_signs``.
        prior: the invariant head (``out_dim=1``) adds its output to a tree prior
            (:class:`~paramgraph.models.prior.TreePrior`: cross-fitted gradient-boosted trees
            on per-layer statistics of the exact ``section`` in ``quasi``/``strict`` mode, of
            the raw values in ``perm`` mode), which :func:`paramgraph.tasks.prior.fit_prior`
            fits; unfitted, it adds nothing. ``prior_link``: the map from the task's target to
            the head's output (:data:`~paramgraph.models.prior.PRIOR_LINKS`).
        prior_input: the invariant head also reads the prior's own prediction (its link-space
            value, a quarter of it as one more per-graph feature), so that the GNN's correction
            can depend on what the trees said (stacking); needs ``prior``. Invariant wherever
            the prior is.

    Raises ``ValueError`` for an unknown mode, task, frame, aggregator or prior link, for
    ``channels=0`` in ``strict`` mode and for a prior on anything but a one-output invariant
    head.
    """

    def __init__(self, mode: str = "quasi", task: str = "invariant", out_dim: int = 1,
                 hidden: int = HIDDEN, layers: int = LAYERS, *,
                 aggrs: Sequence[str] = ("sum", "mean", "max"), kernel_cap: int = 64,
                 channels: int | None = None, gauge_hidden: int = 16, gauge_bound: float = 2.0,
                 learn_gauge: bool = True, gauge_signs: str = "bias", section: str = "balanced",
                 sweeps: int = BALANCE_SWEEPS, compress: bool = True,
                 statistics: bool = False, soft_signs: bool = False, frame: str = "gauged",
                 checkpoint: bool = False, copies: int = 1, compile: bool = False,
                 probes: int = 0, output_readout: bool = False, prior: bool = False,
                 prior_link: str = "identity", gauge_jitter: float = 0.0,
                 edge_width: int | None = None, gauge_frames: Sequence[str] = (),
                 prior_input: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose from {MODES}")
        if task not in TASKS:
            raise ValueError(f"unknown task '{task}'; choose from {TASKS}")
        if frame not in FRAMES:
            raise ValueError(f"unknown frame '{frame}'; choose from {FRAMES}")
        if copies < 1 or (copies > 1 and task != "weights"):
            raise ValueError(f"copies={copies}: output channel expansion needs a weight head "
                             "and at least one copy")
        if probes and mode == "strict":
            raise ValueError("probe features need mode perm or quasi: strict's hidden features "
                             "are invariant, and a neuron's probe values move with its scale "
                             "and sign")
        if prior_input and not prior:
            raise ValueError("prior_input reads the tree prior's prediction: set prior=True")
        if prior and (task != "invariant" or out_dim != 1):
            raise ValueError("a tree prior needs the invariant head with out_dim=1 (one "
                             "predicted number per network)")
        if gauge_jitter and (mode != "quasi" or gauge_jitter <= 1):
            raise ValueError(f"gauge_jitter={gauge_jitter}: a scale range R > 1, in quasi mode "
                             "(perm: train with --augment R; strict reads values equivariantly)")
        self.gauge_jitter = float(gauge_jitter)
        self.prior_input = bool(prior_input)
        if gauge_frames and (mode != "quasi" or task != "invariant"):
            raise ValueError("gauge_frames average a quasi metanet's invariant head over "
                             "several sections; use mode='quasi', task='invariant'")
        self.mode, self.task, self.frame = mode, task, frame
        self.out_dim = out_dim
        self.probes = int(probes)
        channels = max(hidden // 2, 1) if channels is None else channels
        edge_width = min(hidden, EDGE_WIDTH) if edge_width is None else edge_width
        self.gauge = (GaugeMap(gauge_hidden, gauge_bound, learn_gauge, section, sweeps,
                               signs=gauge_signs) if mode == "quasi" else None)
        # the frames the invariant head averages over (views of self.gauge: one learned factor)
        self.gauge_frames = tuple(gauge_frames)
        self._views = tuple(self.gauge.on_section(*parse_gauge_frame(name))
                            for name in self.gauge_frames) if self.gauge is not None else ()
        # strict reads its values equivariantly; its statistics read the exact section
        self.section = (GaugeMap(learned=False, section=section, sweeps=sweeps)
                        if mode == "strict" and statistics and task == "invariant" else None)
        self.statistics = (LayerStatistics(hidden) if statistics and task == "invariant"
                           else None)
        # perm reads raw statistics (permutation invariant, like the statistics baseline)
        self.prior = (TreePrior(None if mode == "perm" else GaugeMap(
            learned=False, section=section, sweeps=sweeps, signs=gauge_signs), prior_link)
            if prior else None)
        # only the invariant head: the weight head must start from the gauged network itself
        self.soft_signs = (soft_signs and mode == "quasi" and task == "invariant"
                           and gauge_signs != "none")  # no sign choice, no jump to fade
        self.backbone = Backbone(task, out_dim, hidden, layers, channels, aggrs, kernel_cap,
                                 constrained=mode == "strict", compress=compress,
                                 checkpoint=checkpoint,
                                 graph_dim=(hidden if self.statistics is not None else 0)
                                 + int(prior_input),
                                 copies=copies, compile=compile, probes=probes,
                                 output_readout=output_readout, edge_width=edge_width)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, batch, structure: GraphStructure | None = None,
                probes: Tensor | None = None):
        """``batch``: a ``torch_geometric`` ``Batch`` of ParamGraphs (or one ParamGraph).
        ``structure``: its :class:`GraphStructure` from :func:`prepare` (which also checks the
        input); without it, both are done here, on the batch's device. ``probes``: ``[N,
        probes]`` probe features (each neuron's values at fixed inputs, e.g.
        :func:`paramgraph.tasks.inr.siren_probes`), required when the metanet was built with
        ``probes``; ``quasi`` moves them into the gauged frame (times each neuron's factor, so
        they are invariant as the gauged values are).

        A batch with ``prior_offset`` ``[num_graphs]`` gives a metanet with a prior
        those out-of-fold predictions instead of its trees' (training, see
        :mod:`paramgraph.models.prior`).

        Returns ``[num_graphs, out_dim]`` (``task="invariant"``) or a graph batch of the same
        type and layout with new ``edge_value``/``node_value`` in the metanet's dtype
        (``task="weights"``). Raises ``TypeError`` for something that is not a parameter graph
        and ``ValueError`` naming the graph whose values are not finite.
        """
        if structure is None:
            batch, structure = prepare(batch)
        st = structure
        dtype = self.dtype
        edge_value = batch.edge_value.to(dtype)
        node_value = batch.node_value.to(dtype)
        node_mask = batch.node_mask
        prior = (self.prior(st, batch.edge_value, batch.node_value, node_mask,
                            getattr(batch, "prior_offset", None))
                 if self.prior is not None else None)
        value_scale = st.value_scale().to(dtype)
        probes = self._probes(probes, dtype)
        if self._views:
            # one frame per training batch, the mean of all in evaluation (see __init__)
            views = ([self._views[int(torch.randint(len(self._views), ()))]] if self.training
                     else self._views)
            out = torch.stack([self._read(batch, st, view, edge_value, node_value, node_mask,
                                          value_scale, probes, prior)[0]
                               for view in views]).mean(0)
            gauged = None  # frames serve the invariant head only
        else:
            out, gauged = self._read(batch, st, self.gauge, edge_value, node_value, node_mask,
                                     value_scale, probes, prior)
        if self.task == "invariant":
            return out if prior is None else out + prior.to(out.dtype).unsqueeze(1)
        if isinstance(out, list):  # output channel expansion: one batch per copy
            return [self._edited(batch, st, gauged, *pair) for pair in out]
        return self._edited(batch, st, gauged, *out)

    def _read(self, batch, st: GraphStructure, gauge: GaugeMap | None, edge_value, node_value,
              node_mask, value_scale, probes, prior=None):
        """The backbone's output on the batch read through ``gauge`` (``None``: as it is), and
        what the gauge applied (``None`` without one). ``prior``: the tree prior's output, read
        by the head where ``prior_input``."""
        dtype = edge_value.dtype
        gauged = None
        if gauge is not None:
            gauged = gauge.gauge(st, edge_value, node_value, node_mask,
                                 self._cached_gauge_inputs(batch, st, gauge))
            edge_value, node_value = gauged.edge_value, gauged.node_value
            if probes is not None:  # a neuron's values scale and flip with it
                probes = probes * gauged.alpha.to(dtype).unsqueeze(1)
            if self.gauge_jitter and self.training:
                edge_value, node_value, moved = random_move(st, edge_value, node_value,
                                                            self.gauge_jitter)
                if probes is not None:
                    probes = probes * moved.to(dtype).unsqueeze(1)
            if self.soft_signs:
                # a weighting, not a path for gradients (its sqrt has none at zero weights)
                conf = sign_confidence(st, edge_value.detach(), node_value.detach(),
                                       statistic=gauge.signs)
                edge_value, node_value = soften_signs(st, conf, edge_value, node_value)
                if probes is not None:
                    probes = probes * conf.to(dtype).unsqueeze(1)
        graph_feats = None
        if self.statistics is not None:
            stat_values = (edge_value, node_value)
            if self.section is not None:
                stat_values = self.section(st, edge_value, node_value, node_mask)[:2]
            graph_feats = self.statistics(st, *stat_values, node_mask)
        if self.prior_input:  # a logit in [-6.9, 6.9]: a quarter of it is O(1)
            said = (prior / 4).to(dtype).unsqueeze(1)
            graph_feats = said if graph_feats is None else torch.cat([graph_feats, said], 1)
        out = self.backbone(st, edge_value, node_value, node_mask, value_scale, graph_feats,
                            probes)
        return out, gauged

    def gauge_inputs(self, batch, structure: GraphStructure | None = None) -> GaugeInputs:
        """What this metanet's gauge reads of ``batch`` that training does not change
        (:meth:`GaugeMap.invariant_inputs`, from the values as :meth:`forward` converts them);
        a data set that attaches them per graph (fields :data:`GAUGE_INPUT_FIELDS`, with the
        key :meth:`gauge_input_key`) spares every step the section. ``quasi`` only, batches
        without attention."""
        if self.gauge is None:
            raise ValueError(f"a {self.mode} metanet has no gauge")
        if structure is None:
            batch, structure = prepare(batch)
        dtype = self.dtype
        return self.gauge.invariant_inputs(structure, batch.edge_value.to(dtype),
                                           batch.node_value.to(dtype), batch.node_mask)

    def gauge_input_key(self) -> int | None:
        """The key of :meth:`gauge_inputs` (``None`` without a gauge)."""
        return self.gauge.input_key(self.dtype) if self.gauge is not None else None

    def _cached_gauge_inputs(self, batch, st: GraphStructure,
                             gauge: GaugeMap) -> GaugeInputs | None:
        """The batch's precomputed gauge inputs where they were made for ``gauge`` (and are
        still there: new values, ``with_values``, remove them)."""
        factor, features, _ = GAUGE_INPUT_FIELDS
        if (st.gauge_key is None or st.gauge_key != gauge.input_key(self.dtype)
                or factor not in batch or features not in batch):
            return None
        return GaugeInputs(batch[factor], batch[features])

    def _probes(self, probes: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """The probe features checked against what the metanet was built for."""
        if self.probes and probes is None:
            raise ValueError(f"this metanet reads {self.probes} probe features per neuron; pass "
                             "probes=[N, probes]")
        if probes is None:
            return None
        if not self.probes or probes.shape[1] != self.probes:
            raise ValueError(f"probe features of width {probes.shape[1]}; this metanet was built "
                             f"with probes={self.probes}")
        return probes.to(dtype)

    def _edited(self, batch, st: GraphStructure, gauged, new_edge, new_node):
        """The weight head's new values as a batch, in the frame asked for."""
        if gauged is not None and self.frame == "input":
            new_edge, new_node = gauged.undo(st, new_edge, new_node)
        return batch.with_values(new_edge, new_node)

    def gauge_parameters(self) -> list[nn.Parameter]:
        """The learned gauge factor's parameters (empty unless ``mode="quasi"``)."""
        return list(self.gauge.parameters()) if self.gauge is not None else []


def prepare(batch, device=None, non_blocking: bool = False):
    """Check ``batch`` and read its :class:`GraphStructure` where it lives (the CPU, straight
    from a DataLoader), then move both to ``device``: ``net(*prepare(batch, "cuda"))``.

    Every size the forward pass needs is then known on the host, so a forward and backward on
    an accelerator never stop to copy a number back. Raises like :meth:`MetaNet.forward`.
    """
    _check_input(batch)
    st = GraphStructure.of(batch)
    if device is None:
        return batch, st
    return batch.to(device, non_blocking=non_blocking), st.to(device, non_blocking=non_blocking)


def _check_input(batch) -> None:
    missing = [k for k in FIELDS if getattr(batch, k, None) is None]
    if missing:
        raise TypeError(f"MetaNet expects a paramgraph.ParamGraph or a Batch of them; "
                        f"{type(batch).__name__} has no {', '.join(missing)}")
    for name in ("edge_value", "node_value"):
        bad = ~torch.isfinite(getattr(batch, name))
        if bool(bad.any()):
            graph = 0
            if getattr(batch, "batch", None) is not None:
                if name == "node_value":
                    node = int(bad.any(1).nonzero()[0])
                else:
                    value = int(bad.nonzero()[0])
                    edge = int(torch.searchsorted(torch.cumsum(batch.edge_size.long(), 0), value,
                                                  right=True))
                    node = int(batch.edge_index[0, edge])
                graph = int(batch.batch[node])
            raise ValueError(f"graph {graph} of the batch has non-finite {name} (NaN or inf)")
