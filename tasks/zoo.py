"""Model zoos made from the bundled digits: generation (parallel, resumable, deterministic) and
loading.

Three kinds (``paramgraph zoo make --kind ...``):

``hetero``  MLPs, CNNs (with/without batch norm and residual blocks) and small ViTs with randomly
            drawn architectures and training hyperparameters; several checkpoints per run.
``cnn``     the Small-CNN-Zoo protocol on digits: one fixed CNN (3 convolutions of 16 channels,
            3x3, stride 2, global average pool, Linear: 4,970 parameters, like the original), with
            the activation (ReLU/tanh) and the training hyperparameters drawn at random.
``inr``     one SIREN (see :mod:`paramgraph.tasks.inr`) per view of a digit: the digits
            upsampled to ``inr_side`` pixels and moved by random small affine and elastic
            deformations (:mod:`paramgraph.tasks.inr_images`), up to 32 views per digit, the
            splits holding out whole digits; fitted in batches (one Adam over a stack of
            SIRENs). By default every SIREN starts from one shared initialisation drawn from the
            zoo seed (``inr_init="shared"``); ``"independent"`` draws one per network. A fitted
            SIREN stays close to its random start (it moves by 19-36% of its norm, the row's
            ``init_distance``), so SIRENs fitted from independent starts differ mostly by their
            starts, and weight statistics + gradient boosting stay at chance (8.4% on 4,000
            independent 16x16 views); from a shared start the differences are the images' own.

Each kind is one recipe (:class:`ZooKind`: how a unit of work samples and trains or fits its
networks, its settings, its splits and summary) in :data:`RECIPES`; adding a kind means a recipe
there and its name in :mod:`paramgraph.tasks.zoo_kinds` (the command line's choices).

A zoo directory holds::

    zoo.json             manifest: kind, size, seed, checkpoints per run, format version, status
    nets/000042.safetensors   one checkpoint per network (its spec is in the file's metadata too)
    rows/000042.json     one metadata row per network, written atomically after its checkpoint
    metadata.jsonl       the merged metadata table (one JSON row per network, by id)
    metadata.csv         the same, flattened, for people and spreadsheets
    splits.json          train/val/test network ids, split by run (and ood_* splits for hetero)
    cache/               converted parameter graphs (see :mod:`paramgraph.tasks.data`)

A zoo made by ``paramgraph zoo import`` (kind ``imported``, see :mod:`paramgraph.tasks.importer`)
has the same manifest, table and splits, but one graph file per network (``graphs/*.pgraph``)
instead of a checkpoint and a spec, and its rows keep the user's labels under ``labels``.

Determinism: run ``r`` of a zoo with seed ``s`` draws everything from the seed
:func:`run_seed` ``(s, r)`` and trains on one thread, so its checkpoints do not depend on the number
of workers or on the order in which runs finish. Resuming: a run whose rows and checkpoints all
exist is skipped, so an interrupted ``zoo make`` continues where it stopped.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from paramgraph.errors import ParamGraphError

from .archs import build_model, describe, example_input  # noqa: F401  (re-exported)
from .digits import NUM_IMAGES, classification_split, images
from .errors import TaskError, ZooError
from .inr import fit_sirens, unstack
from .io import (
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    read_json,
    sha256_file,
)
from .sharding import check_shard, finish_shard, select_units, shard_markers, shard_seconds
from .threads import threads
from .zoo_kinds import DEFAULT_CKPTS, IMPORTED, INR_INITS, INR_LR, INR_SIDE, INR_STEPS, KINDS

FORMAT_VERSION = 1
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
INR_CHUNK = 128  # SIRENs fitted together in one batched optimisation
INR_HIDDEN = [32, 32]
INR_MAX_VIEWS = 32  # views per digit: up to 57,504 SIRENs
OOD_FAMILY = "vit"
SMALL_CNN = {"family": "cnn", "channels": [16, 16, 16], "kernels": [3, 3, 3],
             "strides": [2, 2, 2], "batch_norm": False, "residual": False, "dropout": 0.0}


def shared_init_seed(seed: int) -> int:
    """The seed of the one initialisation every SIREN of an inr zoo with seed ``seed`` starts
    from (``inr_init="shared"``)."""
    return int(np.random.SeedSequence([int(seed), 0x5152]).generate_state(1)[0])


def run_seed(seed: int, run: int) -> int:
    """The seed of run ``run`` of a zoo with seed ``seed`` (independent of workers and order)."""
    return int(np.random.SeedSequence([int(seed), int(run)]).generate_state(1)[0])


# -- sampling architectures and hyperparameters ---------------------------------------------------

def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_hetero_spec(rng: np.random.Generator) -> dict:
    """A random MLP (40%), CNN (40%) or ViT (20%) spec for the hetero zoo."""
    family = str(rng.choice(["mlp", "cnn", "vit"], p=[0.4, 0.4, 0.2]))
    acts = ["relu", "leaky_relu", "tanh", "gelu"]
    if family == "mlp":
        depth = int(rng.integers(1, 5))
        return {"family": "mlp", "hidden": [int(rng.choice([8, 16, 24, 32, 48, 64]))
                                            for _ in range(depth)],
                "act": str(rng.choice(acts))}
    if family == "cnn":
        depth = int(rng.integers(2, 5))
        residual = bool(rng.random() < 0.4)
        batch_norm = bool(rng.random() < 0.5)
        widths = [4, 8, 12, 16, 24, 32]
        if residual:
            channels = [int(rng.choice(widths))] * depth
        else:
            channels = sorted(int(rng.choice(widths)) for _ in range(depth))
        kernels = [int(rng.choice([3, 5])) for _ in range(depth)]
        strides = [2 if rng.random() < 0.5 else 1] + [1] * (depth - 1)
        return {"family": "cnn", "channels": channels, "kernels": kernels, "strides": strides,
                "batch_norm": batch_norm, "residual": residual, "act": str(rng.choice(acts))}
    width = int(rng.choice([16, 24, 32]))
    return {"family": "vit", "width": width, "layers": int(rng.integers(1, 3)),
            "heads": int(rng.choice([2, 4])), "ff": 2 * width}


def sample_cnn_spec(rng: np.random.Generator) -> dict:
    """The fixed Small-CNN-Zoo architecture with a random activation (ReLU or tanh)."""
    return {**SMALL_CNN, "act": str(rng.choice(["relu", "tanh"]))}


def sample_hparams(rng: np.random.Generator) -> dict:
    """Random training hyperparameters, wide enough that test accuracies range from chance to
    the best: optimiser, learning rate, weight decay, initialisation scale, epochs, dropout,
    fraction of the training set and batch size."""
    optimizer = str(rng.choice(["sgd", "adam", "rmsprop"]))
    lr_range = {"sgd": (1e-3, 0.5), "adam": (1e-4, 3e-2), "rmsprop": (1e-4, 1e-2)}[optimizer]
    return {
        "optimizer": optimizer,
        "lr": _loguniform(rng, *lr_range),
        "weight_decay": 0.0 if rng.random() < 0.3 else _loguniform(rng, 1e-6, 1e-2),
        "init_scale": _loguniform(rng, 0.2, 4.0),
        "epochs": int(rng.integers(4, 31)),
        "dropout": 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.5)),
        "train_fraction": float(rng.uniform(0.05, 1.0)),
        "batch_size": int(rng.choice([32, 64, 128])),
    }


def checkpoint_epochs(epochs: int, ckpts: int) -> list[int]:
    """The epochs at which a run of ``epochs`` epochs saves its ``ckpts`` checkpoints (evenly
    spaced, the last one at the end; fewer when there are fewer epochs than checkpoints)."""
    return sorted({max(1, round(epochs * (k + 1) / ckpts)) for k in range(ckpts)})


# -- training one run -------------------------------------------------------------------------

def _optimizer(name: str, params, lr: float, wd: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    raise ZooError(f"unknown optimiser '{name}'")


def _with_dropout(spec: dict, dropout: float) -> dict:
    return {**spec, "dropout": round(dropout, 4)} if spec["family"] != "siren" else spec


def _evaluate(model: nn.Module, x, y) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    return acc, loss if math.isfinite(loss) else float("nan")


def train_run(spec: dict, hp: dict, seed: int, ckpts: int):
    """Train one network; yield ``(epoch, state_dict, metrics)`` at each checkpoint epoch.

    ``metrics`` holds ``train_acc``/``train_loss`` (on the run's training subset),
    ``test_acc``/``test_loss`` (on the fixed 360 test digits) and ``diverged`` (the loss became
    non-finite: the weights were rolled back to the last finite epoch and training stopped, so
    later checkpoints repeat them).
    """
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(hp["init_scale"])
    x_tr, y_tr, x_te, y_te = classification_split()
    g = torch.Generator().manual_seed(seed)
    n = max(hp["batch_size"], int(round(hp["train_fraction"] * len(x_tr))))
    subset = torch.randperm(len(x_tr), generator=g)[:n]
    x_tr, y_tr = x_tr[subset], y_tr[subset]
    opt = _optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["weight_decay"])
    at = set(checkpoint_epochs(hp["epochs"], ckpts))
    diverged = False
    for epoch in range(1, hp["epochs"] + 1):
        if not diverged:
            snapshot = {k: v.clone() for k, v in model.state_dict().items()}
            model.train()
            order = torch.randperm(n, generator=g)
            for i in range(0, n, hp["batch_size"]):
                idx = order[i : i + hp["batch_size"]]
                if idx.numel() < 2:
                    continue  # batch norm needs two samples
                loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
                if not torch.isfinite(loss):
                    diverged = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if not diverged and not all(torch.isfinite(v).all() for v in
                                        model.state_dict().values() if v.is_floating_point()):
                diverged = True
            if diverged:
                model.load_state_dict(snapshot)
        if epoch in at:
            train_acc, train_loss = _evaluate(model, x_tr, y_tr)
            test_acc, test_loss = _evaluate(model, x_te, y_te)
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            yield epoch, state, {"train_acc": train_acc, "train_loss": train_loss,
                                 "test_acc": test_acc, "test_loss": test_loss,
                                 "diverged": diverged}


# -- the work units -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Unit:
    """One unit of work: a training run (hetero/cnn) or a chunk of images (inr)."""

    root: str
    kind: str
    seed: int
    index: int
    ids: tuple[int, ...]
    ckpts: int
    inr_steps: int
    inr_hidden: tuple[int, ...]
    inr_init: str = "shared"
    inr_side: int = INR_SIDE


def _net_path(root: Path, i: int) -> Path:
    return root / "nets" / f"{i:06d}.safetensors"


def _row_path(root: Path, i: int) -> Path:
    return root / "rows" / f"{i:06d}.json"


def _write_network(root: Path, i: int, state: dict, row: dict) -> dict:
    path = _net_path(root, i)
    # One metadata key only: safetensors writes several in a random order, which would make the
    # bytes (and the recorded SHA-256) differ between otherwise identical runs.
    atomic_save_safetensors(path, state, metadata={
        "paramgraph_zoo": json.dumps({"id": i, "spec": row["spec"]}, sort_keys=True)})
    row = {**row, "file": f"nets/{i:06d}.safetensors", "sha256": sha256_file(path),
           "num_params": int(sum(v.numel() for k, v in state.items()
                                 if v.is_floating_point()))}
    atomic_write_json(_row_path(root, i), row, indent=None)
    return row


def _do_unit(unit: _Unit) -> int:
    """Make every network of ``unit`` (in a worker: one thread). Returns how many it wrote."""
    with threads(1):
        return RECIPES[unit.kind].make_unit(unit)


def work_units(root: Path, kind: str, size: int, seed: int, ckpts: int, inr_steps: int,
               inr_hidden: list[int], inr_init: str = "shared",
               inr_side: int = INR_SIDE) -> list[_Unit]:
    """The work units of a zoo of ``size`` networks, in index order: consecutive ids, as many
    per unit as the kind's :meth:`ZooKind.unit_size`."""
    per = RECIPES[kind].unit_size(ckpts)
    return [_Unit(str(root), kind, seed, s // per, tuple(range(s, min(s + per, size))), ckpts,
                  inr_steps, tuple(inr_hidden), inr_init, inr_side)
            for s in range(0, size, per)]


def _unit_done(root: Path, unit: _Unit) -> bool:
    return not missing_networks(root, unit.ids)


def missing_networks(root: Path, ids) -> list[int]:
    """The ids among ``ids`` whose row or checkpoint is not written yet."""
    return [i for i in ids if not (_row_path(root, i).is_file() and _net_path(root, i).is_file())]


# -- zoo kinds ------------------------------------------------------------------------------------

class ZooKind:
    """How one kind of zoo is made: a recipe, registered in :data:`RECIPES` under its name
    (:data:`paramgraph.tasks.zoo_kinds.KINDS` lists the names for the command line).

    ``heterogeneous``: its networks differ in architecture (the statistics baseline then uses
    fixed-length features); ``ood_family``: the family that its ``ood_*`` splits hold out
    (``None``: no ood splits).
    """

    name: str
    heterogeneous: bool = False
    ood_family: str | None = None

    def check_size(self, size: int) -> None:
        """Raise :class:`ZooError` if a zoo of this kind cannot have ``size`` networks."""

    def settings(self, ckpts: int, inr_steps: int, inr_hidden: list[int], inr_init: str,
                 inr_side: int = INR_SIDE) -> dict:
        """The generation settings recorded in the manifest (resuming must ask for the same)."""
        raise NotImplementedError

    def unit_size(self, ckpts: int) -> int:
        """How many networks one work unit makes."""
        raise NotImplementedError

    def make_unit(self, unit: _Unit) -> int:
        """Make and write every network of ``unit``; returns how many it wrote."""
        raise NotImplementedError

    def summary(self, rows: list[dict]) -> dict:
        """Statistics of the networks' metadata rows for ``paramgraph zoo info``."""
        raise NotImplementedError


class TrainedRuns(ZooKind):
    """Digit classifiers: each run trains an architecture drawn by ``sample_spec`` with drawn
    hyperparameters (:func:`sample_hparams`) and keeps ``ckpts`` checkpoints; one run per unit."""

    def __init__(self, name: str, sample_spec, heterogeneous: bool = False,
                 ood_family: str | None = None):
        self.name, self.sample_spec = name, sample_spec
        self.heterogeneous, self.ood_family = heterogeneous, ood_family

    def settings(self, ckpts, inr_steps, inr_hidden, inr_init, inr_side=INR_SIDE):
        return {"ckpts": int(ckpts)}

    def unit_size(self, ckpts):
        return ckpts

    def make_unit(self, unit):
        root = Path(unit.root)
        seed = run_seed(unit.seed, unit.index)
        rng = np.random.default_rng(seed)
        spec = self.sample_spec(rng)
        hp = sample_hparams(rng)
        spec = _with_dropout(spec, hp["dropout"])
        written = 0
        for k, (epoch, state, metrics) in enumerate(train_run(spec, hp, seed, unit.ckpts)):
            if k >= len(unit.ids):
                break
            i = unit.ids[k]
            row = {"id": i, "run": unit.index, "ckpt": k, "epoch": epoch,
                   "family": spec["family"], "arch": describe(spec), "spec": spec, "hparams": hp,
                   "seed": seed, **metrics}
            _write_network(root, i, state, row)
            written += 1
        return written

    def summary(self, rows):
        if any(not isinstance(r.get("test_acc"), (int, float)) for r in rows):
            return {}  # a hand-written table without accuracies
        acc = np.array([r["test_acc"] for r in rows])
        return {"test_acc": {"min": float(acc.min()), "mean": float(acc.mean()),
                             "max": float(acc.max()),
                             "quartiles": [float(q) for q in np.quantile(acc, [0.25, 0.5, 0.75])]}}


class FittedSirens(ZooKind):
    """One SIREN per view of a digit (:mod:`paramgraph.tasks.inr_images`: network ``i`` draws
    digit ``i mod 1797`` in view ``i div 1797``, upsampled to ``inr_side`` pixels a side and
    deformed), ``INR_CHUNK`` fitted at once per unit. A network's ``run`` is its source digit, so
    the splits hold out whole digits: no view of a test digit is trained on. Each row records
    the fit's error (``fit_mse``, ``fit_psnr``) and how far the SIREN moved from its start
    (``init_distance``, see :func:`paramgraph.tasks.inr.movement`)."""

    name = "inr"

    def check_size(self, size):
        if size > NUM_IMAGES * INR_MAX_VIEWS:
            raise ZooError(f"an inr zoo has at most {INR_MAX_VIEWS} views of each of the "
                           f"{NUM_IMAGES} digits ({NUM_IMAGES * INR_MAX_VIEWS} SIRENs), got {size}")

    def settings(self, ckpts, inr_steps, inr_hidden, inr_init, inr_side=INR_SIDE):
        return {"ckpts": 1, "inr_steps": int(inr_steps), "inr_hidden": inr_hidden,
                "inr_init": inr_init, "inr_side": int(inr_side), "inr_lr": INR_LR}

    def unit_size(self, ckpts):
        return INR_CHUNK

    def make_unit(self, unit):
        from .inr import init_params, movement
        from .inr_images import view_images, view_of

        root = Path(unit.root)
        _, y = images()
        ids = list(unit.ids)
        pairs = [view_of(i, NUM_IMAGES) for i in ids]
        if unit.inr_init == "shared":
            seeds = [shared_init_seed(unit.seed)] * len(ids)
        else:
            seeds = [run_seed(unit.seed, i) for i in ids]
        hidden = list(unit.inr_hidden)
        x = torch.from_numpy(view_images(unit.seed, pairs, unit.inr_side))
        params, err = fit_sirens(x, hidden, seeds, steps=unit.inr_steps, lr=INR_LR)
        moved = movement(init_params(hidden, seeds), params)
        spec = {"family": "siren", "hidden": hidden, "w0": 30.0}
        for j, (i, (digit, view)) in enumerate(zip(ids, pairs)):
            row = {"id": i, "run": digit, "ckpt": 0, "family": "siren", "arch": describe(spec),
                   "spec": spec, "label": int(y[digit]), "image_index": digit, "view": view,
                   "side": unit.inr_side, "fit_mse": float(err[j]),
                   "fit_psnr": float(-10.0 * math.log10(max(float(err[j]), 1e-12))),
                   "init_distance": float(moved[j]), "fit_steps": unit.inr_steps,
                   "init": unit.inr_init, "seed": seeds[j]}
            _write_network(root, i, unstack(params, hidden, j), row)
        return len(ids)

    def summary(self, rows):
        if any(not isinstance(r.get("fit_mse"), (int, float)) for r in rows):
            return {}
        fit = np.array([r["fit_mse"] for r in rows])
        out = {"fit_mse": {"mean": float(fit.mean()), "max": float(fit.max())}}
        moved = [r["init_distance"] for r in rows if "init_distance" in r]
        if len(moved) == len(rows):
            q = np.quantile(moved, [0.0, 0.5, 1.0])
            out["init_distance"] = {"min": float(q[0]), "median": float(q[1]),
                                    "max": float(q[2])}
        return out


RECIPES: dict[str, ZooKind] = {
    "hetero": TrainedRuns("hetero", sample_hetero_spec, heterogeneous=True, ood_family=OOD_FAMILY),
    "cnn": TrainedRuns("cnn", sample_cnn_spec),
    "inr": FittedSirens(),
}


# -- making a zoo ---------------------------------------------------------------------------------

def make_zoo(out: str | os.PathLike, kind: str, size: int, *, workers: int = 1, seed: int = 0,
             ckpts: int = DEFAULT_CKPTS, inr_steps: int = INR_STEPS,
             inr_hidden: list[int] | None = None, inr_init: str = "shared",
             inr_side: int = INR_SIDE, progress: bool = True,
             shard: tuple[int, int] | None = None) -> "Zoo | None":
    """Make (or finish making) a zoo of ``size`` networks in ``out``; returns the loaded zoo.

    Networks already written (by an interrupted earlier call) are kept and skipped, so calling
    again continues where it stopped; the result is the same as one uninterrupted call, whatever
    ``workers`` is. ``shard=(I, N)``: make only shard I of N into ``out`` (other processes or
    machines make the others into the same directory, see :mod:`paramgraph.tasks.sharding`); the shard
    that completes the set merges the zoo and returns it, the others return ``None``. Raises
    :class:`~paramgraph.tasks.errors.ZooError` for a bad kind, size or shard, or when ``out`` holds a zoo
    made with a different kind, seed or settings (or, for a shard, size).
    """
    recipe = RECIPES.get(kind)
    if recipe is None:
        raise ZooError(f"unknown zoo kind '{kind}' (known: {', '.join(KINDS)})")
    if size < 1:
        raise ZooError(f"zoo size must be at least 1, got {size}")
    recipe.check_size(size)
    if workers < 1:
        raise ZooError(f"--workers must be at least 1, got {workers}")
    if inr_side < 2:
        raise ZooError(f"--inr-side must be at least 2 pixels, got {inr_side}")
    if inr_init not in INR_INITS:
        raise ZooError(f"unknown SIREN initialisation '{inr_init}' (known: {', '.join(INR_INITS)})")
    if shard is not None:
        check_shard(shard)
    t_start = time.time()
    root = Path(out)
    inr_hidden = list(inr_hidden or INR_HIDDEN)
    settings = {"kind": kind, "seed": int(seed),
                **recipe.settings(ckpts, inr_steps, inr_hidden, inr_init, inr_side)}
    manifest = _start_manifest(root, settings, size, shard)
    units = work_units(root, kind, size, seed, settings["ckpts"], inr_steps, inr_hidden, inr_init,
                       inr_side)
    units = select_units(units, shard)
    todo = [u for u in units if not _unit_done(root, u)]
    if todo:
        start = time.time()
        _run_units(todo, workers, f"zoo {kind} -> {root}", progress)
        manifest["seconds"] = round(time.time() - start, 2)
    if shard is not None:  # the last shard to finish merges
        return merge_zoo(root) if finish_shard(root, shard, units, time.time() - t_start) \
            else None
    _merge(root, kind, size, seed)
    manifest["complete"] = True
    atomic_write_json(root / "zoo.json", manifest)
    return Zoo(root)


def _start_manifest(root: Path, settings: dict, size: int, shard) -> dict:
    """Check that ``root`` is empty or holds a zoo made with ``settings``, write its (unfinished)
    manifest and the directories of networks and rows; returns the manifest."""
    manifest_path = root / "zoo.json"
    if manifest_path.exists():
        old = read_json(manifest_path, "zoo manifest")
        clash = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if shard is not None and old.get("size") != size:  # shards must agree on the units
            clash["size"] = (old.get("size"), size)
        if clash:
            what = ", ".join(f"{k}={a!r} (asked {b!r})" for k, (a, b) in clash.items())
            raise ZooError(f"'{root}' already holds a zoo made with {what}; use another --out "
                           "directory or the same settings to resume it")
    elif root.exists() and any(not p.name.startswith(".") or shard is None  # a shard's temp
                               for p in root.iterdir()):
        raise ZooError(f"'{root}' exists, is not empty and holds no zoo (no zoo.json)")
    manifest = {"format": FORMAT_VERSION, **settings, "size": int(size), "complete": False,
                "paramgraph_version": _version()}
    atomic_write_json(manifest_path, manifest)
    (root / "nets").mkdir(exist_ok=True)
    (root / "rows").mkdir(exist_ok=True)
    return manifest


def _run_units(todo: list[_Unit], workers: int, desc: str, progress: bool) -> None:
    """Make the units ``todo`` in this process or in ``workers`` forked ones, with a progress
    bar."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(u.ids) for u in todo), desc=desc, unit="net", disable=not progress,
               initial=0)
    classification_split()  # load once here: forked workers inherit it
    if workers == 1 or len(todo) == 1:
        for u in todo:
            bar.update(_do_unit(u))
    else:
        # fork is fast (no re-import per worker); each unit runs on one thread, like
        # DataLoader workers, which is what makes forking a torch process safe.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(todo))) as pool:
            for n in pool.imap_unordered(_do_unit, todo):
                bar.update(n)
    bar.close()


def _version() -> str:
    import paramgraph

    return paramgraph.__version__


def merge_zoo(root: str | os.PathLike, progress: bool = True) -> "Zoo":
    """Merge the rows written by the shards of the zoo in ``root`` into its metadata table and
    splits, mark it complete and return the :class:`Zoo` (see :mod:`paramgraph.tasks.sharding`).
    Raises :class:`ZooError` naming the missing networks (and the shards that have reported) if
    any is missing."""
    root = Path(root)
    path = root / "zoo.json"
    if not path.is_file():
        raise ZooError(f"'{root}' is not a zoo: it has no zoo.json (make it with "
                       "'paramgraph zoo make ... --shard I/N')")
    manifest = read_json(path, "zoo manifest")
    size = int(manifest["size"])
    missing = missing_networks(root, range(size))
    markers = shard_markers(root)
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ZooError(f"zoo '{root}' cannot be merged: {len(missing)} of {size} networks are "
                       f"missing (ids {shown}); finished shards: "
                       f"{', '.join(m.name for m in markers) or 'none'}. Run the missing "
                       "'paramgraph zoo make ... --shard I/N' commands first")
    _merge(root, manifest["kind"], size, int(manifest["seed"]))
    if markers:
        manifest["seconds"] = shard_seconds(root)
    manifest["complete"] = True
    atomic_write_json(path, manifest)
    return Zoo(root)


def _merge(root: Path, kind: str, size: int, seed: int) -> None:
    rows = []
    for i in range(size):
        row = read_json(_row_path(root, i), "zoo metadata row")
        if row.get("id") != i:
            raise ZooError(f"zoo '{root}': metadata row {_row_path(root, i)} has id "
                           f"{row.get('id')!r}, expected {i}")
        rows.append(row)
    write_metadata(root, rows)
    atomic_write_json(root / "splits.json", make_splits(rows, seed, kind))


def write_metadata(root: Path, rows: list[dict]) -> None:
    """The zoo's metadata table from its rows, in id order: ``metadata.jsonl`` (what
    :class:`Zoo` reads) and ``metadata.csv`` (the same, flat, for people and spreadsheets)."""
    atomic_write_text(root / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(root / "metadata.csv", _csv(rows))


_CSV_SKIP = ("spec", "hparams")


def _csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k == "hparams":
                keys += [f"hp_{h}" for h in v if f"hp_{h}" not in keys]
            elif k not in _CSV_SKIP and k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        flat = {k: v for k, v in r.items() if k not in _CSV_SKIP}
        flat.update({f"hp_{h}": v for h, v in r.get("hparams", {}).items()})
        w.writerow(flat)
    return buf.getvalue()


def make_splits(rows: list[dict], seed: int, kind: str) -> dict[str, list[int]]:
    """Train/val/test network ids, split by run (70/15/15 of the runs, shuffled with ``seed``),
    so that the checkpoints of one run are always in the same split.

    For a kind with an ``ood_family`` (hetero: ``vit``) there are also
    ``ood_train``/``ood_val``/``ood_test``: the same split with every network of that family moved
    to ``ood_test``. Returns the dict.
    """
    runs = sorted({r["run"] for r in rows})
    rng = np.random.default_rng([int(seed), 271828])
    order = [runs[i] for i in rng.permutation(len(runs))]
    n_train = int(round(SPLIT_FRACTIONS[0] * len(runs)))
    n_val = int(round(SPLIT_FRACTIONS[1] * len(runs)))
    if len(runs) >= 3:  # every split gets at least one run
        n_train = min(max(n_train, 1), len(runs) - 2)
        n_val = min(max(n_val, 1), len(runs) - n_train - 1)
    part = {r: "train" for r in order[:n_train]}
    part.update({r: "val" for r in order[n_train : n_train + n_val]})
    part.update({r: "test" for r in order[n_train + n_val :]})
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for r in rows:
        splits[part[r["run"]]].append(r["id"])
    family = RECIPES[kind].ood_family if kind in RECIPES else None  # imported: no ood splits
    if family is not None:
        held = {r["id"] for r in rows if r["family"] == family}
        for name in ("train", "val"):
            splits[f"ood_{name}"] = [i for i in splits[name] if i not in held]
        splits["ood_test"] = sorted(held)
        splits["ood_family"] = family  # type: ignore[assignment]
    return splits


# -- loading a zoo --------------------------------------------------------------------------------

class Zoo:
    """A finished zoo directory: its manifest, metadata table and splits.

    Raises :class:`~paramgraph.tasks.errors.ZooError` naming the directory and the problem if the directory
    is missing, not a zoo, unfinished, or has a corrupt manifest, table or splits file.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ZooError(f"zoo directory '{self.root}' does not exist (make one with "
                           "'paramgraph zoo make' or 'paramgraph zoo import')")
        if not (self.root / "zoo.json").is_file():
            raise ZooError(f"'{self.root}' is not a zoo: it has no zoo.json")
        try:
            self.manifest = read_json(self.root / "zoo.json", "zoo manifest")
        except TaskError as err:
            raise ZooError(str(err)) from None
        if not isinstance(self.manifest, dict) or \
                self.manifest.get("kind") not in (*KINDS, IMPORTED):
            raise ZooError(f"zoo manifest '{self.root / 'zoo.json'}' is corrupt (no valid 'kind')")
        self.kind: str = self.manifest["kind"]
        if not self.manifest.get("complete"):
            how = "import" if self.imported else "make"
            raise ZooError(f"zoo '{self.root}' is unfinished; run the same 'paramgraph zoo {how}' "
                           "again to complete it")
        self.rows = self._read_rows()
        if len(self.rows) != self.manifest.get("size"):
            raise ZooError(f"zoo '{self.root}': metadata.jsonl has {len(self.rows)} rows, the "
                           f"manifest says {self.manifest.get('size')} networks")
        try:
            self.splits = read_json(self.root / "splits.json", "zoo splits file")
        except TaskError as err:
            raise ZooError(str(err)) from None
        for name in ("train", "val", "test"):
            ids = self.splits.get(name) if isinstance(self.splits, dict) else None
            if not isinstance(ids, list) or any(not isinstance(i, int) or not 0 <= i < len(self)
                                                for i in ids):
                raise ZooError(f"zoo splits file '{self.root / 'splits.json'}' is corrupt: "
                               f"split '{name}' is missing or names unknown networks")

    def _read_rows(self) -> list[dict]:
        path = self.root / "metadata.jsonl"
        if not path.is_file():
            raise ZooError(f"zoo '{self.root}' has no metadata table (metadata.jsonl)")
        rows = []
        required = ("id", "run", "file") if self.imported else ("id", "run", "spec", "file")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ZooError(f"zoo metadata '{path}' line {n} is corrupt ({err})") from None
                missing = [k for k in required if not isinstance(row, dict) or k not in row]
                if missing:
                    raise ZooError(f"zoo metadata '{path}' line {n} lacks {', '.join(missing)}")
                if row["id"] != len(rows):
                    raise ZooError(f"zoo metadata '{path}' line {n} has id {row['id']}, "
                                   f"expected {len(rows)}")
                rows.append(row)
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def imported(self) -> bool:
        """Whether this zoo was made by ``paramgraph zoo import`` (graph files, user labels)."""
        return self.kind == IMPORTED

    @property
    def heterogeneous(self) -> bool:
        """Whether its networks differ in architecture (the statistics baseline then uses
        fixed-length features)."""
        if self.imported:
            return bool(self.manifest.get("heterogeneous", True))
        return RECIPES[self.kind].heterogeneous

    def columns(self) -> list[str]:
        """The names of the per-network values a task can predict (``--target``): an imported
        zoo's label columns, or a made zoo's scalar metadata (test_acc, train_loss, ...)."""
        if self.imported:
            return list(self.manifest.get("columns", {}))
        names: dict[str, None] = {}
        for r in self.rows:
            names.update((k, None) for k, v in r.items() if k not in _NOT_COLUMNS
                         and (v is None or isinstance(v, (int, float, str))))
            names.update((f"hp_{k}", None) for k in r.get("hparams", {}))  # as in metadata.csv
        return list(names)

    def column(self, name: str) -> list:
        """Column ``name`` for every network, in id order (``None`` where a row has no value);
        a made zoo's training hyperparameters are the columns ``hp_<name>``."""
        if self.imported:
            return [r.get("labels", {}).get(name) for r in self.rows]
        if name.startswith("hp_") and name not in self.rows[0]:
            return [r.get("hparams", {}).get(name[3:]) for r in self.rows]
        return [r.get(name) for r in self.rows]

    def split(self, name: str) -> list[int]:
        """The network ids of split ``name`` (train, val, test; ood_* for hetero zoos)."""
        ids = self.splits.get(name)
        if not isinstance(ids, list):
            known = [k for k, v in self.splits.items() if isinstance(v, list)]
            raise ZooError(f"zoo '{self.root}' has no split '{name}' (it has: {', '.join(known)})")
        return ids

    def fingerprint(self) -> str:
        """A hash of the metadata table and splits: it changes whenever the zoo does (each row
        holds its checkpoint's SHA-256)."""
        import hashlib

        h = hashlib.sha256()
        for name in ("metadata.jsonl", "splits.json"):
            h.update((self.root / name).read_bytes())
        return h.hexdigest()

    def path(self, i: int) -> Path:
        """The checkpoint file of network ``i``."""
        return self.root / self.rows[i]["file"]

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Network ``i``'s checkpoint, its tensors in the architecture's own (forward) order, not
        the file's alphabetical one. Raises :class:`ZooError` if it is missing or corrupt."""
        if self.imported:
            import paramgraph

            gf = self.graph_file(i)
            return {**paramgraph.to_state_dict(gf.graph), **gf.extra}  # graph order = forward
        try:
            state = load_safetensors(self.path(i), f"zoo '{self.root}' checkpoint")
        except TaskError as err:
            raise ZooError(str(err)) from None
        order = _key_order(self.rows[i]["spec"])
        rank = {k: n for n, k in enumerate(order)}
        return dict(sorted(state.items(), key=lambda kv: rank.get(kv[0], len(rank))))

    def graph_file(self, i: int):
        """Network ``i`` of an imported zoo: its :class:`~paramgraph.graphfile.GraphFile` (graph,
        extra state entries, metadata). Raises :class:`ZooError` if it is missing or corrupt."""
        from paramgraph.graphfile import read_graph_file

        try:
            return read_graph_file(self.path(i))
        except (ParamGraphError, OSError) as err:
            raise ZooError(f"zoo '{self.root}' network {i}: {err}; import the zoo again to "
                           "repair it") from None

    def model(self, i: int) -> nn.Module:
        """Network ``i`` rebuilt from its spec with its weights loaded, in eval mode."""
        if self.imported:
            raise ZooError(f"zoo '{self.root}' is imported: it holds parameter graphs, not "
                           "architecture specs to rebuild modules from")
        m = build_model(self.rows[i]["spec"])
        state = self.state_dict(i)
        try:
            m.load_state_dict(state)
        except RuntimeError as err:
            raise ZooError(f"zoo '{self.root}' checkpoint '{self.path(i)}' does not fit its "
                           f"spec {self.rows[i]['spec']}: {err}") from None
        return m.eval()


_NOT_COLUMNS = ("id", "run", "file", "sha256", "spec", "hparams", "seed", "ckpt", "image_index")


@functools.lru_cache(maxsize=256)
def _key_order_of(spec_json: str) -> tuple[str, ...]:
    return tuple(build_model(json.loads(spec_json)).state_dict())


def _key_order(spec: dict) -> tuple[str, ...]:
    """The state_dict keys of the architecture ``spec`` in module (forward) order."""
    return _key_order_of(json.dumps(spec, sort_keys=True))


# -- summaries ------------------------------------------------------------------------------------

def zoo_summary(zoo: Zoo) -> dict:
    """Counts, families, splits and accuracy/fit statistics of a zoo, as a dict."""
    from collections import Counter

    out = {"dir": str(zoo.root), "kind": zoo.kind, "size": len(zoo),
           "seed": zoo.manifest.get("seed"),
           "families": dict(Counter(_family(r) for r in zoo.rows)),
           "splits": {k: len(v) for k, v in zoo.splits.items() if isinstance(v, list)}}
    if zoo.imported:
        from .importer import import_summary

        out.update(import_summary(zoo))
    else:
        out.update(RECIPES[zoo.kind].summary(zoo.rows))
    if "seconds" in zoo.manifest:
        out["seconds"] = zoo.manifest["seconds"]
    return out


def _family(row: dict) -> str:
    """A network's architecture family (a hand-written table may lack the field)."""
    spec = row.get("spec")
    return str(row.get("family") or (spec.get("family") if isinstance(spec, dict) else None)
               or row.get("arch") or "unknown")


def zoo_summary_text(zoo: Zoo) -> str:
    """:func:`zoo_summary` as the lines ``paramgraph zoo info`` prints."""
    s = zoo_summary(zoo)
    lines = [f"zoo {s['dir']}: {s['size']} {s['kind']} networks (seed {s['seed']})",
             "  families: " + ", ".join(f"{k} {v}" for k, v in s["families"].items()),
             "  splits:   " + ", ".join(f"{k} {v}" for k, v in s["splits"].items())]
    if zoo.imported:
        from .importer import import_summary_lines

        return "\n".join(lines + import_summary_lines(s))
    if "test_acc" in s:
        a = s["test_acc"]
        lines.append(f"  test accuracy: min {a['min']:.3f}, quartiles "
                     f"{', '.join(f'{q:.3f}' for q in a['quartiles'])}, max {a['max']:.3f}")
    if "fit_mse" in s:
        lines.append(f"  SIREN fit MSE: mean {s['fit_mse']['mean']:.2e}, "
                     f"max {s['fit_mse']['max']:.2e}")
    if "init_distance" in s:
        d = s["init_distance"]
        lines.append(f"  moved from init (relative): min {d['min']:.3f}, median "
                     f"{d['median']:.3f}, max {d['max']:.3f}")
    return "\n".join(lines)
