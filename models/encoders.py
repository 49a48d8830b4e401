"""Encoders: node and edge values, and the structural embeddings, into ``hidden`` features.

Edges hold a variable number of values (1 for a linear weight, a flattened kernel for a
convolution, a spatial vector for a linear layer that reads a flattened feature map); one batch
mixes them. :class:`KernelBins` turns the flat ``edge_value`` vector into a fixed-width
``[E, P]`` matrix: a kernel of ``s <= P`` values keeps its positions, a longer one is averaged into
``P`` consecutive bins. The binning is linear and depends on structure only, so it commutes with
every symmetry of the network (the strict mode relies on this).

Edge features (:class:`EdgeEncoder`):

.. math::
    e_{uv} = \\mathrm{MLP}\\big(W_k\\,\\mathrm{symlog}(s_v\\,\\mathbf{w}_{uv})
        + W_f\\,\\phi(\\mathrm{mean}, \\mathrm{rms}) + \\mathrm{emb}(\\text{type})
        + W_s \\log|uv|\\big)

with :math:`s_v = \\sqrt{\\text{fan-in}(v)}` (a structural scale that brings typical weights to
O(1)) and :math:`\\phi` the Fourier features of :func:`~paramgraph.models.structure.fourier_features`.

Node features (:class:`NodeEncoder`): Fourier features of the five value slots (bias,
normalisation weight/shift, running mean, log running variance) masked by ``node_mask``, plus
embeddings of node type, activation, normalisation, depth (absolute and relative), the neuron's
symmetry (scale/sign flags), log fan-in/fan-out, and a sinusoidal position for *fixed* neurons
(inputs and outputs never move under the symmetry group, so their index is an invariant
feature; permutable neurons get none).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .structure import GraphStructure, fourier_features, fourier_frequencies, symlog

MAX_DEPTH = 64
# Rows of every type-code embedding (node/edge type, activation, norm kind): more than any of the
# enums of paramgraph.types has, so that a new layer type does not change the shape of a trained
# metanet (a checkpoint sized by the enums stopped loading whenever one was added).
CODE_SLOTS = 32
_NODE_SLOTS = 5


class KernelBins:
    """Fixed-width view of variable-size edge values; see the module docstring."""

    def __init__(self, st: GraphStructure, cap: int):
        self.width = max(1, min(st.max_size, cap))
        size = st.edge_size[st.value_edge]
        pos = st.value_pos
        binned = (pos * self.width) // size.clamp_min(1)
        self.bin = torch.where(size <= self.width, pos, binned)
        self.index = st.value_edge * self.width + self.bin
        self.num_edges = st.num_edges
        counts = torch.zeros(self.num_edges * self.width, dtype=torch.float64,
                             device=size.device)
        counts.index_add_(0, self.index, torch.ones_like(self.index, dtype=torch.float64))
        self.counts = counts.view(self.num_edges, self.width)
        self.mask = self.counts > 0

    def pool(self, values: Tensor) -> Tensor:
        """Flat ``[V, ...]`` values to ``[E, width, ...]`` bin means (zeros where empty)."""
        tail = values.shape[1:]
        flat = self.num_edges * self.width
        out = values.new_zeros((flat,) + tail).index_add(0, self.index, values)
        counts = self.counts.reshape(flat).clamp_min(1).to(values.dtype)
        out = out / counts.view((flat,) + (1,) * len(tail))
        return out.view((self.num_edges, self.width) + tail)

    def unpool(self, binned: Tensor) -> Tensor:
        """``[E, width]`` back to flat ``[V]``: every value gets its bin's entry."""
        return binned.reshape(-1).index_select(0, self.index)


def _mlp(d_in: int, hidden: int, d_out: int, act=nn.SiLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, d_out))


class EdgeEncoder(nn.Module):
    """Edge values (any kernel size) and edge type to ``hidden`` features; see module doc."""

    def __init__(self, hidden: int, kernel_cap: int = 64, num_freqs: int = 8):
        super().__init__()
        self.kernel_cap = kernel_cap
        self.register_buffer("freqs", fourier_frequencies(num_freqs), persistent=False)
        self.kernel = nn.Parameter(torch.empty(hidden, kernel_cap))
        nn.init.normal_(self.kernel, std=1.0 / math.sqrt(9.0))
        d_stats = 2 * (1 + 2 * num_freqs) + 2
        self.stats = nn.Linear(d_stats, hidden)
        self.type_emb = nn.Embedding(CODE_SLOTS, hidden)
        self.mlp = _mlp(hidden, hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, st: GraphStructure, bins: KernelBins, binned: Tensor) -> Tensor:
        """``binned``: ``[E, width]`` bin means of the (already structurally scaled) values."""
        mask = bins.mask.to(binned.dtype)
        count = mask.sum(1).clamp_min(1)
        mean = (binned * mask).sum(1) / count
        # clamped: sqrt'(0) is infinite, which made NaN gradients for all-zero (or denormal) kernels
        rms = ((binned.square() * mask).sum(1) / count).clamp_min(1e-30).sqrt()
        stats = torch.cat([
            fourier_features(mean, self.freqs), fourier_features(rms, self.freqs),
            torch.log(st.edge_size.to(binned.dtype)).unsqueeze(1),
            st.weight.to(binned.dtype).unsqueeze(1),
        ], dim=1)
        k = symlog(binned) @ self.kernel[:, : bins.width].t()
        h = k + self.stats(stats) + self.type_emb(st.edge_type)
        return self.norm(h + self.mlp(h))


class NodeEmbedding(nn.Module):
    """Value-free node features: type, activation, norm, depth, symmetry flags, fan-in/out and
    the position of fixed neurons."""

    def __init__(self, hidden: int, num_pos: int = 8):
        super().__init__()
        self.type_emb = nn.Embedding(CODE_SLOTS, hidden)
        self.act_emb = nn.Embedding(CODE_SLOTS, hidden)
        self.norm_emb = nn.Embedding(CODE_SLOTS, hidden)
        self.depth_emb = nn.Embedding(MAX_DEPTH + 1, hidden)
        self.sym_emb = nn.Embedding(4, hidden)
        self.num_pos = num_pos
        self.scalars = nn.Linear(2 * num_pos + 4 + 1, hidden)

    def forward(self, st: GraphStructure, dtype: torch.dtype) -> Tensor:
        depth = st.node_layer.clamp_max(MAX_DEPTH)
        sym = st.scale.long() + 2 * st.sign.long()
        k = torch.arange(self.num_pos, device=depth.device, dtype=dtype)
        angle = st.perm_pos.to(dtype).unsqueeze(1) / (2.0 ** k)
        fixed = st.fixed.to(dtype).unsqueeze(1)
        pos = torch.cat([torch.sin(angle), torch.cos(angle)], 1) * fixed
        rel = st.rel_depth.to(dtype).unsqueeze(1)
        scalars = torch.cat([
            pos, fixed, rel,
            torch.log1p(st.fan_in.to(dtype)).unsqueeze(1) / 4,
            torch.log1p(st.fan_out.to(dtype)).unsqueeze(1) / 4,
            torch.log1p(st.in_degree.to(dtype)).unsqueeze(1) / 4 - torch.log1p(
                st.out_degree.to(dtype)).unsqueeze(1) / 4,
        ], 1)
        return (self.type_emb(st.node_type) + self.act_emb(st.node_act)
                + self.norm_emb(st.node_norm) + self.depth_emb(depth) + self.sym_emb(sym)
                + self.scalars(scalars))


def node_slot_inputs(node_value: Tensor, node_mask: Tensor) -> Tensor:
    """Slots with the running variance as ``log`` (it is positive and multiplicative)."""
    rv = node_value[:, 4].clamp_min(1e-12).log()
    return torch.cat([node_value[:, :4], rv.unsqueeze(1)], 1) * node_mask.to(node_value.dtype)


class NodeEncoder(nn.Module):
    """Node slot values plus :class:`NodeEmbedding` to ``hidden`` features."""

    def __init__(self, hidden: int, num_freqs: int = 8):
        super().__init__()
        self.register_buffer("freqs", fourier_frequencies(num_freqs), persistent=False)
        self.values = nn.Linear(_NODE_SLOTS * (1 + 2 * num_freqs) + _NODE_SLOTS, hidden)
        self.embed = NodeEmbedding(hidden)
        self.mlp = _mlp(hidden, hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, st: GraphStructure, slots: Tensor, node_mask: Tensor) -> Tensor:
        """``slots``: ``[N, 5]`` from :func:`node_slot_inputs` (or canonicalised ones)."""
        mask = node_mask.to(slots.dtype)
        feats = fourier_features(slots, self.freqs) * mask.unsqueeze(-1)
        x = torch.cat([feats.flatten(1), mask], 1)
        h = self.values(x) + self.embed(st, slots.dtype)
        return self.norm(h + self.mlp(h))
