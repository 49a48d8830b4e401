"""The parameter graph: neurons are nodes, weights are edges.

A :class:`ParamGraph` is a :class:`torch_geometric.data.Data`, so graphs of different architectures
batch with :meth:`torch_geometric.data.Batch.from_data_list` and come back whole with
``Batch.to_data_list()``. The field table, the segment table and the methods every graph has
live in :mod:`paramgraph.layout`, which does not import PyG; its :class:`~paramgraph.layout.PlainGraph`
is the unbatchable twin the command line builds to start faster.

Layout (N nodes, E edges, V edge values):

==================  ============  =========================================================
field               shape         meaning
==================  ============  =========================================================
``edge_index``      [2, E] int32  (source neuron, target neuron) of every edge
``edge_value``      [V] float     every edge's values, concatenated in edge order; a linear
                                  edge holds 1 value, a conv edge its flattened kernel
``edge_size``       [E] int32     how many values each edge holds (its kernel size)
``edge_type``       [E] int8      :class:`~paramgraph.types.EdgeType`
``node_value``      [N, 5] float  bias and normalisation parameters, see ``NODE_SLOTS``
``node_mask``       [N, 5] bool   which of those slots the network really has
``node_type``       [N] int8      :class:`~paramgraph.types.NodeType`
``node_layer``      [N] long      depth: longest path from the input, counted in layers
``node_act``        [N] int8      :class:`~paramgraph.types.Activation` applied at the node
``node_norm``       [N] int8      :class:`~paramgraph.types.NormKind` of its normalisation
``node_scale``      [N] bool      has a positive-scale symmetry
``node_sign``       [N] bool      has a sign-flip symmetry
``perm_group``      [N] long      permutable channel set (tied sets share one); -1: fixed
``perm_pos``        [N] long      position inside that set (tied nodes share it)
``node_head``       [N] long      block of a node inside its permutable set: the attention
                                  head of q/k/v nodes, the channel group of a grouped
                                  convolution's or GroupNorm's channels; -1 elsewhere
``head_role``       [N] int8      :class:`~paramgraph.types.HeadRole` (QK, VO; GROUP + k for
                                  role k of a channel group: inputs, outputs)
``segments``        object        :class:`SegmentTable`: where every converted tensor lives
==================  ============  =========================================================

Edges of one weight tensor are contiguous and ordered (output neuron, input neuron), so that the
tensor's values are one slice of ``edge_value``; this is what makes the inverse exact and fast.

Batching (:meth:`ParamGraph.__inc__`): ``edge_index`` is offset by the nodes of the graphs before,
``perm_group`` by their permutation groups, so that no two graphs of a batch share a group id;
-1 ("fixed") stays -1. ``perm_pos`` and ``node_head`` are coordinates inside a node's own group
(a head is the pair ``(perm_group, node_head)``) and are not offset, nor are the codes and flags.
``Batch.to_data_list()`` gives back every graph exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from .layout import FIELDS, GraphFields


class ParamGraph(GraphFields, Data):
    """A network's parameters as a graph; see the module docstring for the fields."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    # -- batching --------------------------------------------------------------------------------

    def __inc__(self, key: str, value, *args, **kwargs):
        """What ``Batch.from_data_list`` adds to field ``key`` of the graphs after this one (the
        PyG convention): the number of nodes to ``edge_index``, the number of permutation groups
        to ``perm_group`` (whose -1 entries :attr:`perm_group` keeps at -1), nothing to the other
        fields of :data:`FIELDS` (``perm_pos`` and ``node_head`` are positions inside a group, not
        ids); fields outside :data:`FIELDS` get PyG's default."""
        if key == "edge_index":
            return self.num_nodes
        if key == "perm_group":
            return int(value.max()) + 1 if value.numel() else 0  # ids are 0 .. groups - 1
        if key in FIELDS:
            return 0
        return super().__inc__(key, value, *args, **kwargs)

    @property
    def perm_group(self) -> Tensor:
        """[N] long: the permutable channel set of every node, -1 where the node is fixed.

        In a ``Batch`` the ids of each graph are offset by the groups of the graphs before it
        (see :meth:`__inc__`) and fixed nodes read -1. PyG adds a graph's offset to every entry,
        -1 too (``Batch.to_data_list()`` subtracts it again, which gives back the original
        exactly); this property and ``batch["perm_group"]`` turn those entries back into -1.
        The stored field (``batch.to_dict()``) holds PyG's values.
        """
        stored = self._store.perm_group
        offset = self._perm_group_offset()
        if offset is None or not isinstance(stored, Tensor):
            return stored
        return stored.masked_fill(stored < offset.to(stored.device), -1)

    @perm_group.setter
    def perm_group(self, value) -> None:
        offset = self._perm_group_offset()
        if offset is not None and isinstance(value, Tensor):  # a batch's ids: store PyG's values
            value = torch.where(value < 0, offset.to(value.device) - 1, value)
        self._store.perm_group = value

    def _perm_group_offset(self) -> Tensor | None:
        """[N] long: what ``Batch.from_data_list`` added to each node's ``perm_group``; None for a
        graph that is not such a batch."""
        incs = (getattr(self, "_inc_dict", None) or {}).get("perm_group")
        slices = (getattr(self, "_slice_dict", None) or {}).get("perm_group")
        if not isinstance(incs, Tensor) or not isinstance(slices, Tensor):
            return None
        return incs.repeat_interleave(slices.diff())

    def __getitem__(self, key):
        if key == "perm_group":
            return self.perm_group
        return super().__getitem__(key)

    def __setitem__(self, key, value) -> None:
        if key == "perm_group":
            self.perm_group = value
        else:
            super().__setitem__(key, value)
