"""Neuron values of a network on example inputs, keyed by the graph's node ids.

Used by activation matching (:func:`paramgraph.align.align` with ``match="activations"``). A
neuron's value is read where the network exposes it: the output of the layer that holds its
bias or its normalisation's parameters (the graph's segment table says which layer that is),
captured with a forward hook. Channels of a convolution count every position as a sample. Nodes
whose layer is not called as a module (attention internals, a bias-free layer without a norm)
get no values; the matcher falls back to weight matching for their sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph


_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


def neuron_activations(module: nn.Module, graph: ParamGraph, x: Tensor,
                       max_samples: int = 20000) -> dict[int, Tensor]:
    """``{node id: [samples] float tensor}`` of ``module``'s neuron values on the batch ``x``.

    ``graph`` must be ``module``'s graph (same architecture). At most ``max_samples`` samples
    per neuron are kept (evenly spaced). The module is run once, without gradients, in eval mode
    (its mode is restored).
    """
    owners: dict[str, tuple[int, int]] = {}
    for seg in graph.segments:
        if seg.kind != "node" or "." not in seg.name:
            continue
        path = seg.name.rsplit(".", 1)[0]
        owners[path] = (seg.start, seg.count)  # a later segment (a folded norm) wins
    captured: dict[int, Tensor] = {}
    hooks = []
    for path, (start, count) in owners.items():
        try:
            sub = module.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(sub, _CHANNELS_LAST):
            dim = -1
        elif isinstance(sub, _CHANNELS_FIRST):
            dim = 1
        else:
            continue

        def hook(_m, _inp, out, start=start, count=count, dim=dim):
            if not isinstance(out, Tensor) or out.dim() < 2 or out.size(dim) != count:
                return
            flat = out.detach().movedim(dim, -1).reshape(-1, count).double()
            if flat.size(0) > max_samples:
                flat = flat[torch.linspace(0, flat.size(0) - 1, max_samples).long()]
            for i in range(count):
                captured[start + i] = flat[:, i]

        hooks.append((sub, hook))
    forward_with_hooks(module, x, hooks)
    return captured


def forward_with_hooks(module: nn.Module, x: Tensor, hooks) -> None:
    """Run ``module`` once on ``x`` in eval mode without gradients, with the forward hooks
    ``[(submodule, hook), ...]`` attached; the hooks are removed and the module's mode restored
    afterwards, whatever happens."""
    handles = [sub.register_forward_hook(hook) for sub, hook in hooks]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
