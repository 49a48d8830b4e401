"""Package attributes imported on first use (PEP 562): ``import paramgraph`` and the command
line's help stay free of torch, and each public name still has one home module."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, namespace: dict, exports: dict[str, tuple[str, ...]]):
    """``(__getattr__, __dir__, __all__)`` for a package whose public names live in submodules.

    ``exports`` maps a submodule (relative to ``package``) to the names it defines; the first
    lookup of a name imports its submodule and stores the value in ``namespace`` (the package's
    ``globals()``), so later lookups are plain attribute reads.
    """
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(home))

    return __getattr__, __dir__, sorted(home)
