"""Aligning one network to another by its permutation symmetries (weight matching, Git Re-Basin).

Two networks of one architecture trained from different seeds compute similar functions with
their hidden neurons in different orders. :func:`align` moves network B by an element of its own
symmetry group (so B's function does not change, to float rounding) such that its neurons line up
with network A's:

* **Permutations** of every permutable channel set of the graph (``perm_group``), with the ties
  the graph records (a residual stream's sets share one permutation; attention heads move as
  blocks, and inside a head the query/key dimensions jointly and the value dimensions on their
  own). Per set, a linear assignment (``scipy.optimize.linear_sum_assignment``) maximises the
  summed similarity of A's and B's parameters at each pair of positions: incoming and outgoing
  weights (whole kernels; the other endpoint read in B's current order), biases and
  normalisation parameters. Sets are visited in turn until a whole pass changes nothing
  (coordinate ascent on the total similarity, the weight-matching method of Ainsworth et al.,
  "Git Re-Basin", 2023). The first pass goes forward from the input and counts only edges to
  sets already matched (or fixed), which recovers an exact symmetric copy; the later passes use
  every edge. With ``match="activations"`` each set is matched once instead on the
  correlation of A's and B's neuron values on example inputs, where the network exposes them
  (a layer's output read by a forward hook); other sets fall back to weight matching.
* **Scales and signs** (``scales=True``): both networks are brought to the balanced canonical
  section first (:mod:`paramgraph.canonical`), the matching runs there, and the result is moved
  into A's gauge, so a neuron's positive scale and sign agree with its partner in A.

Attention heads' invertible maps are not aligned (heads are matched as blocks, not rotated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import ParamGraphError
from .symmetry import GroupElement, apply_element
from .types import SLOT, HeadRole, NodeType

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph

# node slots that take part in matching (running variances are ~1 everywhere and say little)
_MATCH_SLOTS = (SLOT["bias"], SLOT["norm_weight"], SLOT["norm_bias"], SLOT["running_mean"])


@dataclass
class Alignment:
    """The result of :func:`align`: the moved network and how it was found.

    ``graph``: B moved into A's order (and gauge, with ``scales``), in B's dtype; ``node_perm``
    [N]: where each of B's nodes went; ``passes``: sweeps over the sets until nothing changed;
    ``similarity_before``/``similarity_after``: the summed inner product of A's and B's parameters
    (in the canonical section when ``scales``) before and after; ``converged``: whether the last
    pass changed nothing (else ``max_passes`` was reached).
    """

    graph: ParamGraph
    node_perm: Tensor
    passes: int
    similarity_before: float
    similarity_after: float
    converged: bool


def check_same_architecture(a: ParamGraph, b: ParamGraph, name_a: str = "A",
                            name_b: str = "B") -> None:
    """Raise :class:`~paramgraph.ParamGraphError` (one line naming both and the first difference)
    unless the two graphs have the same structure: same tensors with the same shapes, same nodes
    and edges."""
    sa = {s.name: s.shape for s in a.segments}
    sb = {s.name: s.shape for s in b.segments}
    for key in sa:
        if key not in sb:
            raise ParamGraphError(f"{name_b}: has no tensor '{key}' that {name_a} has; both "
                                  "must be the same architecture")
        if sa[key] != sb[key]:
            raise ParamGraphError(f"{name_b}: tensor '{key}' has shape {list(sb[key])}, "
                                  f"{name_a} has {list(sa[key])}; both must be the same "
                                  "architecture (same widths)")
    extra = [k for k in sb if k not in sa]
    if extra:
        raise ParamGraphError(f"{name_b}: has tensor '{extra[0]}' that {name_a} lacks; both must "
                              "be the same architecture")
    same = (a.num_nodes == b.num_nodes and torch.equal(a.edge_index, b.edge_index)
            and torch.equal(a.edge_type, b.edge_type) and torch.equal(a.edge_size, b.edge_size)
            and torch.equal(a.perm_group, b.perm_group) and torch.equal(a.node_type, b.node_type))
    if not same:
        raise ParamGraphError(f"{name_b}: its parameter graph differs from {name_a}'s (same "
                              "tensors, different wiring); convert both with the same --arch "
                              "and --input-shape")


# -- the permutable sets of a graph --------------------------------------------------------------

@dataclass
class _Set:
    """One permutable group: its nodes, their positions, and (attention) head layout."""

    gid: int
    nodes: Tensor  # node ids of every member (tied sets included)
    pos: Tensor  # their positions
    size: int  # number of positions
    heads: int  # 0: not an attention group
    role: Tensor  # HeadRole per member
    role_size: dict[int, int]  # positions per role (a grouped conv's roles can differ in size)


def permutable_sets(graph: ParamGraph) -> list[_Set]:
    """The graph's permutable groups in node order (fixed nodes excluded)."""
    group = graph.perm_group
    sets = []
    for gid in group[group >= 0].unique().tolist():
        nodes = (group == gid).nonzero().squeeze(1)
        pos = graph.perm_pos[nodes]
        head = graph.node_head[nodes]
        heads = int(head.max()) + 1 if bool((head >= 0).any()) else 0
        role = graph.head_role[nodes]
        _check_heads(graph, nodes, head, role)
        sizes = {int(r): int(pos[role == r].max()) + 1 for r in role.unique().tolist()}
        sets.append(_Set(gid, nodes, pos, int(pos.max()) + 1, heads, role, sizes))
    sets.sort(key=lambda s: int(s.nodes[0]))
    return sets


def _check_heads(graph: ParamGraph, nodes: Tensor, head: Tensor, role: Tensor) -> None:
    """Refuse attention groups whose heads are not all alike: grouped-query attention (query
    heads outnumber key/value heads and share their maps) and rotary heads (no order inside a
    head) need sorting and matching rules of their own, not written yet."""
    q = graph.node_type[nodes] == int(NodeType.ATTN_Q)
    if not bool(q.any()):
        return
    grouped = int(head[q].max()) != int(head[~q].max())
    if grouped or bool((role == int(HeadRole.QK_ROTARY)).any()):
        kind = "grouped-query" if grouped else "rotary"
        raise ParamGraphError(f"{kind} attention heads cannot be aligned or canonicalised yet "
                              "(only random_symmetry and apply_element know their tied group)")


class _Matcher:
    """Index tensors of one group's similarity matrix; its values are read from two graphs.

    Rows of the matrices are "features" a position has in both networks: each value of an
    incoming weight edge (keyed by edge type, source node, target set and kernel position), each
    value of an outgoing edge (keyed by type, target, source set, kernel position), and each
    present node slot (keyed by set and slot). ``similarity(a, b)`` is ``[P, P]``: entry (i, j)
    sums the products of A's features at position i and B's at position j, per role (query/key
    and value dimensions of an attention group are separate matrices).
    """

    def __init__(self, graph: ParamGraph, s: _Set):
        self.set = s
        n = graph.num_nodes
        in_group = torch.zeros(n, dtype=torch.bool)
        in_group[s.nodes] = True
        pos = torch.full((n,), -1, dtype=torch.long)
        pos[s.nodes] = s.pos
        start = torch.arange(n) - torch.where(in_group, pos, torch.zeros_like(pos))
        role = torch.zeros(n, dtype=torch.long)
        role[s.nodes] = s.role.long()
        src, dst = graph.endpoints()
        weight = graph.weight_edge_mask()
        value_edge = graph.value_edges()
        within = torch.arange(value_edge.numel()) - graph.edge_offsets()[value_edge]
        etype = graph.edge_type.long()
        self.parts = []  # (role, kind, index tensor into values, row, col)
        for direction in ("in", "out"):
            own, other = (dst, src) if direction == "in" else (src, dst)
            edge_sel = weight & in_group[own]
            vsel = edge_sel[value_edge].nonzero().squeeze(1)
            e = value_edge[vsel]
            key = torch.stack([etype[e], other[e], start[own[e]], within[vsel],
                               torch.full_like(e, 0 if direction == "in" else 1)], 1)
            self._add("edge", vsel, key, pos[own[e]], role[own[e]])
        node_rows, node_slots = [], []
        for slot in _MATCH_SLOTS:
            present = graph.node_mask[s.nodes, slot]
            node_rows.append(s.nodes[present])
            node_slots.append(torch.full((int(present.sum()),), slot, dtype=torch.long))
        nodes, slots = torch.cat(node_rows), torch.cat(node_slots)
        key = torch.stack([torch.full_like(nodes, -1), slots, start[nodes],
                           torch.zeros_like(nodes), torch.full_like(nodes, 2)], 1)
        self._add("node", nodes * graph.node_value.size(1) + slots, key, pos[nodes], role[nodes])

    def _add(self, kind, index, key, col, role):
        for r in role.unique().tolist():
            m = role == r
            if not bool(m.any()):
                continue
            _, row = torch.unique(key[m], dim=0, return_inverse=True)
            self.parts.append((r, kind, index[m], row, col[m]))

    def matrices(self, graph: ParamGraph) -> dict[int, Tensor]:
        """Per role: ``[rows, P]`` feature matrix of ``graph`` (float64)."""
        out: dict[int, list[Tensor]] = {}
        ev = graph.edge_value.double()
        nv = graph.node_value.double().reshape(-1)
        for r, kind, index, row, col in self.parts:
            vals = (ev if kind == "edge" else nv)[index]
            m = torch.zeros(int(row.max()) + 1, self.set.role_size[r], dtype=torch.float64)
            m[row, col] = vals
            out.setdefault(r, []).append(m)
        return {r: torch.cat(ms) for r, ms in out.items()}

    def similarity(self, a_mats: dict[int, Tensor], b: ParamGraph) -> dict[int, Tensor]:
        b_mats = self.matrices(b)
        return {r: a_mats[r].T @ b_mats[r] for r in a_mats}


def _lap(score: Tensor) -> tuple[Tensor, float]:
    """Maximum-weight assignment: ``perm[i]`` = the column given to row ``i``; and its value."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(score.numpy(), maximize=True)
    perm = torch.as_tensor(cols, dtype=torch.long)[torch.as_tensor(rows).argsort()]
    return perm, float(score[torch.arange(score.size(0)), perm].sum())


def _assignment(s: _Set, sims: dict[int, Tensor]) -> Tensor:
    """``take[i]``: B's position that moves to A's position ``i``."""
    if not s.heads:
        total = sum(sims.values())
        perm, _ = _lap(total)
        return perm
    h = s.heads
    inner: dict[tuple[int, int, int], Tensor] = {}
    head_score = torch.zeros(h, h, dtype=torch.float64)
    for r, sim in sims.items():
        d = s.role_size[r] // h
        blocks = sim.view(h, d, h, d)
        for i in range(h):
            for j in range(h):
                perm, value = _lap(blocks[i, :, j, :])
                inner[(r, i, j)] = perm
                head_score[i, j] += value
    head_perm, _ = _lap(head_score)
    take = {}
    for r in sims:
        d = s.role_size[r] // h
        t = torch.empty(s.role_size[r], dtype=torch.long)
        for i in range(h):
            j = int(head_perm[i])
            t[i * d:(i + 1) * d] = j * d + inner[(r, i, j)]
        take[r] = t
    return take


def _element_from_take(graph: ParamGraph, s: _Set, take, factor: Tensor | None = None):
    """The node permutation that moves B's position ``take[i]`` to position ``i`` in set ``s``."""
    new_pos_of = {}
    if isinstance(take, dict):
        for r, t in take.items():
            inv = torch.empty_like(t)
            inv[t] = torch.arange(t.numel())
            new_pos_of[r] = inv
    else:
        inv = torch.empty_like(take)
        inv[take] = torch.arange(take.numel())
    node_perm = torch.arange(graph.num_nodes)
    role = s.role.long()
    new_pos = torch.empty_like(s.pos)
    if new_pos_of:
        for r, inv_r in new_pos_of.items():
            m = role == r
            new_pos[m] = inv_r[s.pos[m]]
    else:
        new_pos = inv[s.pos]
    node_perm[s.nodes] = s.nodes - s.pos + new_pos
    return node_perm


def _score(sims: dict[int, Tensor]) -> float:
    return float(sum(torch.diagonal(m).sum() for m in sims.values()))


def align(a: ParamGraph, b: ParamGraph, *, scales: bool = True, match: str = "weights",
          activations: tuple[dict[int, Tensor], dict[int, Tensor]] | None = None,
          max_passes: int = 100, seed: int = 0) -> Alignment:
    """Move ``b`` by an element of its symmetry group so that its neurons match ``a``'s.

    See the module docstring for the method. ``scales``: also align positive scales and signs
    (through the canonical section; exact permutations otherwise). ``match``: ``"weights"`` or
    ``"activations"``; the latter needs ``activations`` = ``(acts_a, acts_b)``, each a dict
    ``node id -> [samples]`` float tensor of that neuron's value on the same inputs (see
    :func:`paramgraph.activations.neuron_activations`); sets without them are weight-matched.
    ``max_passes`` bounds the sweeps; ``seed`` fixes the order sets are visited in after the
    first pass. Returns an :class:`Alignment` whose ``graph`` computes ``b``'s function.

    Raises :class:`~paramgraph.ParamGraphError` if the graphs differ in structure or ``match`` is
    unknown.
    """
    if match not in ("weights", "activations"):
        raise ParamGraphError(f"unknown matching '{match}'; use 'weights' or 'activations'")
    check_same_architecture(a, b)
    dtype = b.edge_value.dtype
    a64 = a.with_values(a.edge_value.double(), a.node_value.double())
    b64 = b.with_values(b.edge_value.double(), b.node_value.double())
    f_a = torch.ones(a.num_nodes, dtype=torch.float64)
    f_b = f_a
    if scales and bool((a.node_scale | a.node_sign).any()):
        from .canonical import ScaleStructure, section_factors

        st = ScaleStructure.of(a)
        f_a, _ = section_factors(st, a64.edge_value, a64.node_value)
        f_b, _ = section_factors(st, b64.edge_value, b64.node_value)
        one = torch.arange(a.num_nodes)
        a64 = apply_element(a64, GroupElement(one, f_a, {}, {}))
        b64 = apply_element(b64, GroupElement(one, f_b, {}, {}))
    sets = permutable_sets(a)
    matchers = [_Matcher(a, s) for s in sets]
    a_mats = [m.matrices(a64) for m in matchers]
    before = sum(_score(m.similarity(am, b64)) for m, am in zip(matchers, a_mats))
    total_perm = torch.arange(b.num_nodes)  # where each of b's nodes is now
    cur = b64
    passes, converged = 0, not sets
    gen = torch.Generator().manual_seed(seed)
    by_activation = {}
    if match == "activations":
        if activations is None:
            raise ParamGraphError("activation matching needs example inputs (--data)")
        acts_a, acts_b = activations  # a flipped neuron's values flip with it
        acts_a = {n: v * float(torch.sign(f_a[n])) for n, v in acts_a.items()}
        acts_b = {n: v * float(torch.sign(f_b[n])) for n, v in acts_b.items()}
        by_activation = _activation_sets(sets, acts_a, acts_b)
    order = list(range(len(sets)))
    seen = a.perm_group < 0  # nodes whose order is settled (the first pass goes forward)
    while passes < max_passes and sets:
        changed = False
        for k in order:
            s, m = sets[k], matchers[k]
            if k in by_activation:
                if passes:
                    continue
                sims = by_activation[k]
                # activation sims are in b's original order; put them into the current order
                cur_pos = _current_positions(s, total_perm)
                sims = {r: sim[:, cur_pos[r]] for r, sim in sims.items()}
            elif passes == 0:  # forward start: only edges to sets already aligned or fixed
                seen[s.nodes] = True
                a_part, b_part = _restricted(a64, seen), _restricted(cur, seen)
                sims = m.similarity(m.matrices(a_part), b_part)
            else:
                sims = m.similarity(a_mats[k], cur)
            take = _assignment(s, sims)
            identity = (torch.equal(take, torch.arange(s.size)) if not isinstance(take, dict)
                        else all(torch.equal(t, torch.arange(t.numel())) for t in take.values()))
            if identity:
                continue
            gain = _gain(s, sims, take)
            if not gain > 1e-12 * (1.0 + abs(_score(sims))):
                continue
            node_perm = _element_from_take(cur, s, take)
            cur = apply_element(cur, GroupElement(node_perm, torch.ones(b.num_nodes,
                                                  dtype=torch.float64), {}, {}))
            total_perm = node_perm[total_perm]
            changed = True
        passes += 1
        if not changed:
            converged = True
            break
        order = torch.randperm(len(sets), generator=gen).tolist()
    after = sum(_score(m.similarity(am, cur)) for m, am in zip(matchers, a_mats))
    if scales:  # into a's gauge: undo a's section on the aligned canonical network
        cur = apply_element(cur, GroupElement(torch.arange(b.num_nodes), 1.0 / f_a, {}, {}))
    out = cur.with_values(cur.edge_value.to(dtype), cur.node_value.to(dtype))
    return Alignment(out, total_perm, passes, before, after, converged)


def _restricted(graph: ParamGraph, nodes: Tensor) -> ParamGraph:
    """``graph`` with the values of every edge that leaves ``nodes`` (bool [N]) set to 0."""
    src, dst = graph.endpoints()
    inside = nodes[src] & nodes[dst]
    mask = torch.repeat_interleave(inside, graph.edge_size.long())
    return graph.with_values(torch.where(mask, graph.edge_value,
                                         torch.zeros_like(graph.edge_value)), graph.node_value)


def _gain(s: _Set, sims: dict[int, Tensor], take) -> float:
    gain = 0.0
    for r, sim in sims.items():
        t = take[r] if isinstance(take, dict) else take
        gain += float(sim[torch.arange(t.numel()), t].sum() - torch.diagonal(sim).sum())
    return gain


def _current_positions(s: _Set, total_perm: Tensor) -> dict[int, Tensor]:
    """Per role: ``cur[j]`` = b's original position now at position ``j``."""
    out = {}
    role = s.role.long()
    for r in role.unique().tolist():
        m = role == r
        nodes, pos = s.nodes[m], s.pos[m]
        new_node = total_perm[nodes]
        new_pos = pos + (new_node - nodes)
        cur = torch.empty(s.role_size[r], dtype=torch.long)
        cur[new_pos] = pos
        out[r] = cur
    return out


def _activation_sets(sets: list[_Set], acts_a: dict[int, Tensor],
                     acts_b: dict[int, Tensor]) -> dict[int, dict[int, Tensor]]:
    """Per set whose every position has recorded values in both networks: the ``[P, P]``
    correlation of A's and B's neuron values (summed over tied members), per role."""
    out = {}
    for k, s in enumerate(sets):
        if s.heads:
            continue
        sim = torch.zeros(s.size, s.size, dtype=torch.float64)
        seen = torch.zeros(s.size, dtype=torch.bool)
        for node, p in zip(s.nodes.tolist(), s.pos.tolist()):
            if node in acts_a and node in acts_b:
                seen[p] = True
        if not bool(seen.all()):
            continue
        # group members by their set (start node) so each tied set gives one correlation matrix
        starts = (s.nodes - s.pos).unique().tolist()
        for start in starts:
            nodes = [start + p for p in range(s.size)]
            if not all(n in acts_a and n in acts_b for n in nodes):
                continue
            xa = torch.stack([acts_a[n] for n in nodes]).double()
            xb = torch.stack([acts_b[n] for n in nodes]).double()
            xa = (xa - xa.mean(1, keepdim=True)) / (xa.std(1, keepdim=True) + 1e-12)
            xb = (xb - xb.mean(1, keepdim=True)) / (xb.std(1, keepdim=True) + 1e-12)
            sim += xa @ xb.T / xa.size(1)
        out[k] = {int(HeadRole.NONE): sim}
    return out
