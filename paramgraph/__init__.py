"""paramgraph: neural-network weights as parameter graphs.

Neurons are nodes, weights are edges. :func:`from_module` converts a live ``nn.Module``,
:func:`to_state_dict` inverts the conversion bit-exactly, and :func:`random_symmetry` draws an
element of the network's symmetry group (the test oracle of the whole project).
"""

from .errors import GraphFormatError, ParamGraphError, UnsupportedModuleError
from .graph import ParamGraph, Segment, SegmentTable, pad_edge_values
from .inverse import from_state_dict, load_into, to_state_dict
from .io import CheckpointError, load_checkpoint, load_graph, save_graph
from .nn import Sine
from .symmetry import GroupElement, apply_element, random_element, random_symmetry
from .export import from_exported
from .trace import SUPPORTED, from_module
from .types import (
    NODE_SLOTS,
    Activation,
    EdgeType,
    HeadRole,
    NodeType,
    NormKind,
)

__version__ = "0.1.0"

__all__ = [
    "Activation", "EdgeType", "GraphFormatError", "GroupElement", "HeadRole", "NODE_SLOTS",
    "NodeType", "NormKind", "ParamGraph", "ParamGraphError", "SUPPORTED", "Segment",
    "SegmentTable", "Sine", "UnsupportedModuleError", "apply_element", "from_module",
    "from_state_dict", "load_into", "CheckpointError", "from_exported", "load_checkpoint",
    "load_graph", "save_graph", "pad_edge_values", "random_element", "random_symmetry", "to_state_dict",
]
