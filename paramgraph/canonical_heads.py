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

Not represented by the converter, so not handled here: rotary embeddings (only maps commuting
with the rotation would be symmetries), grouped-query attention (k/v maps tied across the q heads
that share them), cross-attention (the converter takes self-attention only, packed
in-projection). :meth:`HeadStructure.of` reads heads from the fixed ATTN_QK/ATTN_KV wiring and
raises ``ValueError`` for a layout it does not understand.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .types import EdgeType, NodeType

_INV_FLOOR = 1e-12  # HeadFrame: singular values below this times the largest count as this


@dataclass
class HeadGroup:
    """Heads of one shape, stacked (``G`` heads). Node ids ``q``, ``k`` [G, d], ``v`` [G, dv];
    value indices of the in-projection rows ``q_vals`` [G, d, Dq], ``k_vals``, ``v_vals``; their
    source nodes ``q_src`` [G, Dq], ``k_src``, ``v_src``; out-projection value indices
    ``o_vals`` [G, Do, dv] and target nodes ``o_dst`` [G, Do]."""

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
        node_type = node_type.long()
        edge_type = edge_type.long()
        n = int(node_type.numel())
        is_q = node_type == int(NodeType.ATTN_Q)
        if not bool(is_q.any()):
            return None
        device = src.device
        edge_size = edge_size.long()
        offsets = torch.cumsum(edge_size, 0) - edge_size
        if bool((edge_type == int(EdgeType.ROTARY)).any()):
            raise ValueError("attention: rotary heads admit only scaled rotations of their q/k "
                             "pairs; their section is not implemented")
        kv = (edge_type == int(EdgeType.ATTN_KV)).nonzero().squeeze(1)
        qk = (edge_type == int(EdgeType.ATTN_QK)).nonzero().squeeze(1)
        big = torch.full((n,), n, dtype=torch.long, device=device)
        head_k = big.scatter_reduce(0, src[kv], dst[kv], "amin")  # a head's smallest v node
        if bool((torch.bincount(dst[qk], minlength=n) > 1).any()):
            raise ValueError("attention: grouped-query heads (a key shared by several query "
                             "heads) tie their maps; their section is not implemented")
        k_of_q = torch.full((n,), -1, dtype=torch.long, device=device)
        k_of_q[src[qk]] = dst[qk]
        head_v = big.scatter_reduce(0, dst[kv], head_k[src[kv]], "amin")
        q_all = is_q.nonzero().squeeze(1)
        v_all = (node_type == int(NodeType.ATTN_V)).nonzero().squeeze(1)
        if bool((k_of_q[q_all] < 0).any()):
            raise ValueError("attention: a query dimension has no key partner (ATTN_QK edge)")
        key_q = head_k[k_of_q[q_all]]
        key_v = head_v[v_all]
        q_sorted = q_all[torch.argsort(key_q * n + q_all)]
        v_sorted = v_all[torch.argsort(key_v * n + v_all)]
        heads, d_q = torch.unique(head_k[k_of_q[q_sorted]], return_counts=True)
        heads_v, d_v = torch.unique(head_v[v_sorted], return_counts=True)
        if not torch.equal(heads, heads_v):
            raise ValueError("attention: query and value dimensions do not form the same heads")
        q_start = torch.cumsum(d_q, 0) - d_q
        v_start = torch.cumsum(d_v, 0) - d_v

        def rows(etype: EdgeType, by_dst: bool):
            ids = (edge_type == int(etype)).nonzero().squeeze(1)
            if bool((edge_size[ids] != 1).any()):
                raise ValueError(f"attention: {etype.name} edges carry more than one value")
            end, other = (dst, src) if by_dst else (src, dst)
            ids = ids[torch.argsort(end[ids] * n + other[ids])]
            count = torch.bincount(end[ids], minlength=n)
            return ids, torch.cumsum(count, 0) - count, count

        in_rows = {t: rows(t, True) for t in (EdgeType.ATTN_IN_Q, EdgeType.ATTN_IN_K,
                                                EdgeType.ATTN_IN_V)}
        out_rows = rows(EdgeType.ATTN_OUT, False)
        first_q, first_v = q_sorted[q_start], v_sorted[v_start]
        shape = torch.stack([
            d_q, d_v, in_rows[EdgeType.ATTN_IN_Q][2][first_q],
            in_rows[EdgeType.ATTN_IN_K][2][k_of_q[first_q]],
            in_rows[EdgeType.ATTN_IN_V][2][first_v], out_rows[2][first_v]], 1)
        shapes, group_of = torch.unique(shape, dim=0, return_inverse=True)
        groups = []
        for g, (d, dv, dq_in, dk_in, dv_in, d_out) in enumerate(shapes.tolist()):
            hs = (group_of == g).nonzero().squeeze(1)
            q = q_sorted[q_start[hs].unsqueeze(1) + torch.arange(d, device=device)]
            k = k_of_q[q]
            v = v_sorted[v_start[hs].unsqueeze(1) + torch.arange(dv, device=device)]
            mats = []
            for nodes, etype, width in ((q, EdgeType.ATTN_IN_Q, dq_in),
                                        (k, EdgeType.ATTN_IN_K, dk_in),
                                        (v, EdgeType.ATTN_IN_V, dv_in)):
                ids, start, count = in_rows[etype]
                if bool((count[nodes] != width).any()):
                    raise ValueError(f"attention: rows of one head have different fan-in "
                                     f"({etype.name})")
                e = ids[start[nodes].unsqueeze(-1) + torch.arange(width, device=device)]
                s = src[e]
                if not bool((s == s[:, :1]).all()):
                    raise ValueError(f"attention: rows of one head read different sources "
                                     f"({etype.name})")
                mats.append((offsets[e], s[:, 0]))
            ids, start, count = out_rows
            if bool((count[v] != d_out).any()):
                raise ValueError("attention: value dimensions of one head have different fan-out")
            e = ids[start[v].unsqueeze(-1) + torch.arange(d_out, device=device)]  # [G, dv, Do]
            t = dst[e]
            if not bool((t == t[:, :1]).all()):
                raise ValueError("attention: value dimensions of one head write to different "
                                 "neurons")
            groups.append(HeadGroup(q=q, k=k, v=v, q_vals=mats[0][0], k_vals=mats[1][0],
                                    v_vals=mats[2][0], q_src=mats[0][1], k_src=mats[1][1],
                                    v_src=mats[2][1], o_vals=offsets[e].transpose(1, 2),
                                    o_dst=t[:, 0]))
        reader = torch.zeros(n, dtype=torch.bool, device=device)
        for grp in groups:
            reader[grp.o_dst.reshape(-1)] = True
        other = weight & (edge_type != int(EdgeType.ATTN_OUT)) & reader[dst]
        if bool(other.any()):
            raise ValueError("attention: a neuron reads an out-projection and other weights")
        levels = tuple(sorted(set(node_layer[reader].tolist())))
        return cls(groups=groups, reader=reader, reader_levels=levels,
                   num_heads=int(heads.numel()))

    def to(self, device, non_blocking: bool = False) -> "HeadStructure":
        """A copy with every tensor on ``device``."""
        return HeadStructure([g.to(device, non_blocking) for g in self.groups],
                             self.reader.to(device, non_blocking=non_blocking),
                             self.reader_levels, self.num_heads)

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


def _augmented(edge_value: Tensor, node_value: Tensor, vals: Tensor, nodes: Tensor) -> Tensor:
    """``[G, d, D+1]``: the rows' weights and, last, their bias."""
    return torch.cat([edge_value[vals], node_value[nodes, 0].unsqueeze(-1)], -1)


@dataclass
class HeadSection:
    """The canonical pair of one :class:`HeadGroup`: augmented rows ``q``, ``k`` [G, d, Dq+1],
    ``v`` [G, dv, Dv+1] and out-projection columns ``o`` [G, Do, dv]; singular values ``s_qk``
    [G, d], ``s_vo`` [G, dv] (decreasing); and what :class:`HeadFrame` needs to undo it
    (``r_*``: the QR factors, ``u_*``: the small SVD's orthogonal factors, ``sign_*``)."""

    q: Tensor
    k: Tensor
    v: Tensor
    o: Tensor
    s_qk: Tensor
    s_vo: Tensor
    r_q: Tensor
    r_k: Tensor
    r_v: Tensor
    u_q: Tensor
    u_k: Tensor
    u_v: Tensor
    sign_qk: Tensor
    sign_vo: Tensor


def _balanced_pair(a: Tensor, b: Tensor):
    """For ``a`` [G, m, d], ``b`` [G, n, d] (full column rank): the balanced factors of
    ``a b^T = L R^T`` with ``L = U S^1/2``, ``R = V S^1/2`` (columns signed so that each column
    of ``R`` has a positive largest-magnitude entry), and ``(s, r_a, r_b, u_a, u_b, sign)``."""
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b)
    u, s, vh = torch.linalg.svd(ra @ rb.mT)
    ub = vh.mT
    right = qb @ ub  # V: [G, n, d]
    big = right.abs().argmax(1, keepdim=True)
    sign = torch.sign(right.gather(1, big)).squeeze(1)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    root = s.clamp_min(0).sqrt() * sign  # [G, d]
    return (qa @ u) * root.unsqueeze(1), right * root.unsqueeze(1), (s, ra, rb, u, ub, sign)


def head_sections(hs: HeadStructure, edge_value: Tensor, node_value: Tensor) -> list[HeadSection]:
    """The canonical form of every head (see the module docstring), per group of ``hs``."""
    out = []
    for g in hs.groups:
        q = _augmented(edge_value, node_value, g.q_vals, g.q)
        k = _augmented(edge_value, node_value, g.k_vals, g.k)
        v = _augmented(edge_value, node_value, g.v_vals, g.v)
        o = edge_value[g.o_vals]
        lq, rk, (s_qk, r_q, r_k, u_q, u_k, sign_qk) = _balanced_pair(q.mT, k.mT)
        lo, rv, (s_vo, r_o, r_v, u_o, u_v, sign_vo) = _balanced_pair(o, v.mT)
        out.append(HeadSection(q=lq.mT, k=rk.mT, v=rv.mT, o=lo, s_qk=s_qk, s_vo=s_vo,
                               r_q=r_q, r_k=r_k, r_v=r_v, u_q=u_q, u_k=u_k, u_v=u_v,
                               sign_qk=sign_qk, sign_vo=sign_vo))
    return out


def write_heads(hs: HeadStructure, sections: list[HeadSection], edge_value: Tensor,
                node_value: Tensor, t_qk: list[Tensor] | None = None,
                t_vo: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Write the canonical heads into the values (out-of-place), each singular direction
    rescaled by the optional log-factors ``t_qk[g]`` [G, d] (query rows times ``e^t``, key
    rows times ``e^-t``) and ``t_vo[g]`` [G, dv] (value rows times ``e^t``, out-projection
    columns times ``e^-t``): the freedom the canonical form leaves, a group element."""
    idx, vals, nidx, nvals = [], [], [], []
    for i, (g, sec) in enumerate(zip(hs.groups, sections)):
        q, k, v, o = sec.q, sec.k, sec.v, sec.o
        if t_qk is not None:
            e = t_qk[i].to(q.dtype).exp().unsqueeze(-1)
            q, k = q * e, k / e
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
            root_qk = _safe_root(sec.s_qk) * sec.sign_qk  # sigma S^1/2, [G, d]
            root_vo = _safe_root(sec.s_vo) * sec.sign_vo
            e_qk = t_qk[i].to(root_qk.dtype).exp() if t_qk is not None else 1.0
            e_vo = t_vo[i].to(root_vo.dtype).exp() if t_vo is not None else 1.0
            # forward maps: q' = e sigma S^1/2 u^T R^-T q; inverse: R^T u S^-1/2 sigma / e
            q_inv.append(sec.r_q.mT @ (sec.u_q / (root_qk * e_qk).unsqueeze(1)))
            k_inv.append(sec.r_k.mT @ (sec.u_k * (e_qk / root_qk).unsqueeze(1)))
            v_inv.append(sec.r_v.mT @ (sec.u_v / (root_vo * e_vo).unsqueeze(1)))
            fwd = (sec.u_v * (root_vo * e_vo).unsqueeze(1)).mT  # e sigma S^1/2 u^T: [G, dv, dv]
            v_map.append(_right_solve_rt(fwd, sec.r_v))  # N^T = e sigma S^1/2 u^T R^-T
        return cls(hs, q_inv, k_inv, v_inv, v_map)

    def undo(self, edge_value: Tensor, node_value: Tensor) -> tuple[Tensor, Tensor]:
        """``(edge_value, node_value)`` with every head moved back to the input's frame."""
        idx, vals, nidx, nvals = [], [], [], []
        for i, g in enumerate(self.hs.groups):
            for lmap, vi, nodes in ((self.q_inv[i], g.q_vals, g.q), (self.k_inv[i], g.k_vals, g.k),
                                    (self.v_inv[i], g.v_vals, g.v)):
                rows = lmap.to(edge_value.dtype) @ _augmented(edge_value, node_value, vi, nodes)
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
