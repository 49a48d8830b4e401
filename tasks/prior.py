"""Cross-fitting a metanet's tree prior (:class:`~paramgraph.models.prior.TreePrior`) on the
training networks of a run.

:func:`fit_prior` reads the prior's statistics of every training network (on the exact section,
through the metanet's own :meth:`TreePrior.features`, so training and inference read the same
numbers), splits the networks into ``K`` folds by training run (the checkpoints of one run are
near-copies: a fold that held one and not another would leak), fits one
``HistGradientBoostingRegressor`` per fold on the other folds (the statistics baseline's model and
settings) and writes the fitted trees into the prior's buffers. It returns each training network's
out-of-fold prediction, which training passes to the metanet as the network's ``prior_offset``.
After loading, every fold's trees are checked against scikit-learn's own predictions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .errors import TaskError

# how far the prior's torch traversal may be from scikit-learn's predictions (float64 sums of
# 100 leaf values in another order)
EXPORT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PriorFit:
    """What :func:`fit_prior` made: ``offsets`` [n] each training network's out-of-fold
    prediction (target space, in the data set's order), ``folds`` [n] its fold, ``seconds`` the
    time of the features and fits."""

    offsets: np.ndarray
    folds: np.ndarray
    seconds: float


def run_folds(runs: list, folds: int, seed: int) -> np.ndarray:
    """``[n]``: a fold in ``[0, min(folds, number of runs))`` for each network, whole runs to
    one fold, runs dealt round-robin in an order shuffled by ``seed``. Raises
    :class:`TaskError` for fewer than two runs (nothing to cross-fit on)."""
    unique = sorted(set(runs), key=str)
    if len(unique) < 2:
        raise TaskError(f"the tree prior cross-fits on folds of training runs; the training "
                        f"split has {len(unique)} run: make a larger zoo or train with "
                        "--no-prior")
    folds = min(folds, len(unique))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[i]: rank % folds for rank, i in enumerate(order)}
    return np.array([fold_of[r] for r in runs])


def prior_features(prior, dataset, batch_size: int = 256, device="cpu") -> np.ndarray:
    """``[n, F]`` float64: ``prior``'s statistics of every graph of ``dataset``, in order."""
    from torch_geometric.loader import DataLoader

    from paramgraph.models import prepare

    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch, st = prepare(batch, device)
        out.append(prior.features(st, batch.edge_value, batch.node_value,
                                  batch.node_mask).cpu().numpy())
    return np.concatenate(out)


def prior_predictions(prior, dataset, batch_size: int = 256, device="cpu") -> np.ndarray:
    """``[n]``: the fitted prior's own prediction (target space, the mean of its ensembles) for
    every graph of ``dataset``: what the trees alone score, without the GNN."""
    x = torch.as_tensor(prior_features(prior, dataset, batch_size, device),
                        device=prior.feature.device)
    return prior.ensembles(x).mean(0).cpu().numpy()


def export_trees(estimator) -> tuple[list[dict[str, np.ndarray]], float]:
    """A fitted ``HistGradientBoostingRegressor``'s trees as :data:`TREE_FIELDS
    <paramgraph.models.prior.TREE_FIELDS>` arrays, and its base score."""
    trees = []
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise TaskError("the tree prior reads numerical statistics only")
        trees.append({"feature": nodes["feature_idx"], "threshold": nodes["num_threshold"],
                      "left": nodes["left"].astype(np.int64),
                      "right": nodes["right"].astype(np.int64),
                      "leaf": nodes["is_leaf"].astype(bool),
                      "missing_left": nodes["missing_go_to_left"].astype(bool),
                      "value": nodes["value"], "depth": int(nodes["depth"].max())})
    return trees, float(np.asarray(estimator._baseline_prediction).reshape(-1)[0])


def fit_prior(net, dataset, y: np.ndarray, runs: list, seed: int, device="cpu",
              batch_size: int = 256) -> PriorFit:
    """Cross-fit ``net.prior`` on ``dataset`` (the training networks; ``y`` [n] their targets,
    ``runs`` [n] their training runs) and load the trees into it; see the module docstring.
    Raises :class:`TaskError` for too few runs, or if the loaded trees disagree with
    scikit-learn's."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    prior = net.prior
    start = time.time()
    x = prior_features(prior, dataset, batch_size, device)
    folds = run_folds(runs, prior.folds, seed)
    offsets = np.zeros(len(y))
    prior.fitted.zero_()
    for k in range(int(folds.max()) + 1):
        inside = folds == k
        model = HistGradientBoostingRegressor(random_state=seed).fit(x[~inside], y[~inside])
        offsets[inside] = model.predict(x[inside])
        trees, base = export_trees(model)
        prior.load_fold(k, [{n: torch.as_tensor(v) for n, v in t.items()} for t in trees], base)
        mine = prior.ensembles(torch.as_tensor(x, device=prior.feature.device))[k].cpu().numpy()
        gap = float(np.abs(mine - model.predict(x)).max())
        if not gap <= EXPORT_TOLERANCE:
            raise TaskError(f"tree prior fold {k}: the exported trees predict up to {gap:.3g} "
                            "away from scikit-learn's; this scikit-learn version's tree layout "
                            "is not supported")
    return PriorFit(offsets, folds, time.time() - start)
