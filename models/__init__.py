"""The metanet: learned quasi-equivariant gauge maps, message passing, invariant and weight heads.

``MetaNet(mode=..., task=...)`` is the public entry point; the pieces are exported for reuse and
for tests. See DESIGN.md section 5 and the docstrings of :mod:`models.gauge` (the gauge map),
:mod:`models.layers` (message passing), :mod:`models.strict` (the strictly equivariant mode),
:mod:`models.encoders` and :mod:`models.heads`.
"""

from .encoders import EdgeEncoder, KernelBins, NodeEmbedding, NodeEncoder
from .gauge import GaugeMap, apply_factors, canonical_factors
from .heads import InvariantHead, WeightHead
from .layers import EdgeAggregation, EdgeNodeLayer
from .metanet import FRAMES, MODES, TASKS, MetaNet
from .strict import StrictLayer, StrictNet, canon
from .structure import GraphStructure, fourier_features, symlog

__all__ = [
    "EdgeAggregation", "EdgeEncoder", "EdgeNodeLayer", "FRAMES", "GaugeMap", "GraphStructure",
    "InvariantHead", "KernelBins", "MODES", "MetaNet", "NodeEmbedding", "NodeEncoder",
    "StrictLayer", "StrictNet", "TASKS", "WeightHead", "apply_factors", "canon",
    "canonical_factors", "fourier_features", "symlog",
]
