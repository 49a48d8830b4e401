"""The metanet: learned quasi-equivariant gauge maps, message passing, invariant and weight heads.

``MetaNet(mode=..., task=...)`` is the public entry point; the pieces are exported for reuse and
for tests. See DESIGN.md section 5 and the docstrings of :mod:`paramgraph.models.gauge` (the gauge map),
:mod:`paramgraph.models.backbone` (the architecture shared by all modes), :mod:`paramgraph.models.layers` (message
passing), :mod:`paramgraph.models.readers` (strict canonicalisation vs free reads), :mod:`paramgraph.models.encoders`
and :mod:`paramgraph.models.heads`.
"""

from .backbone import Backbone
from .encoders import EdgeEncoder, KernelBins, NodeEmbedding, NodeEncoder
from .gauge import GaugeMap, apply_factors, canonical_factors
from .heads import InvariantHead, WeightHead
from .layers import EdgeAggregation, EdgeNodeLayer, ValueLayer
from .metanet import FRAMES, MODES, TASKS, MetaNet, prepare
from .readers import FreeReader, StrictReader, canon
from .structure import GraphStructure, fourier_features, symlog

__all__ = [
    "Backbone", "EdgeAggregation", "EdgeEncoder", "EdgeNodeLayer", "FRAMES", "FreeReader",
    "GaugeMap", "GraphStructure", "InvariantHead", "KernelBins", "MODES", "MetaNet",
    "NodeEmbedding", "NodeEncoder", "StrictReader", "TASKS", "ValueLayer", "WeightHead",
    "apply_factors", "canon", "canonical_factors", "fourier_features", "prepare", "symlog",
]
