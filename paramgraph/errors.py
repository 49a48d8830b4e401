"""Errors raised by paramgraph. Each names the module, tensor or file at fault and what is wrong."""

from __future__ import annotations

import os


class ParamGraphError(Exception):
    """Base class of every error paramgraph raises on bad input."""


class UnsupportedModuleError(ParamGraphError):
    """A module, function or data flow that the converter cannot represent as a parameter graph.

    The message names the submodule's path (``""`` is the root), its type and what is supported.
    """

    def __init__(self, path: str, what: str, reason: str, supported: str | None = None):
        self.path = path
        self.what = what
        self.reason = reason
        self.supported = supported
        where = f"submodule '{path}'" if path else "the root module"
        message = f"{where} ({what}): {reason}"
        if supported:
            message += f". Supported: {supported}"
        super().__init__(message)


class GraphFormatError(ParamGraphError):
    """A parameter graph (or a file holding one) that is inconsistent or corrupt."""


class CheckpointError(ParamGraphError):
    """A checkpoint file that is missing, unreadable, corrupt, unsafe to load, or does not fit.

    The message starts with the file's path and says what is wrong.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def one_line(err: BaseException | str, limit: int | None = 300) -> str:
    """An error (or text) as one line of at most ``limit`` characters (``None``: no limit), for
    messages that quote another library's multi-line error."""
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + "..."
