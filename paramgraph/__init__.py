"""paramgraph: neural-network weights as parameter graphs.

Neurons are nodes, weights are edges. :func:`from_module` converts a live ``nn.Module``,
:func:`to_state_dict` inverts the conversion bit-exactly, and :func:`random_symmetry` draws an
element of the network's symmetry group (the test oracle of the whole project).

The metanet lives in :mod:`paramgraph.models`, zoos, tasks, training and the command line in
:mod:`paramgraph.tasks`. Names are imported on first use (PEP 562), so ``import paramgraph`` and
``paramgraph --help`` do not pay for importing torch.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the submodule that defines it (one table, read by __getattr__ and __dir__)
_EXPORTS = {
    "errors": ("CheckpointError", "GraphFormatError", "ParamGraphError", "UnsupportedModuleError"),
    "graph": ("ParamGraph",),
    "layout": ("PlainGraph", "Segment", "SegmentTable", "plain_graphs"),
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
__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)
