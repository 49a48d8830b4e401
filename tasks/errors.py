"""Errors raised by the task layer. All derive from :class:`paramgraph.ParamGraphError`, so the
command line turns them into one clear line on stderr and a non-zero exit status."""

from __future__ import annotations

from paramgraph import ParamGraphError


class TaskError(ParamGraphError):
    """Base class: bad input to a zoo, data set, task, training run or edit."""


class ZooError(TaskError):
    """A zoo directory, spec or metadata table that is missing, inconsistent or corrupt."""


class RunError(TaskError):
    """A training run directory, its config or checkpoint that is missing or does not fit."""
