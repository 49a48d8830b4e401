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
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from paramgraph.atomic import atomic_path
from paramgraph.models import prepare
from paramgraph.models.defaults import HIDDEN, LAYERS

from .errors import RunError, TaskError
from .io import (atomic_save_safetensors, atomic_torch_save, atomic_write_json, atomic_write_text,
                 load_safetensors, read_json)
from .metrics import is_better
from .objectives import Objective, get_objective, identity_edit_mse, siren_hidden
from .threads import threads as thread_count

CONFIG = "config.json"
RESUME = "resume.pt"
BEST = "best.safetensors"
SPLIT_SETS = ("id", "ood")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as the run's ``config.json``)."""

    task: str
    zoo: str
    mode: str = "quasi"
    hidden: int = HIDDEN
    layers: int = LAYERS
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup: float = 0.05  # fraction of all steps spent warming up linearly
    min_lr: float = 0.01  # cosine decays to this fraction of lr
    clip: float = 1.0
    seed: int = 0
    splits: str = "id"  # "id": train/val/test; "ood": ood_train/ood_val/ood_test (hetero)
    eval_batch_size: int = 64
    max_train: int | None = None  # use only the first N training networks (quick runs)
    model_kwargs: dict = field(default_factory=dict)

    def split(self, which: str) -> str:
        """The zoo split name of ``which`` (train/val/test) under this run's split set."""
        return which if self.splits == "id" else f"ood_{which}"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RunError(f"run config has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**d)


# -- helpers --------------------------------------------------------------------------------------

def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def build_metanet(cfg: TrainConfig, objective: Objective):
    """The metanet of a run (freshly initialised from the global RNG)."""
    from paramgraph import models

    kwargs = dict(mode=cfg.mode, task=objective.head, hidden=cfg.hidden, layers=cfg.layers,
                  **cfg.model_kwargs)
    if objective.head == "invariant":
        kwargs["out_dim"] = objective.out_dim
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


class _Data:
    """The zoo, its graphs and the three split data sets of a run."""

    def __init__(self, cfg: TrainConfig, objective: Objective, progress: bool, ctx=None,
                 rebuild_cache: bool = False):
        from .data import ZooDataset, load_graphs
        from .distributed import Context, rank0_first
        from .zoo import Zoo

        self.zoo = Zoo(cfg.zoo)
        objective.check_zoo(self.zoo)
        ctx = ctx or Context()
        # rank 0 builds (or repairs) the graph cache, then the other ranks open it
        graphs = rank0_first(ctx, lambda: load_graphs(
            self.zoo, progress and ctx.is_main, rebuild=rebuild_cache and ctx.is_main))
        self.sets = {}
        for which in ("train", "val", "test"):
            self.sets[which] = ZooDataset(self.zoo, cfg.split(which), objective.target,
                                          graphs=graphs)
            if len(self.sets[which]) == 0:
                raise TaskError(f"zoo '{self.zoo.root}' split '{cfg.split(which)}' is empty; "
                                "make a larger zoo")
        if cfg.max_train:
            ds = self.sets["train"]
            ds.ids = ds.ids[: cfg.max_train]
        self.hidden = siren_hidden(self.zoo) if objective.name == "inr-edit" else None


def predict(net, objective: Objective, dataset, batch_size: int, hidden=None, device=None,
            workers: int = 0):
    """Predictions and targets of ``net`` on every graph of ``dataset`` (in order), no grad.

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
    objective = get_objective(cfg.task)
    from paramgraph.models import MODES

    if cfg.mode not in MODES:
        raise TaskError(f"unknown mode '{cfg.mode}' (known: {', '.join(MODES)})")
    if cfg.splits not in SPLIT_SETS:
        raise TaskError(f"unknown split set '{cfg.splits}' (known: {', '.join(SPLIT_SETS)})")
    from . import distributed

    if workers < 0:
        raise TaskError(f"--workers must be at least 0, got {workers}")
    with thread_count(threads), distributed.session(device) as ctx:
        return _train(cfg, objective, run, resume, progress and ctx.is_main, stop_after,
                      threads, ctx, workers, rebuild_cache)


def _train(cfg: TrainConfig, objective: Objective, run: Path, resume: bool, progress: bool,
           stop_after: int | None, threads: int | None, ctx, workers: int,
           rebuild_cache: bool) -> dict:
    from tqdm import tqdm

    from . import distributed

    # every rank has checked the run directory (in train) before rank 0, past this cache
    # barrier, writes into it
    data = _Data(cfg, objective, progress, ctx, rebuild_cache)
    fingerprint = data.zoo.fingerprint()
    torch.manual_seed(cfg.seed)
    net = build_metanet(cfg, objective).to(ctx.device)
    # fused: skips a step with a non-finite gradient on the device (found_inf), no host sync
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)
    train_set = data.sets["train"]
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, cfg.warmup, cfg.min_lr))
    history: list[dict] = []
    best: dict | None = None
    start_epoch = 1
    if resume:
        saved = read_json(run / CONFIG, "run config")
        if saved.get("zoo_fingerprint") != fingerprint:
            raise RunError(f"cannot resume '{run}': zoo '{cfg.zoo}' has changed since the run "
                           "started")
        if (run / RESUME).is_file():
            try:
                state = torch.load(run / RESUME, weights_only=True, map_location=ctx.device)
                net.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
            except Exception as err:
                raise RunError(f"cannot resume '{run}': {run / RESUME} is unreadable ({err})") \
                    from None
            history, best = state["history"], state["best"]
            start_epoch = int(state["epoch"]) + 1
    elif ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / CONFIG, {
            "config": asdict(cfg), "zoo_fingerprint": fingerprint, "zoo_kind": data.zoo.kind,
            "objective": objective.name, "siren_hidden": data.hidden,
            "metanet_parameters": sum(p.numel() for p in net.parameters()),
            "train_size": len(train_set), "val_size": len(data.sets["val"]),
            "test_size": len(data.sets["test"]), "threads": threads,
        })
    identity = None  # inr-edit: the validation error of leaving the SIRENs unedited
    if objective.name == "inr-edit":
        identity = (history[0]["val_identity_mse"] if history
                    else identity_edit_mse(data.sets["val"], data.hidden))

    last = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch - 1 + stop_after)
    model = distributed.wrap_model(ctx, net)  # net: the module itself, saved and evaluated
    train_edges, val_edges = train_set.edge_counts(), data.sets["val"].edge_counts()
    trained, train_seconds = 0, 0.0
    bar = tqdm(total=(last - start_epoch + 1) * steps_per_epoch, unit="step",
               desc=f"{cfg.task}/{cfg.mode}", disable=not progress)
    for epoch in range(start_epoch, last + 1):
        t0 = time.time()
        torch.manual_seed(_seed(cfg.seed, epoch, 1))
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(
            _seed(cfg.seed, epoch, 2)))
        model.train()
        # this rank's part of every global batch (balanced by edges), one sync per epoch; a
        # step whose gradient is not finite is skipped (not applied) and counted
        loader, plan = distributed.epoch_loader(ctx, train_set, order.tolist(), cfg.batch_size,
                                                train_edges, workers)
        t1 = time.time()
        sums = distributed.run_epoch(ctx, model, objective, opt, sched, loader, plan,
                                     data.hidden, cfg.clip, bar)
        epoch_seconds = time.time() - t1
        trained, train_seconds = trained + sums["count"], train_seconds + epoch_seconds
        loss_sum, count, skipped = sums["loss_sum"], sums["count"], sums["skipped"]
        if sums["bad_loss"]:
            raise TaskError(f"training diverged at epoch {epoch} (non-finite loss in "
                            f"{sums['bad_loss']} batches); lower --lr")
        pred, y, _ = distributed.predict_all(ctx, net, objective, data.sets["val"],
                                             cfg.eval_batch_size, data.hidden, val_edges, workers)
        val = objective.metrics(pred, y)
        if skipped == steps_per_epoch:
            raise TaskError(f"every step of epoch {epoch} had non-finite gradients; lower --lr")
        row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / count,
               "skipped_steps": skipped, "graphs_per_s": count / max(epoch_seconds, 1e-9),
               **{f"val_{k}": v for k, v in val.items()}}
        if identity is not None:
            row["val_identity_mse"] = identity
        row["seconds"] = time.time() - t0
        history.append(row)
        score = val[objective.select]
        improved = best is None or _improves(objective, score, best["val"][objective.select])
        if improved:
            best = {"epoch": epoch, "val": val}
        if ctx.is_main:  # every rank holds the same history, weights and best; rank 0 writes
            if improved:
                atomic_save_safetensors(run / BEST, net.state_dict(),
                                        metadata={"epoch": str(epoch)})
                atomic_write_json(run / "best.json", best)
            _write_metrics(run, history)
            atomic_torch_save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "epoch": epoch,
                                "history": history, "best": best}, run / RESUME)
        bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}",
                        **{f"val_{objective.select}": f"{score:.4f}"})
    bar.close()
    distributed.barrier(ctx)  # rank 0's files are complete when any rank returns
    done = history[-1]["epoch"] if history else 0
    return {"run": str(run), "epochs_done": done, "complete": done >= cfg.epochs,
            "best_epoch": best["epoch"] if best else None, "best": best["val"] if best else None,
            "world_size": ctx.world_size, "device": str(ctx.device),
            "graphs_per_s": trained / train_seconds if train_seconds else None,
            "param_sha256": distributed.param_digest(net),
            "seconds": sum(h["seconds"] for h in history)}


def _improves(objective: Objective, new: float, old: float) -> bool:
    return is_better("mse" if not objective.higher else objective.select, new, old)


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
    objective = get_objective(cfg.task)
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


def evaluate_run(run: str | os.PathLike, split: str = "test", threads: int | None = None,
                 progress: bool = False) -> dict:
    """Score a run's best metanet on ``split`` (train/val/test of the run's split set).

    Writes ``RUN/eval-<split>.json`` (scores, predictions, targets, network ids) and returns
    ``{"split", "zoo_split", "metrics", "n", "seconds"}``. For inr-edit the scores include
    ``identity_mse``, the error of leaving the SIREN unedited. Raises :class:`RunError`/
    :class:`TaskError` for a bad run or split.
    """
    if split not in ("train", "val", "test"):
        raise TaskError(f"unknown split '{split}' (use train, val or test)")
    cfg, objective, net, _ = load_run(run)
    with thread_count(threads):
        data = _Data(cfg, objective, progress)
        t0 = time.time()
        pred, y, ids = predict(net, objective, data.sets[split], cfg.eval_batch_size, data.hidden)
        metrics = objective.metrics(pred, y)
        if objective.name == "inr-edit":
            metrics["identity_mse"] = identity_edit_mse(data.sets[split], data.hidden)
        seconds = time.time() - t0
    result = {"split": split, "zoo_split": cfg.split(split), "metrics": metrics,
              "n": int(len(y)), "seconds": seconds}
    store = dict(result, net_id=ids.tolist(), pred=pred.tolist(), true=y.tolist())
    atomic_write_json(Path(run) / f"eval-{split}.json", store, indent=None)
    return result


def plot_run(run: str | os.PathLike, split: str = "test") -> list[Path]:
    """Draw the run's learning curves (``curves.png``) and, for generalisation, predicted
    against true accuracy on ``split`` (``scatter-<split>.png``, evaluated first if needed).
    Returns the written paths. Raises :class:`RunError` if the run has no metrics yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    try:
        history = read_json(run / "metrics.json", "run metrics")
    except TaskError as err:
        raise RunError(f"{err} (has the run finished an epoch?)") from None
    info = read_json(run / CONFIG, "run config")
    task = info["config"]["task"]
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
    if task == "generalization":
        path = run / f"eval-{split}.json"
        if not path.is_file():
            evaluate_run(run, split)
        ev = read_json(path, "evaluation")
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(ev["true"], ev["pred"], s=8, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="grey", lw=1)
        m = ev["metrics"]
        ax.set(xlabel="true test accuracy", ylabel="predicted", xlim=(0, 1.02), ylim=(0, 1.02),
               title=f"{info['config']['mode']}: tau {m['kendall_tau']:.3f}, R2 {m['r2']:.3f}")
        fig.tight_layout()
        out.append(run / f"scatter-{split}.png")
        save_figure(fig, out[-1])
        plt.close(fig)
    return out


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
