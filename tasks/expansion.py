"""Output channel expansion for SIRENs: a weight head that writes ``k`` edited networks whose
outputs are averaged, and the one SIREN, ``k`` times wider, that computes that average.

A weight head built with ``copies = k`` (:class:`paramgraph.models.MetaNet`) returns ``k`` graph
batches in the input's layout. Their SIRENs :math:`f_1, \\dots, f_k`, each
``2 -> h_1 -> ... -> h_L -> 1``, are combined into

.. math::  \\bar f(x) = \\frac1k \\sum_{c=1}^k f_c(x),

which is itself a SIREN ``2 -> k h_1 -> ... -> k h_L -> 1`` (:func:`decode_siren`): its first
layer stacks the copies' first layers (rows of copy ``c`` at ``[c h_1, (c+1) h_1)``), every
hidden-to-hidden layer is block diagonal (copy ``c`` reads only its own neurons, so each block of
neurons computes exactly the hidden activations of its copy), and the last layer concatenates the
copies' output weights divided by ``k`` with the mean of their output biases:

.. math::  W^{L+1} = \\tfrac1k [W^{L+1}_1, \\dots, W^{L+1}_k],\\qquad
           b^{L+1} = \\tfrac1k \\sum_c b^{L+1}_c.

So ``paramgraph edit`` still writes one checkpoint, of a wider :class:`~paramgraph.tasks.inr.Siren`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import TaskError
from .inr import grid, layer_names, siren_forward_from_batch, siren_index


def copies_of(out) -> list:
    """The edited graph batches of a weight head's output: ``[out]`` for one network, the list
    itself for an expanded head."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


def siren_outputs(out, hidden: list[int], side: int) -> Tensor:
    """``[B, side * side]``: the edited SIRENs of a weight head's output ``out`` (one batch, or the
    ``k`` batches of an expanded head, averaged) on the ``side`` x ``side`` grid.
    Differentiable in the output values."""
    batches = copies_of(out)
    coords = grid(side).to(batches[0].edge_value.device)
    index = siren_index(batches[0], hidden)  # the copies share the input's layout
    total = sum(siren_forward_from_batch(b, hidden, coords, index=index) for b in batches)
    return total / len(batches)


def widen_spec(spec: dict, k: int) -> dict:
    """The zoo spec of the SIREN ``k`` times wider that :func:`decode_siren` writes."""
    if spec.get("family") != "siren":
        raise TaskError(f"output channel expansion decodes SIRENs only, not {spec.get('family')}")
    return {**spec, "hidden": [k * int(h) for h in spec["hidden"]]}


def decode_siren(states: list[dict[str, Tensor]], hidden: list[int]) -> dict[str, Tensor]:
    """The state_dict of the SIREN whose output is the mean of the SIRENs ``states`` (each with
    hidden widths ``hidden``); see the module docstring. One state is returned as it is."""
    if len(states) == 1:
        return dict(states[0])
    k = len(states)
    names = layer_names(hidden)
    out: dict[str, Tensor] = {}
    for layer, name in enumerate(names):
        ws = [s[f"{name}.weight"] for s in states]
        bs = [s[f"{name}.bias"] for s in states]
        if layer == 0:
            w, b = torch.cat(ws, 0), torch.cat(bs, 0)
        elif layer < len(names) - 1:
            w, b = torch.block_diag(*ws), torch.cat(bs, 0)
        else:
            w, b = torch.cat(ws, 1) / k, torch.stack(bs).mean(0)
        out[f"{name}.weight"], out[f"{name}.bias"] = w.contiguous(), b.contiguous()
    return out
