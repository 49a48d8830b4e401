"""The statistics baseline (StatNN, Unterthiner et al. 2020): per-tensor weight statistics fed to
scikit-learn's histogram gradient boosting.

Features. For every floating-point tensor of a network's state_dict (weights, biases, and the
batch-norm scales, shifts and running statistics), in the architecture's state_dict order (the
forward order of the zoo architectures; :meth:`Zoo.state_dict` restores it from the
alphabetical order of the safetensors file), seven statistics: mean, variance, and the 0/25/50/75/100%
quantiles. Then:

* a zoo of one architecture (``cnn``, ``inr``) uses the statistics of every tensor, concatenated;
* a heterogeneous zoo needs a fixed length whatever the depth, so it uses the statistics of the
  first ``K = 4`` and of the last ``K = 4`` tensors (two layers' weight and bias at each end),
  zero-padded with a 0/1 "present" flag per slot when a network has fewer tensors, plus global
  statistics of all weight matrices/kernels pooled together and of all 1-d tensors pooled
  together, plus log(number of parameters) and the number of tensors. No architecture labels
  are used: the baseline sees weights only, like the metanets.

Models (each task's :meth:`~paramgraph.tasks.objectives.Objective.fit_baseline`):
``HistGradientBoostingRegressor`` (generalisation: test accuracy; INR editing: one regressor per
output pixel of the dilated image) and ``HistGradientBoostingClassifier`` (INR classification),
with default settings and a fixed ``random_state``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .errors import TaskError
from .objectives import Objective, get_objective
from .zoo import Zoo

K_ENDS = 4
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATS = 2 + len(QUANTILES)


def tensor_stats(t: torch.Tensor) -> np.ndarray:
    """``[7]``: mean, variance and the 0/25/50/75/100% quantiles of ``t``'s entries."""
    v = t.detach().double().reshape(-1)
    if v.numel() == 0:
        return np.zeros(STATS)
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64))
    var = v.var(unbiased=False) if v.numel() > 1 else torch.zeros((), dtype=torch.float64)
    return np.concatenate([[float(v.mean()), float(var)], q.numpy()])


def _tensors(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [v for v in state.values() if v.is_floating_point()]


def features(state: dict[str, torch.Tensor], hetero: bool) -> np.ndarray:
    """The baseline's feature vector of one network (see the module docstring)."""
    ts = _tensors(state)
    if not ts:
        raise TaskError("a network without floating-point tensors has no weight statistics")
    if not hetero:
        return np.concatenate([tensor_stats(t) for t in ts])
    slots = []
    for t in (ts[:K_ENDS] + [None] * K_ENDS)[:K_ENDS] + ([None] * K_ENDS + ts[-K_ENDS:])[-K_ENDS:]:
        slots.append(np.concatenate([[0.0], np.zeros(STATS)]) if t is None
                     else np.concatenate([[1.0], tensor_stats(t)]))
    mats = [t.reshape(-1) for t in ts if t.dim() >= 2]
    vecs = [t.reshape(-1) for t in ts if t.dim() < 2]
    glob = [tensor_stats(torch.cat(mats)) if mats else np.zeros(STATS),
            tensor_stats(torch.cat(vecs)) if vecs else np.zeros(STATS)]
    n_params = sum(t.numel() for t in ts)
    return np.concatenate(slots + glob + [[math.log(n_params), float(len(ts))]])


def zoo_features(zoo: Zoo, ids: list[int] | None = None) -> np.ndarray:
    """``[n, F]`` features of the networks ``ids`` (default all) of ``zoo``."""
    ids = list(range(len(zoo))) if ids is None else ids
    hetero = zoo.heterogeneous
    return np.stack([features(zoo.state_dict(i), hetero) for i in ids])


def rendered_features(zoo: Zoo, ids: list[int] | None = None, side: int = 8) -> np.ndarray:
    """``[n, side * side]``: each SIREN's output on a ``side x side`` grid, i.e. the image it
    draws, read at the points where ``--probes side^2`` probes it. Not a statistic of the
    weights: the reference for what reading the output neuron's probe features alone gives."""
    from .inr import batched_forward, grid, stack
    from .objectives import siren_hidden

    ids = list(range(len(zoo))) if ids is None else ids
    hidden = siren_hidden(zoo)
    out = []
    for start in range(0, len(ids), 512):
        params = stack([zoo.state_dict(i) for i in ids[start:start + 512]], hidden)
        out.append(batched_forward([p.double() for p in params], grid(side).double()).numpy())
    return np.concatenate(out)


# The feature sets of `paramgraph baseline --features`: name -> features of the whole zoo.
FEATURE_SETS = {"statistics": zoo_features, "rendered": rendered_features}


def fit_predict(task: str | Objective, zoo: Zoo, split_train: str = "train", split_eval: str = "test",
                seed: int = 0, x_all: np.ndarray | None = None,
                eval_zoo: Zoo | None = None) -> dict:
    """Fit the baseline for ``task`` on one split and predict another (of ``eval_zoo`` where
    given: the networks of another zoo, e.g. the same ones moved along their orbits).

    Returns ``{"pred": array, "true": array, "metrics": dict, "seconds": fit+predict time}``; the
    model and the metrics are the task's (:meth:`Objective.fit_baseline
    <paramgraph.tasks.objectives.Objective.fit_baseline>`, :meth:`Objective.metrics
    <paramgraph.tasks.objectives.Objective.metrics>`). ``x_all`` may pass precomputed
    :func:`zoo_features` of the whole zoo. ``task``: a task name, or a task configured with its
    column (``get_objective("regression", "test_loss")``). Raises :class:`TaskError` for an
    unknown task or a zoo of the wrong kind.
    """
    import sklearn.ensemble  # noqa: F401  (imported before the clock starts)

    objective = task if isinstance(task, Objective) else get_objective(task)
    tr, ev = zoo.split(split_train), zoo.split(split_eval)
    objective = objective.fitted(zoo, tr)
    y_all = objective.targets(zoo).numpy()
    start = time.time()
    x_all = zoo_features(zoo) if x_all is None else x_all
    x_eval, y_eval = x_all, y_all
    if eval_zoo is not None:
        ev = eval_zoo.split(split_eval)
        x_eval, y_eval = zoo_features(eval_zoo), objective.targets(eval_zoo).numpy()
    pred = objective.fit_baseline(x_all[tr], y_all[tr], x_eval[ev], seed)
    seconds = time.time() - start
    return {"pred": pred, "true": y_eval[ev], "metrics": objective.metrics(pred, y_eval[ev]),
            "seconds": seconds}
