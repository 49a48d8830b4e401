"""Metrics of the tasks, on plain tensors or arrays (each task picks its own, see
:mod:`paramgraph.tasks.objectives`)."""

from __future__ import annotations

import math

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def kendall_tau(pred, true) -> float:
    """Kendall's tau-b between predictions and targets (nan when either is constant)."""
    from scipy.stats import kendalltau

    p, t = _np(pred).reshape(-1), _np(true).reshape(-1)
    if len(p) < 2 or np.all(p == p[0]) or np.all(t == t[0]):
        return float("nan")
    return float(kendalltau(p, t).statistic)


def r2(pred, true) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (nan for constant targets)."""
    p, t = _np(pred).reshape(-1), _np(true).reshape(-1)
    ss_tot = float(((t - t.mean()) ** 2).sum())
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(((t - p) ** 2).sum()) / ss_tot


def accuracy(logits_or_labels, true) -> float:
    """Fraction of correct classes; takes ``[n, C]`` scores or ``[n]`` predicted labels."""
    p = _np(logits_or_labels)
    if p.ndim == 2:
        p = p.argmax(1)
    return float((p.reshape(-1) == _np(true).reshape(-1)).mean())


def mse(pred, true) -> float:
    """Mean squared error over every entry."""
    return float(((_np(pred) - _np(true)) ** 2).mean())


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` beats ``best`` for ``metric`` (higher is better except for losses/mse)."""
    return beats(new, best, higher=metric not in ("mse", "loss"))


def beats(new: float, best: float | None, higher: bool) -> bool:
    """Whether the score ``new`` beats ``best`` (``higher``: larger is better). A missing or NaN
    ``new`` never does; anything beats a missing or NaN ``best``."""
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return new > best if higher else new < best


def mae(pred, true) -> float:
    """Mean absolute error over every entry."""
    return float(np.abs(_np(pred) - _np(true)).mean())
