"""Training, evaluating and plotting metanet runs.

A run directory holds::

    config.json          the TrainConfig, the zoo's fingerprint and the metanet's arguments
    metrics.csv/.json    one row per epoch: lr, train loss, validation scores, seconds
    best.safetensors     the metanet's weights at the best validation score
    best.json            that epoch and its validation scores
    resume.pt            model, optimiser, scheduler and history after the last finished epoch
                         (tensors and plain containers only: read with weights_only=True)
    eval-<split>.json    written by :func:`evaluate_run`: scores and predictions on a split
    *.png                written by :func:`plot_run`

Training: AdamW, linear warm-up then cosine decay (per step), gradient-norm clipping, one
progress bar. A step whose gradients are not finite is skipped (not applied) and counted in the
epoch's ``skipped_steps``; a non-finite loss stops the run with an error. Determinism: the metanet is initialised from ``seed``, the order of the training
graphs in epoch ``e`` is a permutation drawn from ``(seed, e)`` and the global RNG is re-seeded
from ``(seed, e)`` at the start of every epoch, so a run stopped after any epoch and resumed ends
with the same metrics as an uninterrupted one (on the same number of threads).

Devices and processes: ``device`` (default CUDA when available, else CPU) holds the metanet and
every batch. Under ``torchrun`` the same call trains data-parallel (DistributedDataParallel, the
global batch split across ranks by edge count, metrics over all ranks, files written by rank 0):
see :mod:`paramgraph.tasks.distributed`. ``batch_size`` is always the global batch, so N processes give the
same run as one.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from paramgraph.atomic import atomic_path
from paramgraph.memory import gc_frozen, retain_freed_heap
from paramgraph.models.defaults import HIDDEN, LAYERS

from . import distributed
from .augment import augment
from .averaging import WeightAverage
from .data import ZooDataset, load_graphs
from .distributed import predict
from .errors import RunError, TaskError
from .io import (atomic_save_safetensors, atomic_torch_save, atomic_write_json, atomic_write_text,
                 load_safetensors, read_json)
from .objectives import Objective, get_objective
from .precision import check_precision, emulated
from .threads import threads as thread_count
from .zoo import Zoo
from .zoo_kinds import SPLIT_SETS

CONFIG = "config.json"
RESUME = "resume.pt"
BEST = "best.safetensors"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as the run's ``config.json``)."""

    task: str
    zoo: str
    mode: str = "quasi"
    target: str | None = None  # the zoo column a regression/classification task predicts
    hidden: int = HIDDEN
    layers: int = LAYERS
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    # None: the task's default (Objective.train_defaults, else models.defaults.TRAINING)
    weight_decay: float | None = None
    warmup: float = 0.05  # fraction of all steps spent warming up linearly
    min_lr: float = 0.01  # cosine decays to this fraction of lr
    clip: float = 1.0
    seed: int = 0
    splits: str = "id"  # "id": train/val/test; "ood": ood_train/ood_val/ood_test (hetero)
    eval_batch_size: int = 64
    max_train: int | None = None  # use only the first N training networks (quick runs)
    ema: float | None = None  # decay of the weights' moving average that is evaluated and kept; 0: off
    rank_loss: float | None = None  # weight of the pairwise rank term (tasks.losses); 0: off
    augment: float = 0.0  # R > 1: move training networks by random scales in [1/R, R] and signs
    precision: str = "fp32"  # of the training forward passes (tasks.precision); evaluation: fp32
    model_kwargs: dict = field(default_factory=dict)

    def split(self, which: str) -> str:
        """The zoo split name of ``which`` (train/val/test) under this run's split set."""
        return SPLIT_SETS[self.splits][which]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RunError(f"run config has unknown fields: {', '.join(sorted(unknown))}")
        # a run from before the moving average, the rank term and the precision existed trained
        # without the first two, in float32
        return cls(**{"ema": 0.0, "rank_loss": 0.0, "precision": "fp32", **d})


# -- helpers --------------------------------------------------------------------------------------

def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def with_task_defaults(cfg: TrainConfig, objective: Objective) -> TrainConfig:
    """``cfg`` with the task's defaults filled in: every training setting of
    ``models.defaults.TRAINING`` it leaves at ``None``, and every metanet option it does not set
    (a run's config.json then names every value it trained with)."""
    train = objective.training_settings(cfg.mode)
    unset = {name: value for name, value in train.items() if getattr(cfg, name) is None}
    return replace(cfg, **unset, model_kwargs={**objective.model_defaults(cfg.mode),
                                               **cfg.model_kwargs})


def build_metanet(cfg: TrainConfig, objective: Objective):
    """The metanet of a run (freshly initialised from the global RNG)."""
    from paramgraph import models

    kwargs = dict(mode=cfg.mode, task=objective.head, hidden=cfg.hidden, layers=cfg.layers,
                  **cfg.model_kwargs)
    if objective.head == "invariant":
        kwargs["out_dim"] = objective.out_dim
    if kwargs.get("prior"):
        if objective.prior_link is None:
            raise TaskError(f"--prior is made for tasks that predict one number per network "
                            f"(generalization); task '{objective.name}' has none")
        kwargs["prior_link"] = objective.prior_link
    try:
        return models.MetaNet(**kwargs)
    except (ValueError, TypeError) as err:
        raise TaskError(f"cannot build the metanet: {err}") from None


def lr_factor(step: int, total: int, warmup: float, min_lr: float) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``: linear warm-up over the
    first ``warmup`` fraction of the steps, then cosine decay to ``min_lr``."""
    w = max(1, int(round(warmup * total)))
    if step < w:
        return (step + 1) / w
    t = min(1.0, (step - w) / max(1, total - w))
    return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


class RunData:
    """The zoo, its graphs and the three split data sets of a run. ``objective``: the run's task
    as it has learnt from the zoo's training targets (:meth:`Objective.fitted`: classes, target
    scale); a run read back passes its saved, already fitted task."""

    def __init__(self, cfg: TrainConfig, objective: Objective, progress: bool, ctx=None,
                 rebuild_cache: bool = False):
        self.zoo = Zoo(cfg.zoo)
        objective.check_zoo(self.zoo)
        objective = objective.fitted(self.zoo, self.zoo.split(cfg.split("train")))
        self.objective = objective
        ctx = ctx or distributed.Context()
        # rank 0 builds (or repairs) the graph cache, then the other ranks open it
        graphs = distributed.rank0_first(ctx, lambda: load_graphs(
            self.zoo, progress and ctx.is_main, rebuild=rebuild_cache and ctx.is_main))
        self.sets = {}
        for which in ("train", "val", "test"):
            self.sets[which] = ZooDataset(self.zoo, cfg.split(which), objective, graphs=graphs)
            if len(self.sets[which]) == 0:
                raise TaskError(f"zoo '{self.zoo.root}' split '{cfg.split(which)}' is empty; "
                                "make (or import) a larger zoo")
        if cfg.max_train:
            ds = self.sets["train"]
            ds.ids = ds.ids[: cfg.max_train]
        self.hidden = objective.hidden(self.zoo)
        self.prior_fit: dict | None = None  # the tree prior's cross-fit summary, if any


def _write_metrics(run: Path, history: list[dict]) -> None:
    atomic_write_json(run / "metrics.json", history)
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in history:
        w.writerow(row)
    atomic_write_text(run / "metrics.csv", buf.getvalue())


# -- training -------------------------------------------------------------------------------------

def train(cfg: TrainConfig, out: str | os.PathLike, *, resume: bool = False,
          threads: int | None = None, progress: bool = True,
          stop_after: int | None = None, device: str | None = None, workers: int = 0,
          rebuild_cache: bool = False) -> dict:
    """Train a metanet for ``cfg`` into the run directory ``out``.

    ``resume``: continue the run in ``out`` from its last finished epoch (its saved config is
    used; ``cfg`` may be ``None``). ``threads``: torch threads while training. ``stop_after``:
    finish at most this many epochs in this call, leaving the run resumable. ``device``: cpu,
    cuda, cuda:N (default: cuda if available). ``workers``: DataLoader worker processes.
    ``rebuild_cache``: check the zoo's graph cache and rebuild its corrupt shards first. Started
    by torchrun, the call trains data-parallel (see :mod:`paramgraph.tasks.distributed`).

    Returns a summary dict: ``run``, ``epochs_done``, ``complete``, ``best_epoch``, ``best``
    (validation scores), ``seconds`` (training time summed over all calls), ``world_size``,
    ``device``, ``graphs_per_s`` (training graphs per second of this call's epochs) and
    ``param_sha256`` (a digest of this process's final metanet). Raises
    :class:`RunError` for a run directory that exists without ``resume`` (or is missing with
    it), or whose zoo has changed; :class:`TaskError`/:class:`~paramgraph.tasks.errors.ZooError` for a bad
    task, mode or zoo.
    """
    run = Path(out)
    if resume:
        if not (run / CONFIG).is_file():
            raise RunError(f"cannot resume '{run}': it has no {CONFIG} (not a run directory)")
        saved = read_json(run / CONFIG, "run config")
        cfg = TrainConfig.from_dict(saved["config"])
    else:
        if cfg is None:
            raise RunError("a new run needs a configuration")
        if (run / CONFIG).exists():
            raise RunError(f"'{run}' already holds a run; pass --resume to continue it or "
                           "choose another --out")
    objective = get_objective(cfg.task, cfg.target)
    from paramgraph.models import MODES

    if not resume:  # the task's defaults, written into the run's config
        cfg = with_task_defaults(cfg, objective)
    objective = objective.with_rank_loss(cfg.rank_loss)

    if cfg.mode not in MODES:
        raise TaskError(f"unknown mode '{cfg.mode}' (known: {', '.join(MODES)})")
    if cfg.splits not in SPLIT_SETS:
        raise TaskError(f"unknown split set '{cfg.splits}' (known: {', '.join(SPLIT_SETS)})")
    if workers < 0:
        raise TaskError(f"--workers must be at least 0, got {workers}")
    check_precision(cfg.precision)
    if cfg.augment and cfg.augment <= 1:
        raise TaskError(f"--augment R moves scales within [1/R, R] and needs R > 1 (or 0 for "
                        f"none), got {cfg.augment:g}")
    retain_freed_heap()  # every step frees and reallocates the same edge-sized tensors
    with thread_count(threads), distributed.session(device) as ctx, \
            distributed.failures_shared(ctx):  # a failing rank ends the run on every rank
        return _train(cfg, objective, run, resume, progress and ctx.is_main, stop_after,
                      threads, ctx, workers, rebuild_cache)


@dataclass
class _State:
    """What a run carries from epoch to epoch (and saves in ``resume.pt``)."""

    net: torch.nn.Module  # the module itself (unwrapped): saved and evaluated
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    start_epoch: int = 1
    average: WeightAverage | None = None  # cfg.ema > 0: the weights that are evaluated and kept

    @property
    def kept(self) -> torch.nn.Module:
        """The network that is validated and saved as the best: the average where there is one."""
        return self.average.net if self.average is not None else self.net


def _train(cfg: TrainConfig, objective: Objective, run: Path, resume: bool, progress: bool,
           stop_after: int | None, threads: int | None, ctx, workers: int,
           rebuild_cache: bool) -> dict:
    from tqdm import tqdm

    # every rank has checked the run directory (in train) before rank 0, past this cache
    # barrier, writes into it
    data = RunData(cfg, objective, progress, ctx, rebuild_cache)
    objective = data.objective  # with what it learnt from the zoo (classes, target scale)
    state = _fresh_state(cfg, objective, data, ctx)
    if resume:
        _load_resume_state(run, cfg, data, state, ctx)
    elif ctx.is_main:
        _write_config(run, cfg, objective, data, state.net, threads)
    reference = _reference_scores(objective, state.history, data)
    last = cfg.epochs if stop_after is None else min(cfg.epochs,
                                                     state.start_epoch - 1 + stop_after)
    for which in ("train", "val"):  # the gauge's section once per graph, not per step
        data.sets[which].attach_gauge_inputs(state.net)  # (test: evaluate_run's own)
    model = distributed.wrap_model(ctx, state.net)
    if emulated(cfg.precision, ctx.device) and ctx.is_main:
        warnings.warn(f"--precision bf16 on {ctx.device}, which has no native bfloat16 matrix "
                      "products: they are emulated, slower than fp32", RuntimeWarning)
    train_edges, val_edges = data.sets["train"].edge_counts(), data.sets["val"].edge_counts()
    trained, train_seconds = 0, 0.0
    bar = tqdm(total=(last - state.start_epoch + 1) * state.steps_per_epoch, unit="step",
               desc=f"{cfg.task}/{cfg.mode}", disable=not progress)
    with gc_frozen():  # the loaded data sets: out of every full collection's scan
        for epoch in range(state.start_epoch, last + 1):
            t0 = time.time()
            sums, seconds = _train_epoch(cfg, objective, data, state, model, ctx, epoch,
                                         train_edges, workers, bar)
            trained, train_seconds = trained + sums["count"], train_seconds + seconds
            val = _validate(cfg, objective, data, state, ctx, val_edges, workers)
            row = _epoch_row(epoch, state, sums, seconds, val, reference)
            row["seconds"] = time.time() - t0
            _keep_epoch(run, objective, state, row, val, ctx)
            bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}",
                            **{f"val_{objective.select}": f"{val[objective.select]:.4f}"})
    bar.close()
    distributed.barrier(ctx)  # rank 0's files are complete when any rank returns
    return _summary(run, cfg, state, ctx, trained, train_seconds)


def _fresh_state(cfg: TrainConfig, objective: Objective, data: RunData, ctx) -> _State:
    """A newly initialised metanet (from ``cfg.seed``) with its optimiser and schedule."""
    torch.manual_seed(cfg.seed)
    net = build_metanet(cfg, objective).to(ctx.device)
    if net.prior is not None:  # before the moving average copies the net
        _fit_prior(cfg, data, net, ctx)
    # fused: skips a step with a non-finite gradient on the device (found_inf), no host sync
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)
    steps_per_epoch = math.ceil(len(data.sets["train"]) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, cfg.warmup, cfg.min_lr))
    average = WeightAverage(net, cfg.ema) if cfg.ema else None
    return _State(net, opt, sched, steps_per_epoch, average=average)


def _fit_prior(cfg: TrainConfig, data: RunData, net, ctx) -> None:
    """Cross-fit the metanet's tree prior on the training split and give every training graph
    its out-of-fold prediction (:mod:`paramgraph.tasks.prior`; deterministic in ``cfg.seed``,
    so a resumed run refits the same trees its checkpoint holds)."""
    from .prior import fit_prior

    train_set = data.sets["train"]
    ids = train_set.ids
    y = data.objective.targets(data.zoo).numpy()[ids]
    fit = fit_prior(net, train_set, y, [data.zoo.rows[i]["run"] for i in ids],
                    _seed(cfg.seed, 3), ctx.device, cfg.eval_batch_size)
    train_set.prior_offsets = dict(zip(ids, fit.offsets.tolist(), strict=True))
    data.prior_fit = {"out_of_fold": data.objective.metrics(fit.offsets, y),
                      "seconds": round(fit.seconds, 2)}


def _load_resume_state(run: Path, cfg: TrainConfig, data: RunData, state: _State, ctx) -> None:
    """Continue ``state`` from the run's ``resume.pt`` (if an epoch has finished); raises
    :class:`RunError` if the zoo has changed or the file is unreadable."""
    saved = read_json(run / CONFIG, "run config")
    if saved.get("zoo_fingerprint") != data.zoo.fingerprint():
        raise RunError(f"cannot resume '{run}': zoo '{cfg.zoo}' has changed since the run "
                       "started")
    if not (run / RESUME).is_file():
        return
    try:
        saved = torch.load(run / RESUME, weights_only=True, map_location=ctx.device)
        state.net.load_state_dict(saved["model"])
        state.opt.load_state_dict(saved["optimizer"])
        state.sched.load_state_dict(saved["scheduler"])
        if state.average is not None:
            state.average.load_state_dict(saved["average"])
    except Exception as err:
        raise RunError(f"cannot resume '{run}': {run / RESUME} is unreadable ({err})") from None
    state.history, state.best = saved["history"], saved["best"]
    state.start_epoch = int(saved["epoch"]) + 1


def _write_config(run: Path, cfg: TrainConfig, objective: Objective, data: RunData, net,
                  threads: int | None) -> None:
    """Write the new run's ``config.json`` (the config, the zoo's fingerprint, sizes)."""
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / CONFIG, {
        "config": asdict(cfg), "zoo_fingerprint": data.zoo.fingerprint(),
        "zoo_kind": data.zoo.kind, "objective": objective.name, "siren_hidden": data.hidden,
        "objective_state": objective.state(),
        "metanet_parameters": sum(p.numel() for p in net.parameters()),
        "train_size": len(data.sets["train"]), "val_size": len(data.sets["val"]),
        "test_size": len(data.sets["test"]), "threads": threads,
        **({"prior_fit": data.prior_fit} if data.prior_fit is not None else {}),
    })


def _reference_scores(objective: Objective, history: list[dict], data: RunData) -> dict:
    """The objective's reference scores on the validation set (inr-edit: the error of leaving
    the SIRENs unedited) as ``val_*`` columns: computed once per run, then read back from the
    first epoch's row when the run resumes."""
    if history:
        return {f"val_{k}": history[0][f"val_{k}"] for k in objective.references}
    scores = objective.reference_scores(data.sets["val"], data.hidden)
    return {f"val_{k}": v for k, v in scores.items()}


def _train_epoch(cfg: TrainConfig, objective: Objective, data: RunData, state: _State, model, ctx,
                 epoch: int, edges: list[int], workers: int, bar) -> tuple[dict, float]:
    """Train one epoch (seeded from ``(seed, epoch)``); returns the sums of
    :func:`~paramgraph.tasks.distributed.run_epoch` and the seconds the steps took. Raises
    :class:`TaskError` if a loss was not finite."""
    train_set = data.sets["train"]
    torch.manual_seed(_seed(cfg.seed, epoch, 1))
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(
        _seed(cfg.seed, epoch, 2)))
    model.train()
    # this rank's part of every global batch (balanced by edges), one sync per epoch; a
    # step whose gradient is not finite is skipped (not applied) and counted
    loader, plan = distributed.epoch_loader(ctx, train_set, order.tolist(), cfg.batch_size,
                                            edges, workers)
    t1 = time.time()
    after_step = (lambda: state.average.update(state.net)) if state.average is not None else None
    transform = partial(augment, scale_range=cfg.augment) if cfg.augment else None
    sums = distributed.run_epoch(ctx, model, objective, state.opt, state.sched, loader, plan,
                                 data.hidden, cfg.clip, bar, after_step, transform,
                                 cfg.precision)
    seconds = time.time() - t1
    if sums["bad_loss"]:
        raise TaskError(f"training diverged at epoch {epoch} (non-finite loss in "
                        f"{sums['bad_loss']} batches); lower --lr")
    return sums, seconds


def _validate(cfg: TrainConfig, objective: Objective, data: RunData, state: _State, ctx,
              edges: list[int], workers: int) -> dict[str, float]:
    """The metanet's validation scores, on the predictions of every rank gathered."""
    pred, y, _ = distributed.predict_all(ctx, state.kept, objective, data.sets["val"],
                                         cfg.eval_batch_size, data.hidden, edges, workers)
    return objective.metrics(pred, y)


def _epoch_row(epoch: int, state: _State, sums: dict, seconds: float, val: dict,
               reference: dict) -> dict:
    """The epoch's row of ``metrics.csv`` (without ``seconds``); raises :class:`TaskError` if
    every step was skipped."""
    if sums["skipped"] == state.steps_per_epoch:
        raise TaskError(f"every step of epoch {epoch} had non-finite gradients; lower --lr")
    return {"epoch": epoch, "lr": state.opt.param_groups[0]["lr"],
            "train_loss": sums["loss_sum"] / sums["count"], "skipped_steps": sums["skipped"],
            "graphs_per_s": sums["count"] / max(seconds, 1e-9),
            **{f"val_{k}": v for k, v in val.items()}, **reference}


def _keep_epoch(run: Path, objective: Objective, state: _State, row: dict, val: dict,
                ctx) -> None:
    """Add the epoch to the history, keep it as the best if it is, and (rank 0) write the
    metrics, the best checkpoint and ``resume.pt``."""
    state.history.append(row)
    epoch, select = row["epoch"], objective.select
    improved = state.best is None or objective.improves(val[select], state.best["val"][select])
    if improved:
        state.best = {"epoch": epoch, "val": val}
    if not ctx.is_main:  # every rank holds the same history, weights and best; rank 0 writes
        return
    if improved:
        atomic_save_safetensors(run / BEST, state.kept.state_dict(),
                                metadata={"epoch": str(epoch)})
        atomic_write_json(run / "best.json", state.best)
    _write_metrics(run, state.history)
    atomic_torch_save({"model": state.net.state_dict(), "optimizer": state.opt.state_dict(),
                       "scheduler": state.sched.state_dict(), "epoch": epoch,
                       "history": state.history, "best": state.best,
                       **({"average": state.average.state_dict()} if state.average else {})},
                      run / RESUME)


def _summary(run: Path, cfg: TrainConfig, state: _State, ctx, trained: int,
             train_seconds: float) -> dict:
    """The summary dict that :func:`train` returns."""
    history, best = state.history, state.best
    done = history[-1]["epoch"] if history else 0
    return {"run": str(run), "epochs_done": done, "complete": done >= cfg.epochs,
            "best_epoch": best["epoch"] if best else None, "best": best["val"] if best else None,
            "world_size": ctx.world_size, "device": str(ctx.device),
            "graphs_per_s": trained / train_seconds if train_seconds else None,
            "param_sha256": distributed.param_digest(state.net),
            "seconds": sum(h["seconds"] for h in history)}


# -- loading, evaluating, plotting ----------------------------------------------------------------

def load_run(run: str | os.PathLike):
    """The saved config and the best metanet of a run: returns ``(cfg, objective, net, info)``
    where ``info`` is the run's ``config.json``. Raises :class:`RunError` for a missing or
    corrupt run or checkpoint."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"run directory '{run}' does not exist")
    try:
        info = read_json(run / CONFIG, "run config")
    except TaskError as err:
        raise RunError(str(err)) from None
    cfg = TrainConfig.from_dict(info["config"])
    objective = run_objective(cfg, info)
    net = build_metanet(cfg, objective)
    try:
        state = load_safetensors(run / BEST, "metanet checkpoint")
    except TaskError as err:
        raise RunError(f"{err} (has the run finished an epoch?)") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise RunError(f"metanet checkpoint '{run / BEST}' does not fit the run's config: "
                       f"{str(err).splitlines()[0]}") from None
    return cfg, objective, net.eval(), info


def run_objective(cfg: TrainConfig, info: dict) -> Objective:
    """The task of a run as it was trained (configured with its column, restored with what it
    learnt from the zoo), from the run's config alone."""
    return get_objective(cfg.task, cfg.target).restored(info.get("objective_state") or {})


def evaluate_run(run: str | os.PathLike, split: str = "test", threads: int | None = None,
                 progress: bool = False, zoo: str | os.PathLike | None = None) -> dict:
    """Score a run's best metanet on ``split`` (train/val/test of the run's split set).

    ``zoo``: score it on that zoo's ``split`` instead of its own (a metanet trained on one zoo
    applied to networks from another, e.g. the same networks moved along their orbits by
    ``scripts/move_zoo.py``); the file is then ``RUN/eval-<split>-on-<zoo dir name>.json``.

    Writes ``RUN/eval-<split>.json`` (scores, predictions, targets, network ids, and the tree
    prior's own predictions ``prior_pred`` where the metanet has one) and returns
    ``{"split", "zoo_split", "metrics", "n", "seconds"}``, plus ``prior_only`` (the scores of
    its tree prior alone) for a metanet with a prior. The scores include the objective's
    reference scores (inr-edit: ``identity_mse``, the error of leaving the SIREN unedited).
    Raises :class:`RunError`/:class:`TaskError` for a bad run or split.
    """
    if split not in ("train", "val", "test"):
        raise TaskError(f"unknown split '{split}' (use train, val or test)")
    cfg, objective, net, _ = load_run(run)
    name = f"eval-{split}.json"
    if zoo is not None:
        cfg = replace(cfg, zoo=str(zoo))
        name = f"eval-{split}-on-{Path(zoo).resolve().name}.json"
    retain_freed_heap()
    with thread_count(threads):
        data = RunData(cfg, objective, progress)
        t0 = time.time()
        data.sets[split].attach_gauge_inputs(net)
        pred, y, ids = predict(net, objective, data.sets[split], cfg.eval_batch_size, data.hidden)
        metrics = objective.metrics(pred, y)
        metrics.update(objective.reference_scores(data.sets[split], data.hidden))
        seconds = time.time() - t0
        result = {"split": split, "zoo_split": cfg.split(split), "metrics": metrics,
                  "n": int(len(y)), "seconds": seconds}
        if zoo is not None:
            result["zoo"] = str(zoo)
        if getattr(net, "prior", None) is not None:  # what the trees alone score
            from .prior import prior_predictions

            # inside the thread limit too: a forked worker (make demo) must not start a
            # thread team the parent's OpenMP state cannot serve
            alone = prior_predictions(net.prior, data.sets[split], cfg.eval_batch_size)
            result["prior_only"] = objective.metrics(alone, y.numpy())
    store = dict(result, net_id=ids.tolist(), pred=pred.tolist(), true=y.tolist())
    if "prior_only" in result:  # per network, to see what the GNN changed (scripts/probe_prior.py)
        store["prior_pred"] = alone.tolist()
    atomic_write_json(Path(run) / name, store, indent=None)
    return result


def plot_run(run: str | os.PathLike, split: str = "test") -> list[Path]:
    """Draw the run's learning curves (``curves.png``) and, for a task with a
    ``scatter_label`` (generalisation), predicted against true accuracy on ``split``
    (``scatter-<split>.png``, evaluated first if needed). Returns the written paths. Raises
    :class:`RunError` if the run has no metrics yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    try:
        history = read_json(run / "metrics.json", "run metrics")
    except TaskError as err:
        raise RunError(f"{err} (has the run finished an epoch?)") from None
    info = read_json(run / CONFIG, "run config")
    cfg = TrainConfig.from_dict(info["config"])
    task = cfg.task if cfg.target is None else f"{cfg.task} of {cfg.target}"
    epochs = [h["epoch"] for h in history]
    val_keys = [k for k in history[0] if k.startswith("val_")]
    fig, axes = plt.subplots(1, 1 + len(val_keys), figsize=(4 * (1 + len(val_keys)), 3.2))
    axes = np.atleast_1d(axes)
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    axes[0].set(title="train loss", xlabel="epoch")
    axes[0].set_yscale("log")
    for ax, key in zip(axes[1:], val_keys):
        ax.plot(epochs, [h[key] for h in history], marker="o")
        ax.set(title=key.replace("_", " "), xlabel="epoch")
    fig.suptitle(f"{task} / {info['config']['mode']}")
    fig.tight_layout()
    out = [run / "curves.png"]
    save_figure(fig, out[0])
    plt.close(fig)
    objective = run_objective(cfg, info)
    if objective.scatter_label is not None:
        path = run / f"eval-{split}.json"
        if not path.is_file():
            evaluate_run(run, split)
        ev = read_json(path, "evaluation")
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(ev["true"], ev["pred"], s=8, alpha=0.6)
        lo, hi = _scatter_range(objective, ev)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
        m = ev["metrics"]
        ax.set(xlabel=objective.scatter_label, ylabel="predicted", xlim=(lo, hi),
               ylim=(lo, hi), title=f"{info['config']['mode']}: {objective.headline(m)}")
        fig.tight_layout()
        out.append(run / f"scatter-{split}.png")
        save_figure(fig, out[-1])
        plt.close(fig)
    return out


def _scatter_range(objective: Objective, ev: dict) -> tuple[float, float]:
    """The axes' range of a predicted-against-true plot: [0, 1] for accuracies, else the data's
    range with a margin."""
    if objective.name == "generalization":
        return 0.0, 1.02
    values = [float(v) for v in ev["true"] + ev["pred"]]
    lo, hi = min(values), max(values)
    pad = 0.04 * (hi - lo) or 1.0
    return lo - pad, hi + pad


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
