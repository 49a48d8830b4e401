"""``TreePrior``: an exactly invariant prior for the invariant head, made of gradient-boosted
trees on per-layer statistics of the exact section; the GNN learns what it gets wrong.

Why. On zoos of ~1,400 training networks, gradient boosting on weight statistics beats every
neural learner on the very same statistics by ~0.05 Kendall tau, and the metanets' errors are not
its errors: blends of the two beat both (README, "Why gradient boosting on weight statistics
wins"). So the invariant head *adds* its output to such trees' prediction, and the GNN is trained
on what the trees miss:

.. math::
    \\hat y(\\theta) = \\mathrm{link}\\Big(\\frac1K \\sum_{k=1}^{K} T_k\\big(s(\\sigma(\\theta))\\big)\\Big)
                    + h(\\theta)

with :math:`\\sigma` the exact (unlearned) section of the scaling, sign and attention-head group
(:class:`~paramgraph.models.gauge.GaugeMap` with ``learned=False``; the identity in ``perm``
mode), :math:`s` the per-layer statistics of :func:`~paramgraph.models.statistics.layer_features`
(in float64), :math:`T_k` the k-th of ``K`` ensembles of regression trees, ``link`` the task's map
from its target to the head's output (``"logit"`` for accuracies read through a sigmoid) and
:math:`h` the metanet's own output.

**Cross-fitting.** :mod:`paramgraph.tasks.prior` splits the training networks into ``K`` folds by
training run and fits :math:`T_k` on the networks outside fold ``k``. While training, a network of
fold ``k`` is given :math:`T_k`'s prediction (made without it) as ``offset``: the GNN then learns
the trees' errors on networks they have not seen, not the tiny residuals of trees that have
memorised their training set. Every other network (validation, test, a user's checkpoint) gets the
mean of the ``K`` ensembles (of as many as there are training runs, where those are fewer).

**Symmetry.** :math:`\\sigma(g\\theta) = \\sigma(\\theta)` to float64 rounding for every group
element ``g``, and the statistics are functions of multisets, so the prior is exactly invariant in
``quasi`` and ``strict`` mode (to permutations only in ``perm`` mode, like the statistics
baseline). A tree compares a feature with a threshold, so the prior is piecewise constant in
:math:`\\theta`: rounding at the 1e-13 level moves it only where a feature lies that close to a
threshold; statistics below :data:`NOISE_FLOOR` (a nearly dead layer's quantiles, whose
rounding is not invariant) are read as zero.

**Storage.** The ensembles live in buffers of a fixed shape ``[K, T, M]`` (``T`` trees of at most
``M`` nodes: scikit-learn's ``HistGradientBoostingRegressor`` defaults, 100 iterations of 31
leaves), so a saved metanet is a plain state_dict and loading one unpickles nothing. Thresholds,
leaf values and base scores are float64 kept as int64 bit patterns, so that ``net.float()`` or
``net.half()`` cannot round them. An unfitted prior (all-zero buffers) adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .gauge import GaugeMap, without_autocast
from .statistics import layer_features, num_layer_features
from .structure import GraphStructure

FOLDS = 5
TREES = 100  # HistGradientBoostingRegressor(max_iter=100)
NODES = 2 * 31 - 1  # max_leaf_nodes=31: a binary tree of 31 leaves
LOGIT_EPS = 1e-3
# statistics below this are rounding noise (the section's values are O(1)) and read as 0: a tree
# must not split the noise of a nearly dead layer's quantiles (1e-20 in one frame, -4e-20 in
# another), which is not invariant
NOISE_FLOOR = 1e-12

# task target -> the head's output space (the inverse of the task's from_output)
PRIOR_LINKS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda p: p,
    "logit": lambda p: torch.logit(p.clamp(LOGIT_EPS, 1 - LOGIT_EPS)),
}

# the node arrays one fitted tree ensemble hands to TreePrior.load_fold, and their dtypes
TREE_FIELDS = {"feature": torch.int64, "threshold": torch.float64, "left": torch.int64,
               "right": torch.int64, "leaf": torch.bool, "missing_left": torch.bool,
               "value": torch.float64}
_AS_BITS = ("threshold", "value")  # float64 fields stored as int64 bit patterns


class TreePrior(nn.Module):
    """``K`` cross-fitted tree ensembles on the section's per-layer statistics; see the module
    docstring. ``section``: the exact section the statistics are read on (``None``: raw values);
    ``link``: a key of :data:`PRIOR_LINKS`; ``ends``: layers at each end of a graph that get their
    own statistics (:func:`~paramgraph.models.statistics.layer_features`)."""

    def __init__(self, section: GaugeMap | None, link: str = "identity", ends: int = 4,
                 folds: int = FOLDS, trees: int = TREES, nodes: int = NODES):
        super().__init__()
        if link not in PRIOR_LINKS:
            raise ValueError(f"unknown prior link '{link}'; choose from {sorted(PRIOR_LINKS)}")
        if section is not None and section.learned:
            raise ValueError("the prior reads an exact section: pass GaugeMap(learned=False)")
        self.section, self.link, self.ends = section, link, ends
        self.num_features = num_layer_features(ends)
        shape = (folds, trees, nodes)
        for name, dtype in TREE_FIELDS.items():
            self.register_buffer(name, torch.zeros(shape, dtype=torch.int64 if name in _AS_BITS
                                                   else dtype))
        self.register_buffer("base", torch.zeros(folds, dtype=torch.int64))  # float64 bits
        self.register_buffer("depth", torch.zeros((), dtype=torch.int64))
        self.register_buffer("fitted", torch.zeros(folds, dtype=torch.bool))

    @property
    def folds(self) -> int:
        return self.feature.shape[0]

    def load_fold(self, fold: int, trees: list[Mapping[str, Tensor]], base: float) -> None:
        """Set ensemble ``fold`` from ``trees`` (one mapping of :data:`TREE_FIELDS` arrays per
        tree, nodes in scikit-learn's order: node 0 is the root) and its ``base`` score. Raises
        ``ValueError`` if there are more trees or nodes than the buffers hold."""
        _, t_max, m_max = self.feature.shape
        if len(trees) > t_max:
            raise ValueError(f"{len(trees)} trees; the prior holds at most {t_max}")
        with torch.no_grad():
            for name, dtype in TREE_FIELDS.items():
                buf = torch.zeros((t_max, m_max), dtype=dtype)
                if name == "leaf":
                    buf.fill_(True)  # unused trees and nodes: leaves of value 0
                for t, tree in enumerate(trees):
                    col = torch.as_tensor(tree[name]).to(dtype)
                    if col.numel() > m_max:
                        raise ValueError(f"a tree of {col.numel()} nodes; the prior holds at "
                                         f"most {m_max}")
                    buf[t, : col.numel()] = col
                dest = getattr(self, name)
                dest[fold] = (buf.view(torch.int64) if name in _AS_BITS else buf).to(dest.device)
            self.base[fold] = torch.tensor(float(base), dtype=torch.float64).view(torch.int64)
            depth = max((int(tree["depth"]) for tree in trees), default=0)
            self.depth.fill_(max(int(self.depth), depth))
            self.fitted[fold] = True

    def features(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                 node_mask: Tensor) -> Tensor:
        """``[num_graphs, num_features]`` float64: the statistics the trees read."""
        with torch.no_grad(), without_autocast(edge_value.device.type):
            ev, nv = edge_value.double(), node_value.double()
            if self.section is not None:
                ev, nv = self.section(st, ev, nv, node_mask)[:2]
            x = layer_features(st, ev.double(), nv.double(), node_mask, self.ends)
            return torch.where(x.abs() < NOISE_FLOOR, torch.zeros_like(x), x)

    def ensembles(self, x: Tensor) -> Tensor:
        """``[K, B]``: each ensemble's prediction (target space) for features ``x`` ``[B, F]``;
        scikit-learn's rule: left where ``x <= threshold``, a NaN goes where training sent
        missing values."""
        k, t, m = self.feature.shape
        flat = {name: getattr(self, name).reshape(k * t, m) for name in TREE_FIELDS}
        threshold = flat["threshold"].view(torch.float64)
        xt = x.to(torch.float64).t().contiguous()  # [F, B]
        idx = torch.zeros((k * t, x.shape[0]), dtype=torch.int64, device=x.device)
        for _ in range(int(self.depth)):
            v = xt.gather(0, flat["feature"].gather(1, idx))
            left = torch.where(torch.isnan(v), flat["missing_left"].gather(1, idx),
                               v <= threshold.gather(1, idx))
            step = torch.where(left, flat["left"].gather(1, idx), flat["right"].gather(1, idx))
            idx = torch.where(flat["leaf"].gather(1, idx), idx, step)
        leaves = flat["value"].view(torch.float64).gather(1, idx).view(k, t, -1).sum(1)
        return leaves + self.base.view(torch.float64).unsqueeze(1)

    def mean_prediction(self, x: Tensor) -> Tensor:
        """``[B]``: the mean of the fitted ensembles' predictions (a training split of fewer
        runs than ``K`` fits fewer folds)."""
        used = self.fitted.to(torch.float64).unsqueeze(1)
        return (self.ensembles(x) * used).sum(0) / used.sum().clamp_min(1)

    def forward(self, st: GraphStructure, edge_value: Tensor, node_value: Tensor,
                node_mask: Tensor, offset: Tensor | None = None) -> Tensor:
        """``[num_graphs]`` float64: the prior in the head's output space. ``offset``: the
        graphs' out-of-fold predictions in target space (training networks, see the module
        docstring); without it, the mean of the fitted ensembles. Zeros while unfitted."""
        if not bool(self.fitted.any()):
            return torch.zeros(st.num_graphs, dtype=torch.float64, device=edge_value.device)
        if offset is None:
            x = self.features(st, edge_value, node_value, node_mask)
            offset = self.mean_prediction(x)
        return PRIOR_LINKS[self.link](offset.to(torch.float64).reshape(-1))

