"""SIRENs of the digit images: the module, batched fitting, dilation targets, and a differentiable
forward pass that reads a SIREN's weights straight out of a batch of parameter graphs.

The SIREN convention used everywhere in this project (INR data sets are not interchangeable
between conventions, so it is stated exactly):

* **Coordinates**: the ``side x side`` pixel grid as ``(row, col)`` pairs on
  ``linspace(-1, 1, side)`` each, row-major (pixel ``r * side + c``), so the input is
  ``[side * side, 2]``; ``side`` is the zoo's ``inr_side`` (16 by default; 8 for the raw digits).
* **Target**: the pixel intensity in ``[0, 1]`` (of a deformed view of a digit, see
  :mod:`paramgraph.tasks.inr_images`); the SIREN outputs it directly, with **no output offset**
  and no output activation.
* **Layers**: ``Linear(2, h1) -> Sine(w0)`` with ``w0 = 30``, then ``Linear(h_i, h_{i+1}) -> Sine(1)``
  for each further hidden layer, then ``Linear(h_last, 1)``. The hidden layers use ``sin(z)``
  with weights initialised on the scale that ``sin(30 z)`` would have had, which is the original
  SIREN initialisation (Sitzmann et al. 2020) with its ``w0 = 30`` folded into the weights.
* **Initialisation**: first layer weights ``U(-1/2, 1/2)`` (``1/fan_in``); later weights
  ``U(-sqrt(6/fan_in), sqrt(6/fan_in))``; all biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
  (PyTorch's default). An inr zoo starts every SIREN from the same draw (one seed per zoo; see
  :mod:`paramgraph.tasks.zoo` for why), or optionally from one draw per image.
* **Fitting**: Adam (the zoo uses learning rate 3e-3, cosine-decayed to 1% of it), full batch of
  the pixels, mean squared error; hundreds of SIRENs are fitted at once with batched matrix
  products over a ``[n, ...]`` stack of their weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from paramgraph import Sine

from .errors import TaskError

SIDE = 8
FIRST_W0 = 30.0


class Siren(nn.Module):
    """``Linear -> Sine(w0) -> [Linear -> Sine(1)]* -> Linear``: see the module docstring."""

    def __init__(self, hidden: list[int], w0: float = FIRST_W0):
        super().__init__()
        if not hidden:
            raise TaskError("a SIREN needs at least one hidden layer")
        layers: list[nn.Module] = []
        width = 2
        for i, h in enumerate(hidden):
            layers += [nn.Linear(width, h), Sine(w0 if i == 0 else 1.0)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def grid(side: int = SIDE) -> Tensor:
    """``[side*side, 2]`` float32: the pixel coordinates, row-major, each in ``[-1, 1]``."""
    axis = torch.linspace(-1.0, 1.0, side)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def layer_names(hidden: list[int]) -> list[str]:
    """The state_dict prefixes of a SIREN's Linear layers, in order (``net.0``, ``net.2``, ...)."""
    return [f"net.{2 * i}" for i in range(len(hidden) + 1)]


def init_params(hidden: list[int], seeds: list[int], w0: float = FIRST_W0) -> list[Tensor]:
    """Stacked initial parameters ``[W1, b1, W2, b2, ...]`` of ``len(seeds)`` SIRENs.

    ``Wi`` is ``[n, out, in]`` and ``bi`` ``[n, out]``; SIREN ``j`` is drawn from its own
    generator seeded with ``seeds[j]``, so it does not depend on which others share the batch.
    """
    widths = [2, *hidden, 1]
    per_net = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        params = []
        for i in range(len(widths) - 1):
            fan_in, fan_out = widths[i], widths[i + 1]
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in)
            w = (torch.rand(fan_out, fan_in, generator=g) * 2 - 1) * bound
            b = (torch.rand(fan_out, generator=g) * 2 - 1) / math.sqrt(fan_in)
            params += [w, b]
        per_net.append(params)
    return [torch.stack([p[k] for p in per_net]) for k in range(len(per_net[0]))]


def batched_activations(params: list[Tensor], coords: Tensor,
                        w0: float = FIRST_W0) -> list[Tensor]:
    """Run ``n`` SIRENs at once: ``params`` as from :func:`init_params`, ``coords`` ``[P, 2]``.

    Returns every layer's output, ``[n, P, width]`` each: the hidden layers' sines, then the
    SIREN's output. Differentiable in ``params``.
    """
    n = params[0].shape[0]
    h = coords.to(params[0].dtype).unsqueeze(0).expand(n, -1, -1)  # [n, P, 2]
    layers = len(params) // 2
    out = []
    for i in range(layers):
        w, b = params[2 * i], params[2 * i + 1]
        if i == 0:  # sin(w0 (W x + b)) with w0 on the small weights, not on the [n, P, h] map
            w, b = w * w0, b * w0
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < layers - 1:
            h = torch.sin(h)
        out.append(h)
    return out


def batched_forward(params: list[Tensor], coords: Tensor, w0: float = FIRST_W0) -> Tensor:
    """``[n, P]``: each of ``n`` SIRENs' output at each coordinate (see
    :func:`batched_activations`)."""
    return batched_activations(params, coords, w0)[-1].squeeze(-1)


def side_of(pixels: int) -> int:
    """The side of a square image of ``pixels`` pixels; :class:`TaskError` if it is not square."""
    side = math.isqrt(int(pixels))
    if side * side != pixels or side < 2:
        raise TaskError(f"INR images must be square with at least 2x2 pixels, got {pixels} pixels")
    return side


def fit_sirens(images: Tensor, hidden: list[int], seeds: list[int], steps: int = 500,
               lr: float = 1e-3, w0: float = FIRST_W0) -> tuple[list[Tensor], Tensor]:
    """Fit one SIREN per image, all at once: one Adam over the stacked weights ``[n, ...]``,
    whose loss is the *sum* over SIRENs of each one's mean squared error, so each SIREN's
    gradient (and its whole trajectory) is that of fitting it alone.

    ``images`` is ``[n, side * side]`` in ``[0, 1]`` (row-major on :func:`grid` ``(side)``).
    Returns the fitted stacked parameters (as :func:`init_params`) and the per-image mean squared
    error ``[n]`` of the final fit.
    """
    if images.dim() != 2:
        raise TaskError(f"fit_sirens expects [n, side*side] images, got {tuple(images.shape)}")
    coords = grid(side_of(images.shape[1]))
    params = [p.requires_grad_() for p in init_params(hidden, seeds, w0)]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 1e-2)
    target = images.float()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        err = (batched_forward(params, coords, w0) - target).pow(2).mean(1)
        # Sum, not mean: each SIREN's gradient is then independent of the batch size.
        err.sum().backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        err = (batched_forward(params, coords, w0) - target).pow(2).mean(1)
    return [p.detach() for p in params], err


def movement(start: list[Tensor], end: list[Tensor]) -> Tensor:
    r"""``[n]``: how far each SIREN moved from its start, relative to it,
    :math:`\|\theta_T - \theta_0\| / \|\theta_0\|` over all its parameters."""
    num = sum((b - a).flatten(1).pow(2).sum(1) for a, b in zip(start, end))
    den = sum(a.flatten(1).pow(2).sum(1) for a in start)
    return (num / den).sqrt()


def stack(states: list[dict[str, Tensor]], hidden: list[int]) -> list[Tensor]:
    """The stacked ``[W1, b1, W2, b2, ...]`` of the SIRENs ``states`` (state_dicts of
    :class:`Siren`), as :func:`init_params` makes them; the inverse of :func:`unstack`."""
    return [torch.stack([sd[f"{name}.{kind}"] for sd in states])
            for name in layer_names(hidden) for kind in ("weight", "bias")]


def unstack(params: list[Tensor], hidden: list[int], j: int) -> dict[str, Tensor]:
    """The state_dict of SIREN ``j`` of stacked ``params`` (keys of :class:`Siren`)."""
    out = {}
    for name, i in zip(layer_names(hidden), range(0, len(params), 2)):
        out[f"{name}.weight"] = params[i][j].contiguous().clone()
        out[f"{name}.bias"] = params[i + 1][j].contiguous().clone()
    return out


# -- editing target ----------------------------------------------------------------------------

CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def cross(radius: int) -> np.ndarray:
    """The cross footprint of ``radius`` pixels (``radius=1``: the 3x3 :data:`CROSS`)."""
    size = 2 * radius + 1
    out = np.zeros((size, size), dtype=bool)
    out[radius, :] = out[:, radius] = True
    return out


def dilation_radius(side: int) -> int:
    """The dilation's reach at ``side`` pixels: one pixel per 16 (at least one), so the edit
    is the same fraction of the image at every resolution (8 and 16: 1 pixel, 28: 2)."""
    return max(1, round(side / 16))


def dilate(images: np.ndarray | Tensor) -> Tensor:
    """Grey-scale dilation of ``[n, side*side]`` (or ``[n, side, side]``) images with a cross of
    :func:`dilation_radius` ``(side)`` pixels.

    Each pixel becomes the maximum over itself and its neighbours along the cross (borders
    padded with 0). Returns ``[n, side*side]`` float32. This is the INR-editing target.
    """
    from scipy.ndimage import grey_dilation

    arr = np.asarray(images, dtype=np.float32)
    side = side_of(arr[0].size) if len(arr) else SIDE
    arr = arr.reshape(-1, side, side)
    foot = cross(dilation_radius(side))
    out = np.stack([grey_dilation(im, footprint=foot, mode="constant", cval=0.0) for im in arr]) \
        if len(arr) else arr
    return torch.from_numpy(np.ascontiguousarray(out).reshape(-1, side * side))


# -- a SIREN read from parameter-graph values, differentiably ------------------------------------

def siren_index(batch, hidden: list[int]) -> list[tuple[Tensor, Tensor]]:
    """Index tensors that gather each SIREN layer's weight and bias out of a PyG ``Batch``.

    Returns, per Linear layer, ``(weight_index [B, out*in] into edge_value,
    bias_index [B, out] into node_value's flattened [N*5] view)``. Every graph of the batch must
    be a SIREN with ``hidden`` layers (as converted by ``paramgraph.from_module``). Raises
    :class:`~paramgraph.tasks.errors.TaskError` if a graph lacks a layer or its shape differs.
    """
    from paramgraph.types import NODE_SLOTS

    graphs = batch.num_graphs
    segs_per_graph = batch.segments if isinstance(batch.segments, list) else [batch.segments]
    if len(segs_per_graph) != graphs:
        raise TaskError(f"batch has {graphs} graphs but {len(segs_per_graph)} segment tables")
    # Where each graph's edge values start: cumulative sum of its edges' sizes.
    edge_graph = batch.batch[batch.edge_index[0]]
    values_per_graph = torch.zeros(graphs, dtype=torch.long, device=edge_graph.device)
    values_per_graph.index_add_(0, edge_graph, batch.edge_size.long())
    value_offset = torch.cumsum(values_per_graph, 0) - values_per_graph
    node_offset = batch.ptr[:-1]
    widths = [2, *hidden, 1]
    slots = len(NODE_SLOTS)
    out = []
    for layer, name in enumerate(layer_names(hidden)):
        n_out, n_in = widths[layer + 1], widths[layer]
        w_start, b_start, b_slot = [], [], []
        for table in segs_per_graph:
            try:
                ws, bs = table[f"{name}.weight"], table[f"{name}.bias"]
            except KeyError as err:
                raise TaskError(f"graph is not a SIREN with hidden layers {hidden}: no tensor "
                                f"{err}") from None
            if tuple(ws.shape) != (n_out, n_in) or ws.permute is not None or ws.kind != "edge":
                raise TaskError(f"graph tensor '{ws.name}' has shape {ws.shape}, a SIREN with "
                                f"hidden layers {hidden} needs {(n_out, n_in)}")
            w_start.append(ws.value_start)
            b_start.append(bs.start)
            b_slot.append(bs.slot)
        dev = value_offset.device
        w_idx = (value_offset + torch.tensor(w_start, device=dev)).unsqueeze(1) \
            + torch.arange(n_out * n_in, device=dev)
        rows = (node_offset + torch.tensor(b_start, device=dev)).unsqueeze(1) \
            + torch.arange(n_out, device=dev)
        b_idx = rows * slots + torch.tensor(b_slot, device=dev).unsqueeze(1)
        out.append((w_idx, b_idx))
    return out


def _batch_params(batch, hidden: list[int], index) -> list[Tensor]:
    """The stacked ``[W1, b1, ...]`` of every SIREN of ``batch``, gathered by ``index``."""
    widths = [2, *hidden, 1]
    flat_nodes = batch.node_value.reshape(-1)
    params = []
    for layer, (w_idx, b_idx) in enumerate(index):
        params.append(batch.edge_value[w_idx].view(-1, widths[layer + 1], widths[layer]))
        params.append(flat_nodes[b_idx])
    return params


def siren_forward_from_batch(batch, hidden: list[int], coords: Tensor | None = None,
                             w0: float = FIRST_W0, index=None) -> Tensor:
    """Evaluate every SIREN of a PyG ``Batch`` of parameter graphs on ``coords`` (default grid).

    The weights are gathered from ``batch.edge_value`` / ``batch.node_value`` by index, so the
    result is differentiable with respect to those values (use it on a weight head's output).
    Returns ``[num_graphs, P]``. ``index`` may pass a precomputed :func:`siren_index`.
    """
    if coords is None:
        coords = grid().to(batch.edge_value.device)
    index = index if index is not None else siren_index(batch, hidden)
    return batched_forward(_batch_params(batch, hidden, index), coords, w0)


def siren_probes(batch, hidden: list[int], coords: Tensor, w0: float = FIRST_W0) -> Tensor:
    """Probe features (Neural Graphs' term): ``[N, P]``, every neuron's value at the ``P``
    probe coordinates ``coords`` ``[P, 2]``: an input neuron its coordinate, a hidden neuron its
    sine's output, the output neuron the SIREN's value. They move with the network's symmetries
    as its neurons do (a permuted neuron's row moves with it; a sign-flipped sine neuron's row
    is negated), so a metanet can read them equivariantly
    (:class:`~paramgraph.models.metanet.MetaNet`'s ``probes``)."""
    from paramgraph.types import NODE_SLOTS, NodeType

    index = siren_index(batch, hidden)
    coords = coords.to(batch.node_value)
    acts = batched_activations(_batch_params(batch, hidden, index), coords, w0)
    probe = batch.node_value.new_zeros(batch.node_value.shape[0], coords.shape[0])
    for (_, b_idx), a in zip(index, acts):
        rows = torch.div(b_idx, len(NODE_SLOTS), rounding_mode="floor")  # [B, width]
        probe = probe.index_put((rows.reshape(-1),), a.transpose(1, 2).reshape(-1, a.shape[1]))
    inputs = (batch.node_type == int(NodeType.INPUT)).nonzero().squeeze(1)  # 2 per SIREN, in order
    return probe.index_put((inputs,), coords.t().repeat(batch.num_graphs, 1))
