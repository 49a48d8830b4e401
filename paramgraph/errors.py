"""Errors raised by paramgraph. Each names the module, tensor or file at fault and what is wrong."""

from __future__ import annotations


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
