"""paramgraph: neural-network weights as parameter graphs.

Neurons are nodes, weights are edges. :func:`from_module` converts a live ``nn.Module``,
:func:`to_state_dict` inverts the conversion bit-exactly, and :func:`random_symmetry` draws an
element of the network's symmetry group (the test oracle of the whole project).

The metanet lives in :mod:`paramgraph.models`, zoos, tasks, training and the command line in
:mod:`paramgraph.tasks`. Names are imported on first use (PEP 562), so ``import paramgraph`` and
``paramgraph --help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the submodule that defines it (one table, read by __getattr__ and __dir__)
_EXPORTS = {
    "errors": ("CheckpointError", "GraphFormatError", "ParamGraphError", "UnsupportedModuleError"),
    "graph": ("ParamGraph", "Segment", "SegmentTable"),
    "inverse": ("from_state_dict", "load_into", "to_state_dict"),
    "checkpoint": ("load_checkpoint", "save_state_dict"),
    "convert": ("convert_checkpoint",),
    "graphfile": ("load_graph", "save_graph"),
    "nn": ("Sine",),
    "symmetry": ("GroupElement", "apply_element", "random_element", "random_symmetry"),
    "export": ("from_exported",),
    "trace": ("SUPPORTED", "from_module"),
    "types": ("NODE_SLOTS", "Activation", "EdgeType", "HeadRole", "NodeType", "NormKind"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'paramgraph' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
