"""Data-parallel training on torch.distributed (gloo, CPU): two processes end with identical
replicas and the same metrics as one process with the same global batch and seed; --resume works
the same way; the distributed sampler splits every global batch across ranks by edge count."""

from __future__ import annotations

import json
import math
import os
import random
import socket

import pytest
import torch
import torch.multiprocessing as mp

from paramgraph.tasks.distributed import (
    EdgeBalancedBatchSampler,
    partition_batch,
    rank_slice,
)
from paramgraph.tasks.train import TrainConfig, train
from paramgraph.tasks.zoo import make_zoo

TINY = dict(hidden=16, layers=2, batch_size=7, lr=3e-3, epochs=2, eval_batch_size=5)


# -- the sampler --------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3, 4])
def test_partition_covers_the_batch_and_balances_edges(world):
    rng = random.Random(world)
    for _ in range(50):
        n = rng.randint(world, 40)
        batch = rng.sample(range(1000), n)
        edges = [rng.choice([10, 50, 200, 3000]) for _ in batch]
        parts = partition_batch(batch, edges, world)
        assert sorted(sum(parts, [])) == sorted(batch)  # every graph once
        assert all(parts)  # no rank idle
        for p in parts:  # the batch's order is kept inside a part
            assert p == [i for i in batch if i in set(p)]
        size = dict(zip(batch, edges))
        loads = [sum(size[i] for i in p) for p in parts]
        assert max(loads) - min(loads) <= max(edges)  # greedy bound: within one graph


def test_partition_by_edges_not_by_count():
    # one huge graph and many small ones: a count split would give rank 0 nearly all the work
    parts = partition_batch(list(range(9)), [1000] + [10] * 8, 2)
    assert parts == [[0], [1, 2, 3, 4, 5, 6, 7, 8]]


def test_sampler_steps_follow_the_global_order():
    order = [5, 3, 8, 0, 1, 9, 2, 7, 6, 4, 10]
    edges = {i: 10 + 7 * i for i in range(11)}
    s0 = EdgeBalancedBatchSampler(order, 4, edges, 0, 2)
    s1 = EdgeBalancedBatchSampler(order, 4, edges, 1, 2)
    one = EdgeBalancedBatchSampler(order, 4, edges, 0, 1)
    assert list(one) == [order[0:4], order[4:8], order[8:11]]
    for k, (a, b) in enumerate(zip(s0, s1)):
        assert sorted(a + b) == sorted(order[4 * k : 4 * k + 4])
    assert [p[0] for p in s0.plan] == [4, 4, 3]
    assert [p[1] + q[1] for p, q in zip(s0.plan, s1.plan)] == [4, 4, 3]
    # a last batch of one graph: rank 1 runs it with weight zero instead of sitting out
    short = EdgeBalancedBatchSampler([1, 2, 3], 2, edges, 1, 2)
    assert short.plan[-1] == (1, 0, (1, 0)) and list(short)[-1] == [3]
    assert [p.shares for p in s0.plan] == [(p.local, q.local) for p, q in zip(s0.plan, s1.plan)]


def test_rank_slices_are_contiguous_and_cover_everything():
    edges = [1, 1, 1, 100, 1, 1, 1, 1, 50, 1]
    for world in (1, 2, 3, 4):
        ranges = [rank_slice(edges, r, world) for r in range(world)]
        assert [i for r in ranges for i in r] == list(range(len(edges)))


# -- two processes against one --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: dict | None, out: str, tag: str,
            kwargs: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    summary = train(TrainConfig(**cfg) if cfg else None, out, threads=1, progress=False,
                    device="cpu", **kwargs)
    with open(os.path.join(os.path.dirname(out), f"{tag}-rank{rank}.json"), "w") as f:
        json.dump(summary, f)


def _spawn(world: int, cfg: dict | None, out, tag: str, **kwargs) -> list[dict]:
    mp.spawn(_worker, args=(world, _free_port(), cfg, str(out), tag, kwargs), nprocs=world,
             join=True)
    return [json.loads((out.parent / f"{tag}-rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    # hetero: MLPs, CNNs and ViTs of very different edge counts
    return make_zoo(tmp_path_factory.mktemp("zoo") / "hetero", "hetero", 24, seed=1,
                    workers=2, progress=False)


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)


def test_two_processes_equal_one_and_resume(zoo, tmp_path):
    cfg = TrainConfig(task="generalization", zoo=str(zoo.root), mode="quasi", **TINY)
    single = train(cfg, tmp_path / "one", threads=1, progress=False, device="cpu")
    assert single["world_size"] == 1

    # two processes: one epoch, stop; then --resume the run with two processes again
    from dataclasses import asdict

    first = _spawn(2, asdict(cfg), tmp_path / "two", "first", stop_after=1)
    assert [s["epochs_done"] for s in first] == [1, 1] and not first[0]["complete"]
    assert first[0]["param_sha256"] == first[1]["param_sha256"]
    final = _spawn(2, None, tmp_path / "two", "resumed", resume=True)
    assert all(s["complete"] and s["world_size"] == 2 for s in final)
    # the two replicas are bit-identical
    assert final[0]["param_sha256"] == final[1]["param_sha256"]

    # ... and the run equals the one-process run: every metric of every epoch
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert [r["epoch"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        for key in a:
            if key not in ("seconds", "graphs_per_s"):  # wall-clock timings
                assert _close(a[key], b[key]), (key, a[key], b[key])
    # the same final weights (to float tolerance: the batch is summed in another order)
    w1 = torch.load(tmp_path / "one" / "resume.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two" / "resume.pt", weights_only=True)["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k
    # only rank 0 wrote files: no stray temporary files from the other rank
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]


# -- the rank term over the global batch -----------------------------------------------------------

PRED = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8]
TARGET = [0.2, 0.8, 0.4, 0.5, 0.9, 0.1, 0.6]


def _rank_term_worker(rank: int, world: int, port: int, out: str) -> None:
    """This rank's gradient of the rank term, over the global batch and (the control) over its
    own part only, each as data-parallel training applies it (times the world size)."""
    from paramgraph.tasks import distributed
    from paramgraph.tasks.objectives import get_objective

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    ctx = distributed.setup("cpu")
    objective = get_objective("generalization").with_rank_loss(1.0)
    step = EdgeBalancedBatchSampler(list(range(7)), 7, [5, 1, 4, 2, 3, 6, 2], rank, world)
    mine, plan = step.batches[0], step.plan[0]
    grads = {}
    for name, gather in (("global", True), ("local", False)):
        pred = torch.tensor(PRED)[mine].requires_grad_()
        y = torch.tensor(TARGET)[mine]
        term = objective.rank_term(*(distributed.global_batch(ctx, pred, y, plan) if gather
                                     else (pred, y)))
        (term * world).backward()
        grads[name] = dict(zip(mine, pred.grad.tolist()))
    distributed.teardown(ctx)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(grads, f)


def test_the_rank_term_is_taken_over_the_global_batch(tmp_path):
    """Two ranks, each with its part of a batch of 7, apply (after DDP's averaging) exactly the
    one-process gradient of the pairwise rank term; the control, each rank's term over its own
    part, does not."""
    from paramgraph.tasks.objectives import get_objective

    pred = torch.tensor(PRED, requires_grad=True)
    get_objective("generalization").with_rank_loss(1.0).rank_term(pred, torch.tensor(TARGET)) \
        .backward()
    mp.spawn(_rank_term_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    applied = {"global": torch.zeros(7), "local": torch.zeros(7)}
    for r in range(2):
        for name, grads in json.loads((tmp_path / f"rank{r}.json").read_text()).items():
            for i, g in grads.items():
                applied[name][int(i)] += g / 2  # DDP averages over the two ranks
    assert torch.allclose(applied["global"], pred.grad, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(applied["local"], pred.grad, rtol=1e-2, atol=1e-3)


# -- the INR tasks, and a failing rank -----------------------------------------------------------

@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("inr") / "zoo", "inr", 12, seed=5, inr_steps=20,
                    inr_init="independent", workers=1, progress=False)


def _one_and_two(cfg: TrainConfig, tmp_path) -> tuple[list[dict], list[dict], list[dict]]:
    """Train ``cfg`` in one process and in two; returns both metric histories and the two
    ranks' summaries, after checking that the two replicas are identical."""
    from dataclasses import asdict

    train(cfg, tmp_path / "one", threads=1, progress=False, device="cpu")
    two = _spawn(2, asdict(cfg), tmp_path / "two", cfg.task)
    assert all(s["complete"] and s["world_size"] == 2 for s in two)
    assert two[0]["param_sha256"] == two[1]["param_sha256"]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    both = json.loads((tmp_path / "two" / "metrics.json").read_text())
    return one, both, two


def test_inr_class_two_processes_equal_one(inr_zoo, tmp_path):
    cfg = TrainConfig(task="inr-class", zoo=str(inr_zoo.root), mode="quasi", **TINY)
    one, two, _ = _one_and_two(cfg, tmp_path)
    assert [r["epoch"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert _close(a["train_loss"], b["train_loss"]), (a, b)
        assert _close(a["val_accuracy"], b["val_accuracy"]), (a, b)


@pytest.mark.parametrize("target,copies", [("dilate", 1), ("translate", 3)])
def test_inr_edit_two_processes_equal_one(inr_zoo, tmp_path, target, copies):
    """Both edits, with and without output channel expansion. A weight head's output is a graph
    batch (or a list of them), whose tensors DDP cannot see: before the fix every parameter was
    marked ready twice ('Expected to mark a variable ready only once')."""
    cfg = TrainConfig(task="inr-edit", zoo=str(inr_zoo.root), mode="quasi", target=target,
                      model_kwargs={"copies": copies}, **TINY)
    one, two, _ = _one_and_two(cfg, tmp_path)
    for a, b in zip(one, two):
        for key in ("train_loss", "val_mse", "val_identity_mse"):
            assert _close(a[key], b[key]), (key, a[key], b[key])
    w1 = torch.load(tmp_path / "one" / "resume.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two" / "resume.pt", weights_only=True)["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k


def _failing_worker(rank: int, world: int, port: int, cfg: dict, out: str, fail: int) -> None:
    """Train; rank ``fail`` raises in its first epoch. Writes the error each rank ended with."""
    import time

    from paramgraph.tasks import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    if rank == fail:
        def broken(*args, **kwargs):
            raise RuntimeError(f"injected failure on rank {rank}")

        distributed.run_epoch = broken
    start, error = time.time(), None
    try:
        train(TrainConfig(**cfg), out, threads=1, progress=False, device="cpu")
    except Exception as err:  # noqa: BLE001 - recorded for the test
        error = f"{type(err).__name__}: {err}"
    with open(os.path.join(os.path.dirname(out), f"fail-rank{rank}.json"), "w") as f:
        json.dump({"error": error, "seconds": time.time() - start}, f)


@pytest.mark.parametrize("fail", [0, 1])
def test_a_failing_rank_ends_the_run_on_every_rank(inr_zoo, tmp_path, fail):
    from dataclasses import asdict

    cfg = TrainConfig(task="inr-class", zoo=str(inr_zoo.root), mode="quasi", **TINY)
    mp.spawn(_failing_worker, args=(2, _free_port(), asdict(cfg), str(tmp_path / "run"), fail),
             nprocs=2, join=True)
    ends = [json.loads((tmp_path / f"fail-rank{r}.json").read_text()) for r in range(2)]
    assert ends[fail]["error"] == f"RuntimeError: injected failure on rank {fail}"
    other = ends[1 - fail]["error"]
    # the other rank names the failing one and its error, instead of waiting for the timeout
    assert other == f"TaskError: rank {fail} failed: RuntimeError: injected failure on rank " \
                    f"{fail}", other
    assert all(e["seconds"] < 120 for e in ends)
