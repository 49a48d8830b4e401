"""The metanet: learned quasi-equivariant gauge maps, message passing, invariant and weight heads.

``MetaNet(mode=..., task=...)`` is the public entry point; the pieces are exported for reuse and
for tests. See ARCHITECTURE.md and the docstrings of :mod:`paramgraph.models.gauge` (the gauge map),
:mod:`paramgraph.models.backbone` (the architecture shared by all modes), :mod:`paramgraph.models.layers` (message
passing), :mod:`paramgraph.models.readers` (strict canonicalisation vs free reads), :mod:`paramgraph.models.encoders`,
:mod:`paramgraph.models.statistics` and :mod:`paramgraph.models.heads`.
"""

from __future__ import annotations

from paramgraph.lazy import lazy_exports

# public name -> the submodule that defines it; imported on first use (PEP 562), so that
# ``paramgraph.models.defaults`` can be read without importing torch
_EXPORTS = {
    "backbone": ("Backbone",),
    "encoders": ("EdgeEncoder", "KernelBins", "NodeEmbedding", "NodeEncoder"),
    "gauge": ("GaugeMap", "apply_factors", "canonical_factors"),
    "heads": ("InvariantHead", "WeightHead"),
    "layers": ("EdgeAggregation", "EdgeNodeLayer", "ValueLayer"),
    "metanet": ("FRAMES", "MODES", "TASKS", "MetaNet", "prepare"),
    "readers": ("FreeReader", "StrictReader", "canon"),
    "statistics": ("LayerStatistics",),
    "structure": ("GraphStructure", "fourier_features", "symlog"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)
