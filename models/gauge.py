"""The learned quasi-equivariant gauge map: canonicaliser composed with a learned factor.

Notation. A neuron ``n`` with a continuous symmetry has a factor ``f_n`` (a positive scale where
``node_scale``, a sign where ``node_sign``, both for a neuron with identity activation). The group
acts exactly as :mod:`paramgraph.symmetry` does (:func:`apply_factors` is the differentiable,
batch-aware form of that action): a weight edge ``u -> v`` is multiplied by ``a_v / f_u`` with
``a_v = f_v`` for a plain neuron and ``a_v = 1`` for a normalised one (``node_norm != NONE``); a
plain neuron's bias is multiplied by ``f_n``, a normalised neuron's ``norm_weight``/``norm_bias``
by ``f_n``; fixed edges (residual, normalisation, identity and attention wiring) and running
statistics never change.

The gauge map :math:`\\alpha(\\theta) = \\kappa(c(\\theta)\\theta)\\,c(\\theta)` (a factor per
neuron) is applied to the values before any message passing:

1. **Canonicaliser** :math:`c` (:func:`canonical_factors`), exact, no learned parameters. Neurons
   are processed in order of ``node_layer`` (a loop over depth levels, vectorised inside a level).
   A scalable neuron gets the positive scale that makes its incoming parameters unit-norm *after*
   the factors already chosen for its sources are applied: for a plain neuron
   :math:`\\big(\\sum_{u\\to n} \\|w_{un}\\|^2 / f_u^2 + b_n^2\\big)^{-1/2}` over incoming weight
   edges
   (whole kernels), for a normalised neuron :math:`(\\gamma_n^2 + \\beta_n^2)^{-1/2}` of its norm
   weight and shift. A sign-symmetric neuron is flipped so that its bias (normalised neurons:
   norm weight) is positive; where that is exactly zero the tie-break is the sum of its incoming
   weights :math:`\\sum_u \\sum w_{un} / f_u` (normalised: the norm shift); where both are zero
   it is left unflipped. A neuron that is both gets both. A zero norm (a dead neuron; in practice
   a squared norm below ``sqrt(tiny)`` of the dtype) is left unscaled, so the result and its
   gradients are finite. If :math:`\\theta' = g\\theta` then
   :math:`c(\\theta') = c(\\theta) g^{-1}` (by induction over the levels), so the canonical network
   :math:`c(\\theta)\\theta` is exactly invariant (to float rounding, ~1e-13 in float64).

   **Balanced section** (:func:`balance_factors`, the default): the unit-norm form puts each
   network's whole scale into its last layer (output weights in the hundreds). From the
   canonical network, red-black sweeps move every scalable neuron towards equal incoming and
   outgoing norms, the minimum-norm point of the scaling orbit. The sweeps start from an
   invariant network, so their result is exactly invariant however many are run.

   **Soft signs** (:func:`sign_confidence`, :func:`soften_signs`; invariant head only, an
   option, off by default: hard signs ranked better): the sign choice jumps when a bias crosses
   zero; the gauged values of each sign-symmetric neuron are faded by ``tanh(r / 0.1)`` of its
   relative bias, which makes the invariant features continuous there.

   The section is computed in float64 (cheap, per-neuron work), so that the rounding of a
   float32 input is not amplified by the canonicaliser's divisions.

2. **Learned factor** :math:`\\kappa` (:class:`GaugeMap`): a permutation-equivariant network that
   reads only quantities of the *canonical* network (per-neuron statistics of its canonical
   incoming and outgoing weights, bias, norm parameters and running statistics, plus embeddings of
   type, activation, normalisation and depth; one light message-passing step over weight edges in
   both directions) and returns :math:`s_n = s_{\\max} \\tanh(\\cdot)` per scalable neuron; the
   factor is :math:`e^{s_n}`. Signs come from :math:`c` alone (they are discrete and cannot be
   learned continuously).

3. **Attention heads** (:mod:`paramgraph.canonical_heads`, where the batch has attention).
   A head's augmented projections (weights, bias as a last column) :math:`\\hat Q, \\hat K,
   \\hat V` (``d x (D+1)``) and out-projection slice :math:`O` (``D_out x d``) move under
   :math:`(M, N) \\in GL(d)^2` as :math:`\\hat Q \\to M^T \\hat Q`, :math:`\\hat K \\to M^{-1}
   \\hat K`, :math:`\\hat V \\to N^T \\hat V`, :math:`O \\to O N^{-T}`, which keeps the bilinear
   form :math:`A = \\hat Q^T \\hat K` and the value path :math:`P = O \\hat V`. The section
   replaces each pair by the balanced factors of the thin SVD: :math:`A = U S V^T \\Rightarrow
   \\hat Q' = S^{1/2} U^T, \\hat K' = S^{1/2} V^T`; :math:`P = U' S' V'^T \\Rightarrow
   O' = U' S'^{1/2}, \\hat V' = S'^{1/2} V'^T` (singular values decreasing, each pair's sign set
   by the largest entry of its key/value row). Computed batched per head shape through QR
   factors and one ``d x d`` SVD per head (no loop over heads), in float64. Order:
   (i) unit-norm scale/sign factors, where a neuron that reads an out-projection is normalised
   by its row of :math:`\\sum_h O_h \\hat V_h` (head-invariant) instead of its raw weights;
   (ii) the head section on that network; (iii) the balancing sweeps from the result (they read
   outgoing norms into q/k/v, which the head section fixed). Each step reads an input the
   previous ones made invariant, so the whole is. :math:`\\kappa` then also acts on the freedom
   the head section leaves: direction ``i`` of a head (its ``i``-th query / value node, where
   the section put it) gets :math:`e^{t}` on the query (value) row and :math:`e^{-t}` on the
   key row (out-projection column), ``t`` the same bounded network output as for scales, read
   from the canonical network. A positive diagonal map: a group element, so the function is
   kept. Exactness degrades only at repeated non-zero singular values (a rotation inside the
   repeated block is left free; near a repeat the error grows as ``eps * s_1 / gap``, as do the
   SVD's gradients); zero singular values (dead heads) stay exact. Where the full map is not a
   symmetry the section is restricted to the group that is (:mod:`paramgraph.canonical_heads`):
   grouped-query attention ties one map to a key/value head and all query heads that read it
   (their rows are factored stacked; ``t`` is their mean), rotary embeddings allow one scaled
   rotation per pair of dimensions (canonical: equal query/key norms, the key's largest entry
   real positive; ``t`` is shared by the pair).

Because :math:`\\kappa` reads only invariant inputs,
:math:`\\alpha(g\\theta) = \\alpha(\\theta) g^{-1}`,
so the gauged network :math:`\\alpha(\\theta)\\theta` is (i) functionally identical to
:math:`\\theta` (it is :math:`\\theta` moved by a group element) and (ii) exactly invariant under
the neurons' positive scalings and sign flips and the heads' maps. :math:`\\kappa`'s parameters
get gradients (the downstream GNN is not scale invariant, so the choice of gauge matters) and
changing them changes the metanet's output. A weight head's output is returned in the gauged
frame or, with ``frame="input"``, moved back by :meth:`Gauged.undo` (``1 / alpha``, then the
inverse head maps), which makes it strictly equivariant.

**What it fixes**, for every architecture :mod:`paramgraph` converts (MLPs, CNNs with or without
batch norm and residual blocks, transformer encoder layers, SIRENs): the positive scale of every
neuron with ``node_scale`` (ReLU / LeakyReLU / identity, including normalised neurons, through
their affine parameters), the sign of every neuron with ``node_sign`` (tanh / sin / identity)
and the per-head GL(d_head) maps of attention (``W_q -> M^T W_q``, ``W_k -> M^{-1} W_k`` and the
v/o pair; tied across grouped-query heads, scaled rotations per pair of rotary heads). Permutations are not fixed here: the GNN after the gauge is permutation equivariant
by construction. A metanet in ``quasi`` mode is therefore invariant to the whole symmetry group
that :func:`paramgraph.random_symmetry` draws. Networks without attention take the same code
path as before the head section (bit-identical outputs).
"""

from __future__ import annotations

import contextlib
import copy
import zlib

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from paramgraph.canonical import (  # the exact section: one home, shared with paramgraph
    BALANCE_SWEEPS,
    SECTIONS,
    SIGN_STATISTICS,
    balance_factors,
    canonical_factors,
    section_factors,
)
from paramgraph.canonical import edge_multipliers as _edge_multipliers
from paramgraph.canonical import edge_value_sums as _edge_sums
from paramgraph.canonical_heads import HeadFrame, head_sections, write_heads
from paramgraph.layout import CACHED_VALUE_FIELDS
from paramgraph.symmetry import random_factors
from .encoders import CODE_SLOTS
from .structure import GraphStructure, symlog

GAUGE_SIGNS = (*SIGN_STATISTICS, "none")  # GaugeMap(signs=...)
SOFT_SIGN_WIDTH = 0.1  # sign_confidence: a neuron's sign counts as sure from |r| >~ 0.2


def apply_factors(st: GraphStructure, factor: Tensor, edge_value: Tensor,
                  node_value: Tensor) -> tuple[Tensor, Tensor]:
    """Apply per-neuron factors (scale times sign; 1 where none) to a batch's values.

    The same action as :func:`paramgraph.apply_element` with the identity permutation, written
    out-of-place so that it is differentiable in ``factor`` and in the values, and batch-aware.
    Returns the new ``(edge_value [V], node_value [N, 5])``.
    """
    f = factor.to(edge_value.dtype)
    one = torch.ones_like(f)
    a = torch.where(st.plain, f, one)  # what incoming weights and the bias are multiplied by
    mult = torch.where(st.weight, a[st.dst] / f[st.src], torch.ones_like(a[st.dst]))
    edge_value = edge_value * mult[st.value_edge]
    norm_f = torch.where(st.plain, one, f)
    node_value = torch.stack([
        node_value[:, 0] * a, node_value[:, 1] * norm_f, node_value[:, 2] * norm_f,
        node_value[:, 3], node_value[:, 4],
    ], dim=1)
    return edge_value, node_value


def random_move(st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                scale_range: float) -> tuple[Tensor, Tensor, Tensor]:
    """The batch's values moved by a random scale/sign element of its group (``scale_range``
    R > 1: every scalable neuron by a factor log-uniform in ``[1/R, R]``, every sign-symmetric
    one by a fair random sign; drawn from the global RNG), computed in float64: ``(edge_value,
    node_value, factor)``, the values in their input dtypes. Training augmentation
    (``paramgraph train --augment``) and the gauge jitter of ``MetaNet(gauge_jitter=R)``."""
    factor = random_factors(st.scale, st.sign, scale_range=(1.0 / scale_range, scale_range))
    edge, node = apply_factors(st, factor, edge_value.double(), node_value.double())
    return edge.to(edge_value.dtype), node.to(node_value.dtype), factor


def sign_confidence(st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                    width: float = SOFT_SIGN_WIDTH, statistic: str = "bias") -> Tensor:
    """``[N]``: how far each sign-symmetric neuron of a *canonical* network is from the jump of
    its sign choice, ``tanh(r / width)`` with ``r`` its canonical sign statistic relative to its
    scale (plain neuron, ``statistic="bias"``: bias over the rms of its incoming weights;
    ``"incoming"``: the sum of its incoming weights over their norm; normalised neuron: norm
    weight over ``sqrt(gamma^2 + beta^2)``); 1 for neurons without a sign symmetry.

    The sign canonicaliser flips a neuron when its bias changes sign, so two nearly identical
    networks on either side of ``b = 0`` get canonical forms that differ by a flipped channel.
    Multiplying the canonical values by these confidences (:func:`soften_signs`) makes the
    invariant features continuous there: the flipped channel is faded out on both sides. (How
    many neurons of a zoo sit near the jump: README, "What makes the gauge pay".)
    """
    ss, sv = _edge_sums(st, edge_value)
    ss = torch.where(st.weight, ss, torch.zeros_like(ss))
    n = st.num_nodes
    zeros = torch.zeros(n, dtype=ss.dtype, device=ss.device)
    incoming = zeros.index_add(0, st.dst, ss)
    if statistic == "bias":
        plain_stat = node_value[:, 0].abs()
        plain_scale = (incoming / st.fan_in.clamp_min(1).to(ss.dtype)).sqrt()
    else:
        plain_stat = zeros.index_add(0, st.dst, torch.where(st.weight, sv, 0.0)).abs()
        plain_scale = incoming.sqrt()
    norm = (node_value[:, 1].square() + node_value[:, 2].square()).sqrt()
    stat = torch.where(st.plain, plain_stat, node_value[:, 1].abs())
    scale = torch.where(st.plain, plain_scale, norm)
    tiny = torch.finfo(ss.dtype).tiny ** 0.5
    r = stat / torch.where(scale > tiny, scale, torch.ones_like(scale))
    conf = torch.tanh(r / width)
    return torch.where(st.sign, conf, torch.ones_like(conf))


def soften_signs(st: GraphStructure, conf: Tensor, edge_value: Tensor,
                 node_value: Tensor) -> tuple[Tensor, Tensor]:
    """Fade out the values of neurons whose sign choice is uncertain: a weight edge ``u -> v``
    is multiplied by ``conf_u * conf_v``, a neuron's bias and norm parameters by ``conf_n``
    (running statistics are left as they are). Not a group action: for invariant features only.
    """
    c = conf.to(edge_value.dtype)
    edge_factor = torch.where(st.weight, c[st.src] * c[st.dst], torch.ones_like(c[st.dst]))
    edge_value = edge_value * edge_factor[st.value_edge]
    node_value = torch.cat([node_value[:, :3] * c.unsqueeze(1), node_value[:, 3:]], 1)
    return edge_value, node_value


class GaugeMap(nn.Module):
    """``mode="quasi"``'s gauge: canonicaliser then the learned factor; see the module docstring.

    ``forward(st, edge_value, node_value, node_mask)`` returns ``(edge_value, node_value,
    alpha)``: the gauged values (functionally identical to the input, invariant under scales,
    signs and attention head maps) and the per-neuron factor ``alpha`` that was applied
    (``apply_factors(st, 1 / alpha, ...)`` undoes it where there is no attention; in general
    :meth:`gauge` returns a :class:`Gauged` whose ``undo`` also inverts the head maps).
    ``section``: ``"balanced"`` (default) rebalances the unit-norm canonical
    network towards the minimum-norm point of its scaling orbit (:func:`balance_factors`),
    ``"unit"`` keeps unit-norm incoming weights. ``learned=False`` gives the bare canonical
    section (an ablation). The section is computed in float64 (``precise``) so that rounding of
    the input does not get amplified by the canonicaliser's divisions.
    """

    def __init__(self, hidden: int = 16, bound: float = 2.0, learned: bool = True,
                 section: str = "balanced", sweeps: int = BALANCE_SWEEPS, precise: bool = True,
                 signs: str = "bias"):
        super().__init__()
        if section not in SECTIONS:
            raise ValueError(f"unknown gauge section '{section}'; choose from {SECTIONS}")
        if signs not in GAUGE_SIGNS:
            raise ValueError(f"unknown gauge signs '{signs}'; choose from {GAUGE_SIGNS}")
        self.bound = float(bound)
        self.learned = learned
        # the canonicaliser's sign statistic; "none": its scales without its sign flips (an
        # ablation that measures what canonicalising signs costs; not invariant to sign flips)
        self.signs = signs
        self.section, self.sweeps, self.precise = section, int(sweeps), precise
        if not learned:
            return
        self.type_emb = nn.Embedding(CODE_SLOTS, hidden)
        self.act_emb = nn.Embedding(CODE_SLOTS, hidden)
        self.norm_emb = nn.Embedding(CODE_SLOTS, hidden)
        self.inp = nn.Linear(KAPPA_FEATURES, hidden)
        self.mix = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        with torch.no_grad():  # start near the canonical gauge, with gradients everywhere
            self.out[-1].weight.mul_(0.1)
            self.out[-1].bias.zero_()

    def on_section(self, section: str, signs: str) -> "GaugeMap":
        """This gauge on another exact section (``section``, ``signs``: as in ``__init__``),
        sharing its learned factor: a shallow copy whose parameters are this map's own, so
        training either trains both. :class:`~paramgraph.models.metanet.MetaNet`'s
        ``gauge_frames`` reads a network through several such sections."""
        if section not in SECTIONS:
            raise ValueError(f"unknown gauge section '{section}'; choose from {SECTIONS}")
        if signs not in GAUGE_SIGNS:
            raise ValueError(f"unknown gauge signs '{signs}'; choose from {GAUGE_SIGNS}")
        view = copy.copy(self)  # new attribute dict; _parameters/_modules shared by reference
        view.section, view.signs = section, signs
        return view

    def section_factors(self, st: GraphStructure, edge_value: Tensor,
                        node_value: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The exact (unlearned) section's factor ``[N]`` and the edges' ``(sum of squares, sum)``
        of the input values, both in the dtype of ``edge_value``. With attention (``st.heads``)
        the factor is the one applied around the head section (unit factors, then the heads,
        then the balancing sweeps; see the module docstring)."""
        if st.heads is None:
            f, sums = section_factors(st, edge_value, node_value, self.section, self.sweeps,
                                      self._statistic)
            return self._signs_kept(f), sums
        f, b = self._head_section(st, edge_value, node_value)[:2]
        return f * b, _edge_sums(st, edge_value)

    @property
    def _statistic(self) -> str:
        """The canonicaliser's sign statistic (any, where signs are not kept)."""
        return "bias" if self.signs == "none" else self.signs

    def _signs_kept(self, f: Tensor) -> Tensor:
        """The section's factors ``f``, without their sign flips where ``signs="none"``."""
        return f.abs() if self.signs == "none" else f

    def forward(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                node_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g = self.gauge(st, edge_value, node_value, node_mask)
        return g.edge_value, g.node_value, g.alpha

    def gauge(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
              node_mask: Tensor, inputs: "GaugeInputs | None" = None) -> "Gauged":
        """The gauged values and what was applied (:class:`Gauged`, whose ``undo`` goes back to
        the input's frame); ``forward`` returns its first three fields. Computed outside any
        autocast (bfloat16 training): the learned factor multiplies every value of the network,
        and in bfloat16 it would move the gauged network by ~0.4% between training and the
        float32 evaluation. ``inputs``: this batch's :meth:`invariant_inputs`, computed once
        per graph beforehand (networks without attention; ignored where the batch has some)."""
        with without_autocast(edge_value.device.type):
            return self._gauge(st, edge_value, node_value, node_mask, inputs)

    def _wide(self, t: Tensor) -> torch.dtype:
        """The dtype the section is computed in (float64 where ``precise`` and available)."""
        return torch.float64 if self.precise and t.device.type != "mps" else t.dtype

    def invariant_inputs(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                         node_mask: Tensor) -> "GaugeInputs":
        """What the gauge reads of a batch without attention that its learned parameters do
        not change: the section's factor and kappa's features (:class:`GaugeInputs`, in the
        wide dtype). They depend on each network alone, so a data set can compute them once per
        graph and hand them to :meth:`gauge` with every batch (``paramgraph.tasks.data``: about
        a twentieth of a quasi training step on small graphs, the float64 section with its
        balancing sweeps)."""
        if st.heads is not None:
            raise ValueError("the gauge's inputs of a batch with attention heads are not "
                             "cached: the head section depends on the learned directions")
        with without_autocast(edge_value.device.type):
            wide = self._wide(edge_value)
            f, sums = self.section_factors(st, edge_value.to(wide), node_value.to(wide))
            return GaugeInputs(f, self.kappa_features(st, f, sums, node_value, node_mask))

    def input_key(self, dtype: torch.dtype) -> int:
        """A number that names everything :meth:`invariant_inputs` depends on besides the
        network (section, sweeps, sign statistic, precision, the metanet's dtype): a batch's
        cached inputs are read only where their key is this one."""
        tag = f"gauge-inputs/1/{self.section}/{self.sweeps}/{self.signs}/{self.precise}/{dtype}"
        return zlib.crc32(tag.encode())

    def _gauge(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
               node_mask: Tensor, inputs: "GaugeInputs | None" = None) -> "Gauged":
        dtype = edge_value.dtype
        wide = self._wide(edge_value)
        ev, nv = edge_value.to(wide), node_value.to(wide)
        if st.heads is not None:
            return self._gauge_heads(st, ev, nv, node_mask, dtype)
        if inputs is None:
            inputs = self.invariant_inputs(st, edge_value, node_value, node_mask)
        f = inputs.factor.to(wide)
        alpha = f
        if self.learned and st.has_scale:
            s = self.kappa(st, inputs.features).to(wide)
            alpha = f * torch.where(st.scale, s.exp(), torch.ones_like(s))
        ev, nv = apply_factors(st, alpha, ev, nv)
        return Gauged(ev.to(dtype), nv.to(dtype), alpha.to(dtype), None)

    def _head_section(self, st: GraphStructure, ev: Tensor, nv: Tensor):
        """Unit factors ``f``, then the head section, then balancing factors ``b`` from there:
        ``(f, b, sections, ev, nv)`` with ``(ev, nv)`` the unit-scaled, head-canonical values."""
        f = self._signs_kept(canonical_factors(st, ev, nv, signs=self._statistic))
        ev, nv = apply_factors(st, f, ev, nv)
        sections = head_sections(st.heads, ev, nv)
        ev, nv = write_heads(st.heads, sections, ev, nv)
        b = torch.ones_like(f)
        if self.section == "balanced":
            ss, _ = _edge_sums(st, ev)
            node_ss = torch.where(st.plain, nv[:, 0].square(),
                                  nv[:, 1].square() + nv[:, 2].square())
            b = balance_factors(st, ss, node_ss, self.sweeps)
        return f, b, sections, ev, nv

    def _gauge_heads(self, st: GraphStructure, ev: Tensor, nv: Tensor, node_mask: Tensor,
                     dtype: torch.dtype) -> "Gauged":
        f, b, sections, ev, nv = self._head_section(st, ev, nv)
        alpha = b
        t_qk = t_vo = None
        if self.learned:  # kappa reads the canonical network: scales, and the heads' rows
            sums = _edge_sums(st, ev)
            s = self.log_scale(st, b, sums, nv, node_mask).to(ev.dtype)
            alpha = b * torch.where(st.scale, s.exp(), torch.ones_like(s))
            t_qk, t_vo = st.heads.direction_log_factors(s)
            ev, nv = write_heads(st.heads, sections, ev, nv, t_qk, t_vo)
        ev, nv = apply_factors(st, alpha, ev, nv)
        frame = HeadFrame.of(st.heads, sections, t_qk, t_vo)
        return Gauged(ev.to(dtype), nv.to(dtype), (f * alpha).to(dtype), frame)

    def log_scale(self, st: GraphStructure, f: Tensor, sums: tuple[Tensor, Tensor],
                  node_value: Tensor, node_mask: Tensor) -> Tensor:
        """kappa: ``[N]`` log-factors in ``[-bound, bound]``, from canonical quantities only
        (:meth:`kappa` of :meth:`kappa_features`)."""
        return self.kappa(st, self.kappa_features(st, f, sums, node_value, node_mask))

    def kappa_features(self, st: GraphStructure, f: Tensor, sums: tuple[Tensor, Tensor],
                       node_value: Tensor, node_mask: Tensor) -> Tensor:
        """``[N, 12]`` per-neuron quantities of the canonical network (the section ``f`` applied
        to values whose edge sums are ``sums``), in the dtype of ``f``: what kappa reads.

        Computed in the dtype of ``f`` (the gauge's wide one) and cast to the layers' dtype only
        in :meth:`kappa`: a dead neuron's unit factor can pass 1e38, its canonical sums float32's
        range, and in float32 ``inf * 0`` made NaN features for every graph batched with one.
        """
        ss, sv = sums
        dtype = f.dtype
        node_value = node_value.to(dtype)
        one = torch.ones_like(f)
        a = torch.where(st.plain, f, one)
        mult = _edge_multipliers(st, f)
        css, csv = ss * mult.square(), sv * mult  # canonical per-edge sums (0 for fixed edges)
        n = st.num_nodes
        in_ss = scatter(css, st.dst, 0, dim_size=n, reduce="sum")
        in_sv = scatter(csv, st.dst, 0, dim_size=n, reduce="sum")
        out_ss = scatter(css, st.src, 0, dim_size=n, reduce="sum")
        out_sv = scatter(csv, st.src, 0, dim_size=n, reduce="sum")
        fan_in = st.fan_in.clamp_min(1).to(dtype)
        fan_out = st.fan_out.clamp_min(1).to(dtype)
        norm_f = torch.where(st.plain, one, f)
        mask = node_mask.to(dtype)
        feats = torch.stack([
            torch.log(in_ss + 1e-12) / 4, in_sv / (fan_in * (in_ss + 1e-12)).sqrt(),
            torch.log(out_ss + 1e-12) / 4, out_sv / (fan_out * (out_ss + 1e-12)).sqrt(),
            node_value[:, 0] * a * mask[:, 0], node_value[:, 1] * norm_f * mask[:, 1],
            node_value[:, 2] * norm_f * mask[:, 2], symlog(node_value[:, 3]) * mask[:, 3],
            torch.log(node_value[:, 4].clamp_min(1e-12)) * mask[:, 4],
            torch.log(fan_in) / 4, torch.log(fan_out) / 4, st.rel_depth.to(dtype),
        ], dim=1)
        return feats

    def kappa(self, st: GraphStructure, features: Tensor) -> Tensor:
        """The learned factor's network: ``[N]`` log-factors in ``[-bound, bound]`` from
        :meth:`kappa_features`."""
        h = (self.inp(features.to(self.inp.weight.dtype)) + self.type_emb(st.node_type)
             + self.act_emb(st.node_act) + self.norm_emb(st.node_norm))
        h = self.mix(h)
        src, dst = st.src[st.weight_ids], st.dst[st.weight_ids]
        n = st.num_nodes
        m_in = scatter(h.index_select(0, src), dst, 0, dim_size=n, reduce="mean")
        m_out = scatter(h.index_select(0, dst), src, 0, dim_size=n, reduce="mean")
        s = self.out(torch.cat([h, m_in, m_out], dim=1)).squeeze(1)
        return self.bound * torch.tanh(s)


KAPPA_FEATURES = 12  # kappa_features per neuron


@dataclass(frozen=True)
class GaugeInputs:
    """:meth:`GaugeMap.invariant_inputs`: the section's per-neuron ``factor`` [N] and kappa's
    ``features`` [N, 12], both in the gauge's wide dtype. A batch carries them as the fields
    :data:`GAUGE_INPUT_FIELDS` (and ``gauge_key``, :meth:`GaugeMap.input_key`, per graph)."""

    factor: Tensor
    features: Tensor


# the batch fields of cached gauge inputs: factor [N], features [N, 12], key [num_graphs]
GAUGE_INPUT_FIELDS = CACHED_VALUE_FIELDS


def without_autocast(device_type: str):
    """A context in which autocast is off on ``device_type`` (nothing to turn off on a device
    without autocast, such as ``meta``)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # "unsupported scalarType": this device type has no autocast
        return contextlib.nullcontext()


@dataclass
class Gauged:
    """:meth:`GaugeMap.gauge`'s result: the gauged ``edge_value``/``node_value`` (input dtype),
    the per-neuron factor ``alpha`` applied and, where the batch has attention, the head maps
    (``heads``, a :class:`~paramgraph.canonical_heads.HeadFrame`)."""

    edge_value: Tensor
    node_value: Tensor
    alpha: Tensor
    heads: HeadFrame | None

    def undo(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor
             ) -> tuple[Tensor, Tensor]:
        """Values in the gauged frame (e.g. a weight head's output) moved back to the input's
        frame: ``1 / alpha``, then the inverse head maps (computed in float64 where the head maps
        are). Returns ``(edge_value, node_value)`` in the dtype of ``edge_value``."""
        dtype = edge_value.dtype
        ev, nv = apply_factors(st, 1.0 / self.alpha.to(dtype), edge_value, node_value)
        if self.heads is None:
            return ev, nv
        wide = self.heads.q_inv[0].dtype if self.heads.q_inv else dtype
        ev, nv = self.heads.undo(ev.to(wide), nv.to(wide))
        return ev.to(dtype), nv.to(dtype)
