"""The exact section of attention's per-head maps: a canonical q/k and v/o pair per head.

The group. A head ``h`` of a self-attention block has ``d`` query, key and value dimensions.
Write its *augmented* in-projections as ``d x (D+1)`` matrices (weight rows, bias as the last
column): :math:`\\hat Q_h = [W_q | b_q]`, :math:`\\hat K_h`, :math:`\\hat V_h`, and its slice of the
out-projection as :math:`O_h` (``D_out x d``). For any invertible ``M, N`` (``d x d``)

.. math::  \\hat Q \\to M^T \\hat Q,\\quad \\hat K \\to M^{-1} \\hat K,\\quad
           \\hat V \\to N^T \\hat V,\\quad O \\to O N^{-T}

leaves the network's function unchanged (:mod:`paramgraph.symmetry`), because it leaves the
head's two products unchanged: the bilinear form of the scores
:math:`A_h = \\hat Q_h^T \\hat K_h` (``(D+1) x (D+1)``, rank <= d) and the value path
:math:`P_h = O_h \\hat V_h` (``D_out x (D+1)``, rank <= d).

The section. From the thin SVD :math:`A = U S V^T` (``U, V``: ``(D+1) x d``) the canonical pair is
the *balanced* factorisation :math:`\\hat Q' = S^{1/2} U^T`, :math:`\\hat K' = S^{1/2} V^T`; from
:math:`P = U' S' V'^T`, :math:`O' = U' S'^{1/2}`, :math:`\\hat V' = S'^{1/2} V'^T`. Both products
are kept, so the function is kept; and since ``A``, ``P`` do not change under ``(M, N)``, neither
does the result (to float rounding). Computed without forming ``A``: with the QR factorisations
:math:`\\hat Q^T = Q_1 R_1`, :math:`\\hat K^T = Q_2 R_2` (``R``: ``d x d``),
:math:`A = Q_1 (R_1 R_2^T) Q_2^T`, so one ``d x d`` SVD :math:`R_1 R_2^T = u S v^T` gives
``U = Q_1 u``, ``V = Q_2 v`` (the same for ``P`` with :math:`O = Q_1 R_1`,
:math:`\\hat V^T = Q_2 R_2`). The map that was applied is :math:`M^T = \\sigma S^{1/2} u^T R_1^{-T}`
(and :math:`M^{-1} = \\sigma S^{1/2} v^T R_2^{-T}`), with inverse
:math:`R_1^T u S^{-1/2} \\sigma` (:class:`HeadFrame`, to return edits in the input's frame).

Conventions. Singular pairs in decreasing order; the sign of each pair (``sigma_i``, applied to
both of its rows) makes the largest-magnitude entry of its key row (v/o: its value row)
positive, the same convention as :func:`paramgraph.canonicalize.canonicalize`. Batched: heads
of one shape ``(d, D_q, D_k, D_v, D_out)`` are stacked into one batched QR/SVD
(:class:`HeadStructure` groups them once per batch); a batch loops over its distinct shapes,
never over heads. Differentiable (out-of-place; QR and SVD have gradients where the singular
values are distinct and non-zero). Run it in float64.

Degenerate heads. A zero singular value (a head of rank < d, e.g. a dead head) gives zero
canonical rows whatever basis the SVD picks, so it is still exactly invariant (the map is then
not invertible: :class:`HeadFrame` divides by ``max(s, 1e-12 s_max)``; the gauged head is in
the closure of the orbit and computes the same function). *Repeated* non-zero singular values
leave a residual rotation inside their block (an element of the group the SVD cannot fix):
invariance then holds only up to that rotation, and near a repeat it degrades smoothly, as
~ ``eps * s_1 / gap`` (``eps``: the unit roundoff of the input, ``gap``: the smallest distance
between distinct singular values), as do the SVD's gradients (``1 / gap``). For weights drawn
from any continuous distribution (trained networks) repeats have probability zero.

Readers of the out-projection. A neuron with a scale or sign symmetry that reads the
out-projection (attention -> ReLU -> Linear) has incoming weights ``O`` that the head maps move,
so the unit-norm scale section would depend on ``N``. :meth:`HeadStructure.reader_sums` gives
:func:`paramgraph.canonical.canonical_factors` the head-invariant statistics instead: the
squared norm and the sum of the neuron's row of :math:`\\sum_h O_h \\hat V_h` (value sources
under their canonical factors). Scales are fixed first with those, then the heads, then the
balanced sweeps (which read outgoing norms into q/k/v) from the result.

Restricted groups. **Grouped-query attention** (a key/value head read by ``r`` query heads,
:class:`HeadGroup`): one ``M`` acts on the key head and on all ``r`` query heads, so the
section factors the stacked form :math:`[\\hat Q_1; \\dots; \\hat Q_r]^T \\hat K` (``r (D+1) x
(D+1)``) instead of one head's; one ``N`` acts on the value head and on the ``r`` slices of the
out-projection that read it, stacked as rows of ``O``. **Rotary embeddings** rotate pairs of
dimensions ``(i, j)`` by position-dependent angles; the maps that commute with every such
rotation are, per pair, a scaled rotation (:math:`z_q \\to c\\, z_q`,
:math:`z_k \\to z_k / \\bar c` on the pair read as complex numbers), so the section per pair is
that of this group (:func:`_rotary_section`: equal query and key norms, the key's
largest-magnitude entry turned real and positive) and the full section acts only on dimensions
in no pair. The learned factor then moves the two dimensions of a pair by one common scale
(:meth:`HeadStructure.direction_log_factors`). Cross-attention is not converted (self-attention
only), so not handled. :meth:`HeadStructure.of` reads heads from the fixed ATTN_QK/ATTN_KV/ROTARY
wiring and raises ``ValueError`` for a layout it does not understand.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .types import EdgeType, NodeType

_INV_FLOOR = 1e-12  # HeadFrame: singular values below this times the largest count as this


@dataclass
class HeadGroup:
    """Key/value heads of one shape, stacked (``G`` of them), each read by ``r`` query heads
    (``r > 1``: grouped-query attention). Node ids ``k`` [G, d], ``q`` [G, r d] (query head
    ``j``'s dimension paired with key ``k[:, i]`` at ``j d + i``), ``v`` [G, dv]; value indices
    of the in-projection rows ``q_vals`` [G, r d, Dq], ``k_vals``, ``v_vals``; their source nodes
    ``q_src`` [G, Dq], ``k_src``, ``v_src``; out-projection value indices ``o_vals``
    [G, r Do, dv] (row ``o r + j``: output ``o`` as query head ``j`` writes it) and target nodes
    ``o_dst`` [G, r Do]; rotary embeddings: ``pairs`` [P, 2], the positions ``(i, j)`` inside a
    head that rotate together, and ``free`` [F], those that do not (all ``d`` without rotary)."""

    q: Tensor
    k: Tensor
    v: Tensor
    q_vals: Tensor
    k_vals: Tensor
    v_vals: Tensor
    q_src: Tensor
    k_src: Tensor
    v_src: Tensor
    o_vals: Tensor
    o_dst: Tensor
    pairs: Tensor
    free: Tensor

    def to(self, device, non_blocking: bool = False) -> "HeadGroup":
        return HeadGroup(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                            for f in fields(self)})


@dataclass
class HeadStructure:
    """The attention heads of a graph or batch (structure only), grouped by shape.

    ``groups``: :class:`HeadGroup` per distinct shape; ``reader`` [N] bool: neurons that the
    out-projections write to; ``reader_levels``: their depths (``node_layer``); ``num_heads``.
    """

    groups: list[HeadGroup]
    reader: Tensor
    reader_levels: tuple[int, ...]
    num_heads: int

    @classmethod
    def of(cls, src: Tensor, dst: Tensor, edge_type: Tensor, edge_size: Tensor,
           node_type: Tensor, node_layer: Tensor, weight: Tensor) -> "HeadStructure | None":
        """Read the heads from the edges (``None`` where there is no attention). Raises
        ValueError where the wiring is not the converter's (one head's rows reading different
        sources, out-projection targets that also have other weight inputs, kernels)."""
        src, dst = src.long(), dst.long()  # (graphs store int32 ids; scatter needs int64)
        node_type = node_type.long()
        edge_type = edge_type.long()
        n = int(node_type.numel())
        is_q = node_type == int(NodeType.ATTN_Q)
        if not bool(is_q.any()):
            return None
        device = src.device
        edge_size = edge_size.long()
        offsets = torch.cumsum(edge_size, 0) - edge_size
        kv = (edge_type == int(EdgeType.ATTN_KV)).nonzero().squeeze(1)
        qk = (edge_type == int(EdgeType.ATTN_QK)).nonzero().squeeze(1)
        big = torch.full((n,), n, dtype=torch.long, device=device)
        head_k = big.scatter_reduce(0, src[kv], dst[kv], "amin")  # a head's smallest v node
        queries_of_k = torch.bincount(dst[qk], minlength=n)  # r > 1: grouped-query attention
        k_of_q = torch.full((n,), -1, dtype=torch.long, device=device)
        k_of_q[src[qk]] = dst[qk]
        head_v = big.scatter_reduce(0, dst[kv], head_k[src[kv]], "amin")
        q_all = is_q.nonzero().squeeze(1)
        v_all = (node_type == int(NodeType.ATTN_V)).nonzero().squeeze(1)
        if bool((k_of_q[q_all] < 0).any()):
            raise ValueError("attention: a query dimension has no key partner (ATTN_QK edge)")
        key_q = head_k[k_of_q[q_all]]
        key_v = head_v[v_all]
        # a key/value head's queries in key-major order: the r queries of its first key, ...
        q_sorted = q_all[torch.argsort((key_q * n + k_of_q[q_all]) * n + q_all)]
        v_sorted = v_all[torch.argsort(key_v * n + v_all)]
        heads, d_q = torch.unique(head_k[k_of_q[q_sorted]], return_counts=True)
        heads_v, d_v = torch.unique(head_v[v_sorted], return_counts=True)
        if not torch.equal(heads, heads_v):
            raise ValueError("attention: query and value dimensions do not form the same heads")
        q_start = torch.cumsum(d_q, 0) - d_q
        v_start = torch.cumsum(d_v, 0) - d_v
        first_q, first_v = q_sorted[q_start], v_sorted[v_start]
        r = queries_of_k[k_of_q[first_q]]
        in_rows = {t: _rows(t, True, src, dst, edge_type, edge_size, n)
                   for t in (EdgeType.ATTN_IN_Q, EdgeType.ATTN_IN_K, EdgeType.ATTN_IN_V)}
        out_rows = _rows(EdgeType.ATTN_OUT, False, src, dst, edge_type, edge_size, n)
        shape = torch.stack([
            d_q, r, d_v, in_rows[EdgeType.ATTN_IN_Q][2][first_q],
            in_rows[EdgeType.ATTN_IN_K][2][k_of_q[first_q]],
            in_rows[EdgeType.ATTN_IN_V][2][first_v], out_rows[2][first_v]], 1)
        partner = _rotary_partners(src, dst, edge_type, n)
        groups = []
        shapes, group_of = torch.unique(shape, dim=0, return_inverse=True)
        for g, shp in enumerate(shapes.tolist()):
            hs = (group_of == g).nonzero().squeeze(1)
            q, k, v = _head_nodes(q_sorted, q_start[hs], v_sorted, v_start[hs], shp[:3], k_of_q)
            # heads rotated alike form one group
            layouts, layout_of = torch.unique(_pair_positions(q, k, partner), dim=0,
                                              return_inverse=True)
            for i, layout in enumerate(layouts):
                same = layout_of == i
                groups.append(_head_group(q[same], k[same], v[same], layout, shp[3:], in_rows,
                                          out_rows, src, dst, offsets))
        reader = torch.zeros(n, dtype=torch.bool, device=device)
        for grp in groups:
            reader[grp.o_dst.reshape(-1)] = True
        other = weight & (edge_type != int(EdgeType.ATTN_OUT)) & reader[dst]
        if bool(other.any()):
            raise ValueError("attention: a neuron reads an out-projection and other weights")
        levels = tuple(sorted(set(node_layer[reader].tolist())))
        return cls(groups=groups, reader=reader, reader_levels=levels,
                   num_heads=int(r.sum()))

    def to(self, device, non_blocking: bool = False) -> "HeadStructure":
        """A copy with every tensor on ``device``."""
        return HeadStructure([g.to(device, non_blocking) for g in self.groups],
                             self.reader.to(device, non_blocking=non_blocking),
                             self.reader_levels, self.num_heads)

    def direction_log_factors(self, s: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """A per-node log-factor ``s`` [N] read per head direction, for :func:`write_heads`:
        ``t_qk[g]`` [G, d] (direction ``i`` sits at the ``i``-th query node of each query head
        that shares the key head: their mean; the two dimensions of a rotary pair get their
        common mean, as the pair admits only a common scale) and ``t_vo[g]`` [G, dv]."""
        t_qk, t_vo = [], []
        for g in self.groups:
            t = s[g.q].view(g.q.shape[0], -1, g.k.shape[1]).mean(1)
            if g.pairs.numel():
                i, j = g.pairs[:, 0], g.pairs[:, 1]
                both = (t[:, i] + t[:, j]) / 2
                t = t.index_copy(1, i, both).index_copy(1, j, both)
            t_qk.append(t)
            t_vo.append(s[g.v])
        return t_qk, t_vo

    def reader_sums(self, edge_value: Tensor, node_value: Tensor, f: Tensor, n2: Tensor,
                    wsum: Tensor) -> tuple[Tensor, Tensor]:
        """For :func:`~paramgraph.canonical.canonical_factors`: ``n2``/``wsum`` (incoming
        squared weight norm and weight sum per neuron, ``[N]``) with the readers' entries
        replaced by the squared norm and the sum of their row of
        :math:`\\sum_h O_h \\hat V_h \\mathrm{diag}(1/f_{src}, 1)`, which the head maps do not
        change. ``f``: the factors chosen so far (those of the value sources are final)."""
        hn2 = torch.zeros_like(n2)
        hsum = torch.zeros_like(wsum)
        for g in self.groups:
            v = _augmented(edge_value, node_value, g.v_vals, g.v)
            inv = torch.cat([1.0 / f[g.v_src], torch.ones_like(f[g.v_src[:, :1]])], 1)
            p = edge_value[g.o_vals] @ (v * inv.unsqueeze(1))  # [G, Do, Dv+1]
            idx = g.o_dst.reshape(-1)
            hn2 = hn2.index_add(0, idx, p.square().sum(-1).reshape(-1))
            hsum = hsum.index_add(0, idx, p.sum(-1).reshape(-1))
        return torch.where(self.reader, hn2, n2), torch.where(self.reader, hsum, wsum)


def _rows(etype: EdgeType, by_dst: bool, src: Tensor, dst: Tensor, edge_type: Tensor,
          edge_size: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``etype`` edges grouped by target (``by_dst``) or source node, sorted by the other
    end, parallel edges kept in edge order (grouped-query attention reads a value neuron once
    per query head); with each node's first position and count in that order."""
    ids = (edge_type == int(etype)).nonzero().squeeze(1)
    if bool((edge_size[ids] != 1).any()):
        raise ValueError(f"attention: {etype.name} edges carry more than one value")
    end, other = (dst, src) if by_dst else (src, dst)
    ids = ids[torch.argsort(end[ids] * n + other[ids], stable=True)]
    count = torch.bincount(end[ids], minlength=n)
    return ids, torch.cumsum(count, 0) - count, count


def _head_nodes(q_sorted: Tensor, q_start: Tensor, v_sorted: Tensor, v_start: Tensor,
                dims: list[int], k_of_q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q`` [G, r d], ``k`` [G, d], ``v`` [G, dv] of heads whose queries start at ``q_start``
    in ``q_sorted`` (key-major: the ``r`` queries of the first key, then the second's, ...)."""
    d_q, r, d_v = dims
    d = d_q // r
    device = q_sorted.device
    q = q_sorted[q_start.unsqueeze(1) + torch.arange(d_q, device=device)]
    q = q.view(-1, d, r).transpose(1, 2).reshape(-1, d_q)
    k = k_of_q[q[:, :d]]
    if d * r != d_q or not torch.equal(k_of_q[q].view(-1, r, d), k.unsqueeze(1).expand(-1, r, d)):
        raise ValueError("attention: the query heads that share a key head do not each pair "
                         "with all of its dimensions")
    v = v_sorted[v_start.unsqueeze(1) + torch.arange(d_v, device=device)]
    return q, k, v


def _rotary_partners(src: Tensor, dst: Tensor, edge_type: Tensor, n: int) -> Tensor:
    """``[N]``: the dimension a rotary embedding rotates each query/key dimension with, -1."""
    rot = edge_type == int(EdgeType.ROTARY)
    partner = torch.full((n,), -1, dtype=torch.long, device=src.device)
    partner[src[rot]] = dst[rot]
    partner[dst[rot]] = src[rot]
    return partner


def _pair_positions(q: Tensor, k: Tensor, partner: Tensor) -> Tensor:
    """``[G, d]``: per head, the position of the key dimension that each one rotates with (-1:
    none); raises ValueError where a head's queries are not paired as its keys are."""
    g, d = k.shape
    pos = torch.full_like(partner, -1)
    pos[k] = torch.arange(d, device=k.device).expand(g, d)
    mate = partner[k]
    at = torch.where(mate >= 0, pos[mate.clamp_min(0)], -1)
    qs = q.view(g, -1, d)
    want = torch.where(at.unsqueeze(1) >= 0,
                       qs.gather(2, at.clamp_min(0).unsqueeze(1).expand_as(qs)), -1)
    if not torch.equal(partner[qs], want) or bool(((mate >= 0) & (at < 0)).any()):
        raise ValueError("attention: a head's query and key dimensions are rotated in "
                         "different pairs")
    return at


def _head_group(q: Tensor, k: Tensor, v: Tensor, partner_pos: Tensor, widths: list[int],
                in_rows: dict, out_rows: tuple, src: Tensor, dst: Tensor,
                offsets: Tensor) -> HeadGroup:
    """The :class:`HeadGroup` of heads with nodes ``q``, ``k``, ``v``, rotary layout
    ``partner_pos`` [d] and fan-ins/fan-out ``widths``, checking that each head's rows read
    one source block and its value dimensions write one block of neurons."""
    device = q.device
    mats = []
    for nodes, etype, width in ((q, EdgeType.ATTN_IN_Q, widths[0]),
                                (k, EdgeType.ATTN_IN_K, widths[1]),
                                (v, EdgeType.ATTN_IN_V, widths[2])):
        ids, start, count = in_rows[etype]
        if bool((count[nodes] != width).any()):
            raise ValueError(f"attention: rows of one head have different fan-in ({etype.name})")
        e = ids[start[nodes].unsqueeze(-1) + torch.arange(width, device=device)]
        s = src[e]
        if not bool((s == s[:, :1]).all()):
            raise ValueError(f"attention: rows of one head read different sources ({etype.name})")
        mats.append((offsets[e], s[:, 0]))
    ids, start, count = out_rows
    if bool((count[v] != widths[3]).any()):
        raise ValueError("attention: value dimensions of one head have different fan-out")
    e = ids[start[v].unsqueeze(-1) + torch.arange(widths[3], device=device)]  # [G, dv, r Do]
    t = dst[e]
    if not bool((t == t[:, :1]).all()):
        raise ValueError("attention: value dimensions of one head write to different neurons")
    at = torch.arange(partner_pos.numel(), device=device)
    first = partner_pos > at
    return HeadGroup(q=q, k=k, v=v, q_vals=mats[0][0], k_vals=mats[1][0], v_vals=mats[2][0],
                     q_src=mats[0][1], k_src=mats[1][1], v_src=mats[2][1],
                     o_vals=offsets[e].transpose(1, 2), o_dst=t[:, 0],
                     pairs=torch.stack([at[first], partner_pos[first]], 1),
                     free=(partner_pos < 0).nonzero().squeeze(1))


def _augmented(edge_value: Tensor, node_value: Tensor, vals: Tensor, nodes: Tensor) -> Tensor:
    """``[G, d, D+1]``: the rows' weights and, last, their bias."""
    return torch.cat([edge_value[vals], node_value[nodes, 0].unsqueeze(-1)], -1)


@dataclass
class HeadSection:
    """The canonical pair of one :class:`HeadGroup`: augmented rows ``q`` [G, r d, Dq+1], ``k``
    [G, d, Dk+1], ``v`` [G, dv, Dv+1] and out-projection columns ``o`` [G, r Do, dv]; the
    singular values ``s_qk`` [G, d], ``s_vo`` [G, dv] (decreasing; a rotary pair: the product
    of its query and key norms, on both its dimensions); and the maps :class:`HeadFrame` needs
    to undo it: ``q_inv``, ``k_inv`` [G, d, d] and ``v_inv`` [G, dv, dv], the inverses of the
    left maps applied to each head's rows (a floored inverse where a direction is dead), and
    ``v_map`` [G, dv, dv], the forward map on the values (``N^T``, ``O = O' N^T``)."""

    q: Tensor
    k: Tensor
    v: Tensor
    o: Tensor
    s_qk: Tensor
    s_vo: Tensor
    q_inv: Tensor
    k_inv: Tensor
    v_inv: Tensor
    v_map: Tensor


def _balanced_pair(a: Tensor, b: Tensor):
    """For ``a`` [G, m, d], ``b`` [G, n, d]: the balanced factors of ``a b^T = L R^T`` with
    ``L = U S^1/2``, ``R = V S^1/2`` (columns signed so that each column of ``R`` has a positive
    largest-magnitude entry); ``L = a X``, ``R = b Y``. Returns ``(L, R, s, a_inv, b_inv,
    b_fwd)``: ``X^-T``, ``Y^-T`` (floored at dead directions) and ``Y^T``, the maps on rows."""
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b)
    u, s, vh = torch.linalg.svd(ra @ rb.mT)
    ub = vh.mT
    right = qb @ ub  # V: [G, n, d]
    big = right.abs().argmax(1, keepdim=True)
    sign = torch.sign(right.gather(1, big)).squeeze(1)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    root = s.clamp_min(0).sqrt() * sign  # [G, d]
    safe = (_safe_root(s) * sign).unsqueeze(1)
    # X = R_a^-1 u root, so X^-T = R_a^T u / root; Y^T = root ub^T R_b^-T
    return ((qa @ u) * root.unsqueeze(1), right * root.unsqueeze(1), s,
            ra.mT @ (u / safe), rb.mT @ (ub / safe), _right_solve_rt((ub * safe).mT, rb))


def _rotary_section(a: Tensor, b: Tensor, pairs: Tensor):
    """The section of rotary pairs. Columns ``(i, j)`` of ``a`` [G, m, d] (queries) and ``b``
    [G, n, d] (keys), read as complex vectors ``z = a_i + i a_j``, move as ``z_a -> c z_a``,
    ``z_b -> z_b / conj(c)`` for any ``c != 0`` (a scaled rotation of the pair). Canonical:
    both norms equal to ``sqrt(|z_a| |z_b|)`` and the largest-magnitude entry of ``z_b`` real
    and positive; a pair with a zero side becomes zero on both (it adds nothing to the scores).
    Returns the new columns ``a_p``, ``b_p`` [G, *, P, 2], ``s`` [G, P] (``|z_a| |z_b|``) and
    the inverse row maps ``a_inv``, ``b_inv`` [G, P, 2, 2]."""
    i, j = pairs[:, 0], pairs[:, 1]
    ai, aj, bi, bj = a[..., i], a[..., j], b[..., i], b[..., j]  # [G, *, P]
    tiny = torch.finfo(a.dtype).tiny
    na2 = (ai.square() + aj.square()).sum(1)
    nb2 = (bi.square() + bj.square()).sum(1)
    live = (na2 > 0) & (nb2 > 0)
    big = (bi.square() + bj.square()).argmax(1, keepdim=True)
    x, y = bi.gather(1, big).squeeze(1), bj.gather(1, big).squeeze(1)
    rho = (x.square() + y.square()).clamp_min(tiny).sqrt()
    cos, sin = x / rho, y / rho  # z_b's largest entry turned to the positive real axis
    ratio = nb2.clamp_min(tiny) / na2.clamp_min(tiny)
    scale_a = torch.where(live, ratio.pow(0.25), torch.zeros_like(ratio))
    scale_b = torch.where(live, ratio.pow(-0.25), torch.zeros_like(ratio))

    def turn(pi: Tensor, pj: Tensor, scale: Tensor) -> Tensor:  # z -> scale e^{-i phase} z
        c, s = (cos * scale).unsqueeze(1), (sin * scale).unsqueeze(1)
        return torch.stack([pi * c + pj * s, pj * c - pi * s], -1)

    s = (na2 * nb2).sqrt()
    floor = _safe_root(s)  # the inverse map: (1 / scale) times the rotation back
    inv_a, inv_b = na2.sqrt() / floor, nb2.sqrt() / floor

    def inverse(scale: Tensor) -> Tensor:
        return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)],
                           -2) * scale[..., None, None]

    return (turn(ai, aj, scale_a), turn(bi, bj, scale_b), s, inverse(inv_a), inverse(inv_b))


def _qk_section(g: HeadGroup, a: Tensor, b: Tensor):
    """The q/k section of a group: ``a`` [G, r (Dq+1), d] (its query heads' rows, transposed
    and stacked: one map acts on all of them), ``b`` [G, Dk+1, d]. The full GL(d) section
    (:func:`_balanced_pair`) on the ``free`` positions, :func:`_rotary_section` on the rotary
    ``pairs``. Returns ``(a', b', s, a_inv, b_inv)``."""
    if g.pairs.numel() == 0:
        return _balanced_pair(a, b)[:5]
    shape = a.shape[0], a.shape[2]
    s = a.new_zeros(shape)
    a_inv = a.new_zeros(shape + (shape[1],))
    b_inv = torch.zeros_like(a_inv)
    a_new, b_new = torch.zeros_like(a), torch.zeros_like(b)
    if g.free.numel():
        f = g.free
        fa, fb, fs, fa_inv, fb_inv, _ = _balanced_pair(a[..., f], b[..., f])
        a_new, b_new = a_new.index_copy(2, f, fa), b_new.index_copy(2, f, fb)
        s = s.index_copy(1, f, fs)
        rows, cols = f.unsqueeze(1).expand(-1, f.numel()), f.unsqueeze(0).expand(f.numel(), -1)
        a_inv[:, rows, cols], b_inv[:, rows, cols] = fa_inv, fb_inv
    pa, pb, ps, pa_inv, pb_inv = _rotary_section(a, b, g.pairs)
    cols = g.pairs.reshape(-1)  # (i0, j0, i1, j1, ...)
    a_new = a_new.index_copy(2, cols, pa.flatten(2))
    b_new = b_new.index_copy(2, cols, pb.flatten(2))
    s = s.index_copy(1, cols, ps.repeat_interleave(2, 1))
    rows = g.pairs.unsqueeze(-1).expand(-1, 2, 2)  # [P, 2, 2]: (i, i, j, j)
    cols2 = g.pairs.unsqueeze(1).expand(-1, 2, 2)  # (i, j, i, j)
    a_inv[:, rows, cols2], b_inv[:, rows, cols2] = pa_inv, pb_inv
    return a_new, b_new, s, a_inv, b_inv


def _stack_queries(q: Tensor, d: int) -> Tensor:
    """``[G, r d, W]`` rows of ``r`` query heads -> ``[G, r W, d]``: each head transposed,
    stacked (a key head's map acts on the ``d`` columns of all of them at once)."""
    g, rd, w = q.shape
    return q.view(g, rd // d, d, w).transpose(2, 3).reshape(g, -1, d)


def _unstack_queries(a: Tensor, width: int) -> Tensor:
    """The inverse of :func:`_stack_queries`."""
    g, rw, d = a.shape
    return a.view(g, rw // width, width, d).transpose(2, 3).reshape(g, -1, width)


def head_sections(hs: HeadStructure, edge_value: Tensor, node_value: Tensor) -> list[HeadSection]:
    """The canonical form of every head (see the module docstring), per group of ``hs``."""
    out = []
    for g in hs.groups:
        q = _augmented(edge_value, node_value, g.q_vals, g.q)
        k = _augmented(edge_value, node_value, g.k_vals, g.k)
        v = _augmented(edge_value, node_value, g.v_vals, g.v)
        o = edge_value[g.o_vals]
        lq, rk, s_qk, q_inv, k_inv = _qk_section(g, _stack_queries(q, g.k.shape[1]), k.mT)
        lo, rv, s_vo, _, v_inv, v_map = _balanced_pair(o, v.mT)
        out.append(HeadSection(q=_unstack_queries(lq, q.shape[2]), k=rk.mT, v=rv.mT, o=lo,
                               s_qk=s_qk, s_vo=s_vo, q_inv=q_inv, k_inv=k_inv, v_inv=v_inv,
                               v_map=v_map))
    return out


def _tiled(t: Tensor, rows: Tensor) -> Tensor:
    """Per-direction factors ``t`` [G, d] over rows [G, r d, ...] of ``r`` heads."""
    return t.repeat(1, rows.shape[1] // t.shape[1])


def _per_head(lmap: Tensor, rows: Tensor) -> Tensor:
    """``lmap`` [G, d, d] applied to every head's block of ``rows`` [G, r d, W]."""
    g, rd, w = rows.shape
    d = lmap.shape[-1]
    return (lmap.unsqueeze(1) @ rows.view(g, rd // d, d, w)).reshape(g, rd, w)


def write_heads(hs: HeadStructure, sections: list[HeadSection], edge_value: Tensor,
                node_value: Tensor, t_qk: list[Tensor] | None = None,
                t_vo: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Write the canonical heads into the values (out-of-place), each direction rescaled by the
    optional log-factors ``t_qk[g]`` [G, d] (query rows times ``e^t``, key rows times ``e^-t``)
    and ``t_vo[g]`` [G, dv] (value rows times ``e^t``, out-projection columns times ``e^-t``):
    the freedom the canonical form leaves, a group element where ``t`` is equal on the two
    dimensions of each rotary pair (:meth:`HeadStructure.direction_log_factors`)."""
    idx, vals, nidx, nvals = [], [], [], []
    for i, (g, sec) in enumerate(zip(hs.groups, sections)):
        q, k, v, o = sec.q, sec.k, sec.v, sec.o
        if t_qk is not None:
            e = t_qk[i].to(q.dtype).exp()
            q, k = q * _tiled(e, q).unsqueeze(-1), k / e.unsqueeze(-1)
        if t_vo is not None:
            e = t_vo[i].to(v.dtype).exp()
            v, o = v * e.unsqueeze(-1), o / e.unsqueeze(1)
        for rows, vi, nodes in ((q, g.q_vals, g.q), (k, g.k_vals, g.k), (v, g.v_vals, g.v)):
            idx.append(vi.reshape(-1))
            vals.append(rows[..., :-1].reshape(-1))
            nidx.append(nodes.reshape(-1))
            nvals.append(rows[..., -1].reshape(-1))
        idx.append(g.o_vals.reshape(-1))
        vals.append(o.reshape(-1))
    edge_value = edge_value.index_put((torch.cat(idx),), torch.cat(vals).to(edge_value.dtype))
    bias = node_value[:, 0].index_put((torch.cat(nidx),), torch.cat(nvals).to(node_value.dtype))
    return edge_value, torch.cat([bias.unsqueeze(1), node_value[:, 1:]], 1)


@dataclass
class HeadFrame:
    """The head maps a gauge applied, to take values from the gauged frame back to the input's:
    :meth:`undo` is the inverse group action (query rows :math:`\\hat Q = M^{-T} \\hat Q'`, keys
    :math:`\\hat K = M \\hat K'`, values :math:`\\hat V = N^{-T} \\hat V'`, out-projection
    :math:`O = O' N^T`), the learned rescaling included."""

    hs: HeadStructure
    q_inv: list[Tensor]
    k_inv: list[Tensor]
    v_inv: list[Tensor]
    v_map: list[Tensor]

    @classmethod
    def of(cls, hs: HeadStructure, sections: list[HeadSection],
           t_qk: list[Tensor] | None = None, t_vo: list[Tensor] | None = None) -> "HeadFrame":
        """The inverse maps of ``sections`` (with the log-factors of :func:`write_heads`)."""
        q_inv, k_inv, v_inv, v_map = [], [], [], []
        for i, sec in enumerate(sections):
            e_qk = t_qk[i].to(sec.q_inv.dtype).exp().unsqueeze(1) if t_qk is not None else 1.0
            e_vo = t_vo[i].to(sec.v_inv.dtype).exp() if t_vo is not None else 1.0
            # rows moved by e^t after the section: undo e^t first (columns of the inverses)
            q_inv.append(sec.q_inv / e_qk)
            k_inv.append(sec.k_inv * e_qk)
            v_inv.append(sec.v_inv / (e_vo.unsqueeze(1) if t_vo is not None else 1.0))
            v_map.append(sec.v_map * (e_vo.unsqueeze(-1) if t_vo is not None else 1.0))
        return cls(hs, q_inv, k_inv, v_inv, v_map)

    def undo(self, edge_value: Tensor, node_value: Tensor) -> tuple[Tensor, Tensor]:
        """``(edge_value, node_value)`` with every head moved back to the input's frame."""
        idx, vals, nidx, nvals = [], [], [], []
        for i, g in enumerate(self.hs.groups):
            for lmap, vi, nodes in ((self.q_inv[i], g.q_vals, g.q), (self.k_inv[i], g.k_vals, g.k),
                                    (self.v_inv[i], g.v_vals, g.v)):
                rows = _per_head(lmap.to(edge_value.dtype),
                                 _augmented(edge_value, node_value, vi, nodes))
                idx.append(vi.reshape(-1))
                vals.append(rows[..., :-1].reshape(-1))
                nidx.append(nodes.reshape(-1))
                nvals.append(rows[..., -1].reshape(-1))
            idx.append(g.o_vals.reshape(-1))
            vals.append((edge_value[g.o_vals] @ self.v_map[i].to(edge_value.dtype)).reshape(-1))
        edge_value = edge_value.index_put((torch.cat(idx),), torch.cat(vals))
        bias = node_value[:, 0].index_put((torch.cat(nidx),), torch.cat(nvals))
        return edge_value, torch.cat([bias.unsqueeze(1), node_value[:, 1:]], 1)


def _safe_root(s: Tensor) -> Tensor:
    floor = s.amax(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny) * _INV_FLOOR
    return torch.maximum(s, floor).sqrt()


def _right_solve_rt(b: Tensor, r: Tensor) -> Tensor:
    """``b R^{-T}`` for upper-triangular ``R`` (``X R^T = b``)."""
    return torch.linalg.solve_triangular(r.mT, b, upper=False, left=False)
