"""The metanet: learned quasi-equivariant gauge maps, message passing, invariant and weight heads.

``MetaNet(mode=..., task=...)`` is the public entry point; the pieces are exported for reuse and
for tests. See DESIGN.md section 5 and the docstrings of :mod:`paramgraph.models.gauge` (the gauge map),
:mod:`paramgraph.models.backbone` (the architecture shared by all modes), :mod:`paramgraph.models.layers` (message
passing), :mod:`paramgraph.models.readers` (strict canonicalisation vs free reads), :mod:`paramgraph.models.encoders`,
:mod:`paramgraph.models.statistics` and :mod:`paramgraph.models.heads`.
"""

from __future__ import annotations

import importlib

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
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'paramgraph.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
