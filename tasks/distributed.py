"""Data-parallel training on ``torch.distributed``: one process per CPU group or GPU, on one or
many machines, started by ``torchrun`` (``python -m torch.distributed.run``).

``paramgraph train ...`` runs unchanged under ``torchrun``: :func:`setup` reads the variables
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and
joins the process group with the backend that fits the device (``nccl`` on CUDA, ``gloo`` on CPU).
Without them (a plain ``paramgraph train``) everything here degrades to the one-process case at
no cost.

What makes an N-process run equal to a one-process run with the same global batch and seed:

* ``--batch-size`` is the *global* batch. Step ``k`` of epoch ``e`` uses exactly the graphs of the
  one-process run's step ``k`` (the epoch permutation drawn from ``(seed, e)``), split across the
  ranks by :func:`partition_batch` so that every rank gets about the same number of *edges* (the
  cost of message passing), not only the same number of graphs: ranks finish a step together.
* Each rank's loss (a mean over its graphs) is weighted by its share of the global batch times the
  world size; DDP averages gradients across ranks, so the applied gradient is the gradient of the
  mean loss over the whole global batch, as in one process.
* The pairwise rank term (``--rank-loss``) is not a mean of per-graph terms: every rank gathers
  the step's predictions and targets of all ranks (:func:`global_batch`, the others' detached)
  and computes the term over the whole global batch. Its gradient with respect to this rank's
  predictions is then exactly the one-process gradient, and weighting it by the world size
  undoes DDP's averaging.
* A step is skipped when the (all-reduced, so identical on every rank) gradient is not finite,
  decided on the device: the fused AdamW's ``found_inf`` input, no host round trip per step.
* Training loss and skip counts are accumulated on the device and reduced once per epoch;
  validation metrics (Kendall tau, ...) are computed on the predictions of every rank gathered in
  dataset order (:func:`predict_all`), never averaged per rank.
* Only rank 0 writes the run directory (config, metrics, checkpoints, ``resume.pt``); every rank
  reads ``resume.pt`` on ``--resume``. The zoo and the run directory must be visible to every node
  (a shared file system) for multi-machine runs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from paramgraph.models import prepare

from .errors import TaskError
from .precision import training_autocast

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Context:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False  # this module started the process group (and ends it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None``/``"auto"``: CUDA when available, else CPU.
    Raises :class:`TaskError` for an unknown device or CUDA asked for where there is none."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise TaskError(f"unknown device '{device}' ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TaskError(f"--device {device}: this machine has no usable CUDA device "
                        "(torch.cuda.is_available() is False); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TaskError(f"--device {device}: only cpu and cuda are supported")
    return dev


def setup(device: str | torch.device | None = None) -> Context:
    """Join the torchrun process group if this process was started by torchrun (``WORLD_SIZE``
    > 1), else return the one-process context. Backend: ``nccl`` for CUDA, ``gloo`` for CPU; under
    CUDA each process uses GPU ``LOCAL_RANK``. Raises :class:`TaskError` for an incomplete
    environment."""
    dev = choose_device(device)
    if dist.is_available() and dist.is_initialized():  # started by the caller (tests, notebooks)
        return _context(dist.get_rank(), dist.get_world_size(), dev, dist.get_backend(), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=dev)
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise TaskError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the "
                        "processes with torchrun (python -m torch.distributed.run)")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    minutes = float(os.environ.get("PARAMGRAPH_DIST_TIMEOUT_MIN", "30"))
    rank = int(os.environ["RANK"])
    ctx = _context(rank, world, dev, backend, True)
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(minutes=minutes),
                            device_id=ctx.device if ctx.device.type == "cuda" else None)
    return ctx


def _context(rank: int, world: int, dev: torch.device, backend, owns: bool) -> Context:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local % torch.cuda.device_count())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return Context(rank, world, local, dev, backend, owns)


_FAILED = "paramgraph/failed/"  # store key prefix: a rank's failure, for the others to read
_SEEN = "paramgraph/seen/"  # a rank that has read another's failure
FAILURE_WAIT_S = 20.0  # how long rank 0, which hosts the store, keeps it for the others to read


@contextmanager
def failures_shared(ctx: Context):
    """``with failures_shared(ctx):`` a rank that fails inside ends the run on every rank.

    The failing rank writes its error to the process group's key-value store and destroys the
    group: the others, waiting in (or later entering) a collective, get a closed-connection
    error at once instead of waiting for the group's timeout, and re-raise it as
    :class:`TaskError` ``"rank R failed: ..."`` with the failing rank's own error. Rank 0 hosts
    the store, so when it fails it waits (at most ``FAILURE_WAIT_S``) until the others have
    read its error. The group is unusable afterwards either way. No effect in one process."""
    try:
        yield
    except BaseException as err:
        if not ctx.distributed or not dist.is_initialized():
            raise
        store = _store()
        failed = _peer_failure(ctx, store)
        if failed is not None:
            raise TaskError(f"rank {failed[0]} failed: {failed[1]}") from err
        try:
            store.set(f"{_FAILED}{ctx.rank}", f"{type(err).__name__}: {err}")
        except Exception:  # noqa: BLE001 - no store (or it went first): the group error stays
            store = None
        dist.destroy_process_group()
        if store is not None and ctx.is_main:
            _wait_until_seen(ctx, store)
        raise


def _store():
    """The default process group's store (``None`` where this torch hides it)."""
    get = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return get() if get is not None else None
    except Exception:  # noqa: BLE001
        return None


def _peer_failure(ctx: Context, store) -> tuple[int, str] | None:
    """``(rank, message)`` of another rank that reported a failure, else ``None``."""
    if store is None:
        return None
    for rank in range(ctx.world_size):
        key = f"{_FAILED}{rank}"
        try:
            if rank != ctx.rank and store.check([key]):
                message = store.get(key).decode()
                store.set(f"{_SEEN}{ctx.rank}", "1")
                return rank, message
        except Exception:  # noqa: BLE001 - the store is gone with rank 0: say so
            return 0, "it ended, and the process group's store with it"
    return None


def _wait_until_seen(ctx: Context, store) -> None:
    """Keep this process (and the store it hosts) alive until every other rank has read a
    failure, or ``FAILURE_WAIT_S`` has passed."""
    import time

    keys = [f"{_SEEN}{r}" for r in range(ctx.world_size) if r != ctx.rank]
    deadline = time.monotonic() + FAILURE_WAIT_S
    while time.monotonic() < deadline:
        try:
            if store.check(keys):
                return
        except Exception:  # noqa: BLE001
            return
        time.sleep(0.05)


def teardown(ctx: Context) -> None:
    """Leave the process group if :func:`setup` joined it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str | torch.device | None = None):
    """``with session(device) as ctx:`` :func:`setup`, then :func:`teardown` (also on errors)."""
    ctx = setup(device)
    try:
        yield ctx
    finally:
        teardown(ctx)


# -- collectives (no-ops in one process) ------------------------------------------------------

def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(ctx: Context, obj):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks (in place; returned)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def rank0_first(ctx: Context, fn: Callable[[], object]):
    """Run ``fn`` on rank 0, then on the other ranks (e.g. build a cache once, then open it
    everywhere). If rank 0 fails, every rank raises instead of waiting forever."""
    if not ctx.distributed:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, after telling the others
            error = err
    message = broadcast_object(ctx, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise TaskError(f"rank 0 failed: {message}")
    return fn() if not ctx.is_main else result


# -- splitting the data across ranks ----------------------------------------------------------

def partition_batch(indices: Sequence[int], edges: Sequence[int], world: int) -> list[list[int]]:
    """Split the graphs ``indices`` (with ``edges[k]`` edges each) into ``world`` parts of about
    equal edge count: longest-processing-time greedy (largest graph first, to the lightest part,
    ties to the lowest rank), each part kept in the batch's order. Deterministic; every part gets
    a graph when there are at least ``world`` graphs."""
    loads = [0] * world
    parts: list[list[int]] = [[] for _ in range(world)]
    by_size = sorted(range(len(indices)), key=lambda k: (-int(edges[k]), k))
    for k in by_size:
        r = min(range(world), key=lambda q: (loads[q], len(parts[q]), q))
        parts[r].append(k)
        loads[r] += max(1, int(edges[k]))
    return [[indices[k] for k in sorted(p)] for p in parts]


class StepPlan(NamedTuple):
    """One training step of a rank: the global batch's graph count, this rank's share of it and
    every rank's share (rank order), known to every rank without communication."""

    graphs: int
    local: int
    shares: tuple[int, ...]


class EdgeBalancedBatchSampler(Sampler[list[int]]):
    """The distributed batch sampler of a training epoch.

    ``order``: dataset indices in the epoch's order; ``edge_counts[i]``: edges of dataset item
    ``i``. Global step ``k`` takes ``order[k*B:(k+1)*B]`` (as one process would) and yields this
    rank's part of it (:func:`partition_batch`); ``plan[k]`` is its :class:`StepPlan`.
    A rank left without a graph (a last batch smaller than the world) gets the batch's first graph
    with ``local_graphs == 0``: it runs forward/backward with weight zero, so DDP's all-reduce
    still sees every rank.
    """

    def __init__(self, order: Sequence[int], batch_size: int, edge_counts: Sequence[int],
                 rank: int = 0, world_size: int = 1):
        self.batches: list[list[int]] = []
        self.plan: list[StepPlan] = []
        order = [int(i) for i in order]
        for s in range(0, len(order), batch_size):
            batch = order[s : s + batch_size]
            parts = partition_batch(batch, [edge_counts[i] for i in batch], world_size) \
                if world_size > 1 else [batch]
            mine = parts[rank]
            self.plan.append(StepPlan(len(batch), len(mine), tuple(len(p) for p in parts)))
            self.batches.append(mine if mine else batch[:1])

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def epoch_loader(ctx: Context, dataset, order: Sequence[int], batch_size: int,
                 edge_counts: Sequence[int], workers: int = 0):
    """A PyG DataLoader over this rank's part of every global batch of the epoch, and the
    sampler's plan (see :class:`EdgeBalancedBatchSampler`)."""
    from torch_geometric.loader import DataLoader

    sampler = EdgeBalancedBatchSampler(order, batch_size, edge_counts, ctx.rank, ctx.world_size)
    pin = ctx.device.type == "cuda"
    if hasattr(dataset, "collate"):  # batches made whole by the data set (ZooDataset.collate)
        return torch.utils.data.DataLoader(_Batches(dataset), sampler=sampler, batch_size=None,
                                           collate_fn=_as_is, num_workers=workers,
                                           pin_memory=pin), sampler.plan
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin)
    return loader, sampler.plan


class _Batches(torch.utils.data.Dataset):
    """A data set whose items are whole batches: ``[idx]`` is ``dataset.collate(idx)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, idx):
        return self.dataset.collate(idx)


def _as_is(batch):  # a module-level function: DataLoader workers pickle it
    return batch


def rank_slice(edge_counts: Sequence[int], rank: int, world: int) -> range:
    """The contiguous range of items that ``rank`` evaluates: cut where the cumulative edge count
    crosses ``total * r / world`` (balanced work, dataset order kept)."""
    total = float(sum(max(1, int(e)) for e in edge_counts))
    bounds, acc, r = [0], 0.0, 1
    for k, e in enumerate(edge_counts):
        acc += max(1, int(e))
        while r < world and acc >= total * r / world:
            bounds.append(k + 1)
            r += 1
    while len(bounds) < world:
        bounds.append(len(edge_counts))
    bounds.append(len(edge_counts))
    return range(bounds[rank], bounds[rank + 1])


def predict(net, objective, dataset, batch_size: int, hidden=None, device=None,
            workers: int = 0):
    """Predictions and targets of ``net`` on every graph of ``dataset`` (in order), no grad, in
    this process.

    ``device``: where batches run (default: where ``net`` is); ``workers``: DataLoader worker
    processes. Returns ``(pred, y, net_ids)`` as stacked CPU tensors (one copy at the end).
    """
    from torch_geometric.loader import DataLoader

    if device is None:
        device = next(net.parameters()).device
    preds, ys, ids = [], [], []
    net.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                num_workers=workers):
            batch, st = prepare(batch, device, non_blocking=True)
            preds.append(objective.predict(net, batch, hidden, st).float())
            ys.append(batch.y)
            ids.append(batch.net_id)
    return torch.cat(preds).cpu(), torch.cat(ys).cpu(), torch.cat(ids).cpu()


def predict_all(ctx: Context, net, objective, dataset, batch_size: int, hidden=None,
                edge_counts: Sequence[int] | None = None, workers: int = 0):
    """Predictions, targets and ids on every item of ``dataset`` in order, like
    :func:`predict`, with the work split across the ranks and the results gathered on every
    rank. Returns CPU tensors."""
    from torch.utils.data import Subset

    if not ctx.distributed:
        return predict(net, objective, dataset, batch_size, hidden, device=ctx.device,
                       workers=workers)
    counts = edge_counts if edge_counts is not None else [1] * len(dataset)
    mine = rank_slice(counts, ctx.rank, ctx.world_size)
    local = predict(net, objective, Subset(dataset, list(mine)), batch_size, hidden,
                    device=ctx.device, workers=workers) if len(mine) else None
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, local)
    parts = [p for p in parts if p is not None]
    return tuple(torch.cat([p[k] for p in parts]) for k in range(3))


# -- the hot loop -------------------------------------------------------------------------------

def wrap_model(ctx: Context, net: torch.nn.Module) -> torch.nn.Module:
    """``net`` on the context's device, wrapped in DistributedDataParallel when distributed."""
    net = net.to(ctx.device)
    if not ctx.distributed:
        return net
    from torch.nn.parallel import DistributedDataParallel as DDP

    # device_ids=None: inputs (PyG batches) are moved to the device by the loop, not by DDP.
    # find_unused_parameters: a batch without (say) attention edges leaves their encoders unused.
    return _GraphOutputs(DDP(_ExposeGraphOutputs(net), device_ids=None,
                             find_unused_parameters=True))


class _ExposeGraphOutputs(torch.nn.Module):
    """Returns ``(output, its value tensors)`` for a weight head's graph batch.

    DDP finds the parameters a step did not use by walking the autograd graph back from the
    tensors it finds in the output, and it looks only inside tensors, lists, tuples, dicts and
    dataclasses: a graph batch hides its tensors, so every parameter looked unused, was marked
    ready at the end of the forward pass and again by its gradient hook ("Expected to mark a
    variable ready only once", ``--task inr-edit`` under torchrun)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        out = self.net(*args, **kwargs)
        if torch.is_tensor(out):
            return (out,)
        graphs = out if isinstance(out, list) else [out]  # a list: output channel expansion
        return (out, *[t for g in graphs for t in (g.edge_value, g.node_value)])


class _GraphOutputs(torch.nn.Module):
    """The DDP-wrapped model with the metanet's own output (undoes :class:`_ExposeGraphOutputs`)."""

    def __init__(self, ddp: torch.nn.Module):
        super().__init__()
        self.ddp = ddp
        # what the task reads off the metanet to feed it (probe features per neuron)
        self.probes = getattr(ddp.module.net, "probes", 0)

    def forward(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)[0]


def global_batch(ctx: Context, pred: Tensor, y: Tensor, step: StepPlan) -> tuple[Tensor, Tensor]:
    """The predictions and targets of the whole global batch of ``step``, every rank's in rank
    order: this rank's predictions keep their gradient, the others' are detached copies (one
    all-gather of a few numbers; no host synchronisation). One process: ``pred, y``."""
    if not ctx.distributed:
        return pred, y
    width = max(step.shares)
    mine = torch.zeros(2, width, dtype=pred.dtype, device=pred.device)
    mine[0, : step.local] = pred.detach()[: step.local]
    mine[1, : step.local] = y[: step.local].to(pred.dtype)
    rows = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(rows, mine)
    preds = [pred[:n] if r == ctx.rank else rows[r][0, :n] for r, n in enumerate(step.shares)]
    return torch.cat(preds), torch.cat([rows[r][1, :n] for r, n in enumerate(step.shares)])


def run_epoch(ctx: Context, model, objective, opt, sched, loader, plan, hidden=None,
              clip: float = 0.0, bar=None, after_step=None, transform=None,
              precision: str = "fp32") -> dict:
    """One training epoch over ``loader`` (this rank's batches) following ``plan``.

    No host synchronisation per step: the loss, skipped steps and non-finite losses are summed on
    the device and all-reduced once at the end. Returns ``{"loss_sum", "count", "skipped",
    "bad_loss"}`` as Python numbers over all ranks (``skipped``: steps whose gradient was not
    finite and were not applied; identical on every rank because gradients are all-reduced).
    ``after_step()`` is called after every optimiser step (the weights' moving average);
    ``transform(batch, structure)`` returns the batch the model reads (training augmentation).
    ``precision``: the forward passes' (:mod:`paramgraph.tasks.precision`; the loss is float32).
    """
    dev = ctx.device
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(g.get("fused") for g in opt.param_groups)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    skipped = torch.zeros((), dtype=torch.float64, device=dev)
    bad_loss = torch.zeros((), dtype=torch.float64, device=dev)
    count = 0
    for batch, step in zip(loader, plan, strict=True):
        local_n = step.local
        batch, st = prepare(batch, dev, non_blocking=True)
        if transform is not None:
            batch = transform(batch, st)
        with training_autocast(precision, dev):
            pred = objective.predict(model, batch, hidden, st)
        # the loss in float32 at least (an autocast forward's output is bfloat16)
        pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
        loss = objective.loss(pred, batch.y)
        weight = local_n / step.graphs * ctx.world_size  # 1.0 in one process
        total = loss * weight if weight != 1.0 else loss
        if objective.rank_weight:  # over the global batch, the same on every rank
            rank_term = objective.rank_term(*global_batch(ctx, pred, batch.y, step))
            total = total + (rank_term * ctx.world_size if ctx.distributed else rank_term)
            loss = loss + rank_term
        opt.zero_grad(set_to_none=True)
        total.backward()
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=dev)
        bad = ~torch.isfinite(norm)
        if fused:  # the fused AdamW skips the whole update (and its step count) on found_inf
            if clip:
                torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
            opt.found_inf = bad.float()
            opt.step()
        elif not bool(bad):  # an unfused optimiser (old resume state): one sync per step
            if clip:
                torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
            opt.step()
        skipped += bad
        sched.step()
        if after_step is not None:
            after_step()
        detached = loss.detach().double()
        if local_n:
            loss_sum += detached * local_n
            bad_loss += ~torch.isfinite(detached)
        count += local_n
        if bar is not None:
            bar.update(1)
    totals = torch.stack([loss_sum, bad_loss, torch.tensor(float(count), dtype=torch.float64,
                                                           device=dev)])
    totals = all_sum(ctx, totals).tolist()  # the epoch's one synchronisation
    return {"loss_sum": totals[0], "bad_loss": int(totals[1]), "count": int(totals[2]),
            "skipped": int(skipped.item())}


def param_digest(net: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``net`` (state_dict order, CPU bytes): equal
    digests on every rank show that the replicas are identical."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()
