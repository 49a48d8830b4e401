"""Training runs: the loss goes down, a resumed run ends exactly where an uninterrupted one
does, outputs (metrics, best checkpoint, plots) are written, and bad input gives clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from paramgraph.tasks.errors import RunError, TaskError, ZooError
from paramgraph.tasks.train import (TrainConfig, build_metanet, evaluate_run, lr_factor, plot_run,
                                    train, with_task_defaults)
from paramgraph.tasks.zoo import make_zoo

TINY = dict(hidden=16, layers=2, batch_size=4, lr=3e-3)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo") / "cnn", "cnn", 20, seed=5, progress=False)


def _train_loss(net, objective, dataset) -> float:
    from paramgraph.tasks.train import predict

    pred, y, _ = predict(net, objective, dataset, 64)
    return float(objective.loss(pred, y))


def test_training_lowers_the_loss(zoo, tmp_path):
    from paramgraph.tasks.data import ZooDataset
    from paramgraph.tasks.objectives import get_objective

    objective = get_objective("generalization")
    cfg = with_task_defaults(TrainConfig(task="generalization", zoo=str(zoo.root), mode="quasi",
                                         epochs=4, **TINY), objective)
    torch.manual_seed(cfg.seed)
    initial = build_metanet(cfg, objective)  # the run starts from exactly this network
    train_set = ZooDataset(zoo, "train", "test_acc", progress=False)
    before = _train_loss(initial, objective, train_set)
    summary = train(cfg, tmp_path / "run", threads=1, progress=False)
    assert summary["complete"] and summary["epochs_done"] == 4
    final = build_metanet(cfg, objective)
    final.load_state_dict(torch.load(tmp_path / "run" / "resume.pt", weights_only=True)["model"])
    after = _train_loss(final, objective, train_set)
    assert after < 0.5 * before
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("epoch,lr,train_loss")


@pytest.mark.parametrize("task_mode", [("generalization", "strict", 0.0),
                                       ("generalization", "perm", 0.9)])
def test_a_resumed_run_ends_like_an_uninterrupted_one(zoo, tmp_path, task_mode):
    task, mode, ema = task_mode  # with a moving average of the weights, it is resumed too
    cfg = TrainConfig(task=task, zoo=str(zoo.root), mode=mode, epochs=3, ema=ema, **TINY)
    full = train(cfg, tmp_path / "full", threads=1, progress=False)
    part = train(cfg, tmp_path / "part", threads=1, progress=False, stop_after=1)
    assert not part["complete"] and part["epochs_done"] == 1
    # an interruption in the middle of epoch 2 leaves at most a stray temporary file behind
    (tmp_path / "part" / ".resume.pt.xyz.tmp").write_bytes(b"partial")
    train(None, tmp_path / "part", resume=True, threads=1, progress=False, stop_after=1)
    resumed = train(None, tmp_path / "part", resume=True, threads=1, progress=False)
    assert resumed["complete"] and resumed["best_epoch"] == full["best_epoch"]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for key in ra:
            if key in ("seconds", "graphs_per_s"):  # wall-clock timings
                continue
            assert math.isclose(ra[key], rb[key], rel_tol=1e-6, abs_tol=1e-9), (key, ra, rb)
    wa = load_file(str(tmp_path / "full" / "best.safetensors"))
    wb = load_file(str(tmp_path / "part" / "best.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    ea = evaluate_run(tmp_path / "full", "test")["metrics"]
    eb = evaluate_run(tmp_path / "part", "test")["metrics"]
    assert ea == pytest.approx(eb, rel=1e-6, abs=1e-9, nan_ok=True)


def test_the_seed_decides_the_run(zoo, tmp_path):
    cfg = TrainConfig(task="generalization", zoo=str(zoo.root), mode="perm", epochs=1, **TINY)
    train(cfg, tmp_path / "a", threads=1, progress=False)
    train(cfg, tmp_path / "b", threads=1, progress=False)
    cfg.seed = 1
    train(cfg, tmp_path / "c", threads=1, progress=False)
    wa, wb, wc = (load_file(str(tmp_path / r / "best.safetensors")) for r in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_a_swapped_run_selects_on_test_and_scores_validation(zoo, tmp_path):
    """--splits swap: the same training split; the kept epoch is chosen on the zoo's test
    split, and the run's 'test' scores are the zoo's validation networks."""
    cfg = TrainConfig(task="generalization", zoo=str(zoo.root), mode="perm", epochs=2,
                      splits="swap", **TINY)
    plain = dataclasses.replace(cfg, splits="id")
    train(cfg, tmp_path / "swap", threads=1, progress=False)
    train(plain, tmp_path / "id", threads=1, progress=False)
    swapped, ordinary = (evaluate_run(tmp_path / r, "test", threads=1) for r in ("swap", "id"))
    assert swapped["zoo_split"] == "val" and ordinary["zoo_split"] == "test"
    stored = json.loads((tmp_path / "swap" / "eval-test.json").read_text())
    assert stored["net_id"] == zoo.split("val")
    # the same training: the same losses; validated on other networks: other scores
    curves = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("swap", "id")]
    assert [h["train_loss"] for h in curves[0]] == [h["train_loss"] for h in curves[1]]
    assert [h["val_mse"] for h in curves[0]] != [h["val_mse"] for h in curves[1]]


def test_the_baseline_scores_the_split_set_it_is_given(zoo, capsys):
    from paramgraph.tasks.cli import main

    args = ["baseline", "--task", "generalization", "--zoo", str(zoo.root)]
    assert main(args) == 0 and "(test): kendall_tau" in capsys.readouterr().out
    assert main(args + ["--splits", "swap"]) == 0
    assert "(val): kendall_tau" in capsys.readouterr().out


def test_lr_schedule_warms_up_then_decays():
    total = 100
    f = [lr_factor(s, total, 0.1, 0.01) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.01, abs=0.01)


def test_eval_plot_and_cli(zoo, tmp_path, capsys):
    from paramgraph.tasks.cli import main

    run = tmp_path / "run"
    assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--mode", "quasi",
                 "--out", str(run), "--epochs", "2", "--hidden", "8", "--layers", "1",
                 "--batch-size", "8", "--threads", "1", "--no-progress"]) == 0
    assert "2 epochs, complete" in capsys.readouterr().out
    assert (run / "best.safetensors").is_file() and (run / "best.json").is_file()
    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["metrics"]) == {"kendall_tau", "r2", "mse"}
    assert result["n"] == len(zoo.split("test"))
    assert main(["plot", str(run)]) == 0
    paths = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[-1] for p in paths} == {"curves.png", "scatter-test.png"}
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the same --out again without --resume is refused; --resume of a finished run is a no-op
    assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--out", str(run),
                 "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0


def test_bad_input_gives_clear_errors(zoo, tmp_path, capsys):
    from paramgraph.tasks.cli import main

    with pytest.raises(ZooError, match="does not exist"):
        train(TrainConfig(task="generalization", zoo=str(tmp_path / "nozoo")), tmp_path / "r1",
              progress=False)
    with pytest.raises(TaskError, match="unknown task 'segmentation'"):
        train(TrainConfig(task="segmentation", zoo=str(zoo.root)), tmp_path / "r2",
              progress=False)
    with pytest.raises(TaskError, match="unknown mode"):
        train(TrainConfig(task="generalization", zoo=str(zoo.root), mode="equivariant"),
              tmp_path / "r3", progress=False)
    with pytest.raises(TaskError, match="needs a inr zoo"):
        train(TrainConfig(task="inr-class", zoo=str(zoo.root)), tmp_path / "r4", progress=False)
    with pytest.raises(RunError, match="cannot resume"):
        train(None, tmp_path / "r5", resume=True, progress=False)
    with pytest.raises(RunError, match="does not exist"):
        evaluate_run(tmp_path / "r6")
    with pytest.raises(RunError):
        plot_run(tmp_path / "r6")
    # corrupt metadata: one line that names the file and the line
    bad = tmp_path / "badzoo"
    shutil.copytree(zoo.root, bad, ignore=shutil.ignore_patterns("cache"))
    lines = (bad / "metadata.jsonl").read_text().splitlines()
    lines[4] = "{broken"
    (bad / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    status = main(["train", "--task", "generalization", "--zoo", str(bad), "--out",
                   str(tmp_path / "r7"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "metadata.jsonl' line 5 is corrupt" in err[0]
    assert main(["train", "--task", "nonsense", "--zoo", str(zoo.root), "--out",
                 str(tmp_path / "r8")]) == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing-run")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_refuses_a_changed_zoo(zoo, tmp_path):
    local = tmp_path / "zoo"
    shutil.copytree(zoo.root, local, ignore=shutil.ignore_patterns("cache"))
    cfg = TrainConfig(task="generalization", zoo=str(local), mode="perm", epochs=2, **TINY)
    train(cfg, tmp_path / "run", threads=1, progress=False, stop_after=1)
    splits = json.loads((local / "splits.json").read_text())
    splits["train"], splits["val"] = splits["train"][:-1], splits["val"] + splits["train"][-1:]
    (local / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(RunError, match="has changed"):
        train(None, tmp_path / "run", resume=True, threads=1, progress=False)


def test_weight_average_follows_its_formula():
    from paramgraph.tasks.averaging import WeightAverage

    net = torch.nn.Linear(3, 2)
    avg = WeightAverage(net, 0.9)
    start = [p.detach().clone() for p in net.parameters()]
    want = [p.clone() for p in start]
    for step in range(1, 40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * step)
        avg.update(net)
        keep = min(0.9, (1 + step) / (10 + step))
        want = [keep * w + (1 - keep) * p.detach() for w, p in zip(want, net.parameters())]
    for got, w, p in zip(avg.net.parameters(), want, net.parameters()):
        assert torch.allclose(got, w, atol=1e-5) and not torch.allclose(got, p)
        assert not got.requires_grad
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, 1.0)


def test_a_run_with_a_weight_average_keeps_the_average(zoo, tmp_path, capsys):
    """--ema: validation scores and best.safetensors come from the averaged weights (the raw
    ones stay in resume.pt), and the command line takes it."""
    from paramgraph.tasks.cli import main

    cfg = TrainConfig(task="generalization", zoo=str(zoo.root), mode="perm", epochs=2, ema=0.5,
                      **TINY)
    summary = train(cfg, tmp_path / "avg", threads=1, progress=False)
    saved = torch.load(tmp_path / "avg" / "resume.pt", weights_only=True)
    best = load_file(str(tmp_path / "avg" / "best.safetensors"))
    if summary["best_epoch"] == 2:
        assert all(torch.equal(best[k], saved["average"]["model"][k]) for k in best)
    assert not all(torch.equal(saved["average"]["model"][k], saved["model"][k]) for k in best)
    plain = train(dataclasses.replace(cfg, ema=0.0), tmp_path / "plain", threads=1,
                  progress=False)
    assert plain["best"] != summary["best"]  # the same training, other weights scored
    assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--mode", "perm",
                 "--epochs", "1", "--hidden", "16", "--layers", "2", "--batch-size", "4",
                 "--ema", "0.9", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["config"]["ema"] == 0.9
    capsys.readouterr()
    status = main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--ema", "1.5",
                   "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert status == 2 and "expected a number in [0, 1), got '1.5'" in err
    assert not (tmp_path / "bad").exists()


def test_each_task_trains_with_its_defaults_unless_the_run_sets_them(zoo, tmp_path):
    """generalization trains with the combination measured best (weight decay 0.3, moving
    average 0.99, rank term 1, output readout, tree prior), other tasks with models.defaults.TRAINING; a
    setting given on the command line wins, and the run's config names every value used."""
    from paramgraph.models.defaults import TRAINING
    from paramgraph.tasks.cli import main
    from paramgraph.tasks.objectives import get_objective

    def config(name: str, *flags: str) -> dict:
        assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--epochs",
                     "1", "--hidden", "16", "--layers", "2", "--batch-size", "4", "--threads",
                     "1", "--no-progress", "--out", str(tmp_path / name), *flags]) == 0
        return json.loads((tmp_path / name / "config.json").read_text())["config"]

    task = config("task")
    assert (task["weight_decay"], task["ema"], task["rank_loss"]) == (0.3, 0.99, 1.0)
    assert task["model_kwargs"] == {"output_readout": True, "prior": True}
    own = config("own", "--weight-decay", "0.1", "--ema", "0", "--rank-loss", "0",
                 "--no-output-readout", "--no-prior")
    assert (own["weight_decay"], own["ema"], own["rank_loss"]) == (0.1, 0.0, 0.0)
    assert own["model_kwargs"] == {"output_readout": False, "prior": False}
    regression = with_task_defaults(TrainConfig(task="regression", target="test_acc",
                                                zoo=str(zoo.root)),
                                    get_objective("regression", "test_acc"))
    assert {k: getattr(regression, k) for k in TRAINING} == TRAINING
    assert regression.model_kwargs == {}


def test_model_options_reach_the_run_config(zoo, tmp_path, monkeypatch):
    """--compile, --copies and --channels become the metanet's options in the run's config
    (compiling itself would take minutes here; its eager fallback is tested in test_metanet)."""
    import paramgraph.tasks.train as train_module
    from paramgraph.tasks.cli import main

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, out, **kw: seen.append(cfg) or {
        "run": str(out), "epochs_done": 1, "complete": True, "best_epoch": 1, "best": {},
        "graphs_per_s": None, "seconds": 0.0})
    args = ["train", "--task", "generalization", "--zoo", str(zoo.root), "--no-progress",
            "--out", str(tmp_path / "r")]
    assert main(args + ["--compile"]) == 0 and main(args) == 0
    assert main(args + ["--compile", "--copies", "3"]) == 0
    assert main(args + ["--channels", "0"]) == 0
    assert main(args + ["--edge-width", "16"]) == 0
    assert main(args + ["--gauge-frames", "balanced/bias", "unit/incoming", "--prior-input"]) == 0
    assert [c.model_kwargs for c in seen] == [{"compile": True}, {},
                                              {"copies": 3, "compile": True}, {"channels": 0},
                                              {"edge_width": 16},
                                              {"gauge_frames": ["balanced/bias", "unit/incoming"],
                                               "prior_input": True}]


def test_augmentation_moves_the_training_networks_within_their_orbits(zoo, tmp_path, capsys):
    """--augment R: the metanet reads networks moved by random scales in [1/R, R] and signs,
    which compute exactly what they computed (every network of the metanet test catalogue); a
    perm run trains differently with it, a quasi run (invariant) the same to float rounding;
    R <= 1 is refused with one line."""
    from torch_geometric.data import Batch

    from metanet_nets import assert_same_functions, graphs
    from paramgraph.models import prepare
    from paramgraph.tasks.augment import moved_values
    from paramgraph.tasks.cli import main

    names, modules, gs = graphs(seeds=(0,))
    batch, st = prepare(Batch.from_data_list(gs))
    torch.manual_seed(3)
    edge, node = moved_values(st, batch.edge_value, batch.node_value, 4.0)
    ratio = (edge / batch.edge_value)[batch.edge_value.abs() > 1e-6].abs()
    assert ratio.min() >= 1 / 16 - 1e-9 and ratio.max() <= 16 + 1e-9 and ratio.std() > 0.1
    assert (edge * batch.edge_value < 0).any()  # some signs flipped
    assert_same_functions(names, modules, batch.with_values(edge, node).to_data_list(), 4,
                          rtol=1e-8, atol=1e-10)

    def run(name: str, mode: str, *flags: str) -> list[float]:
        assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--mode", mode,
                     "--epochs", "1", "--hidden", "16", "--layers", "2", "--batch-size", "4",
                     "--threads", "1", "--no-progress", "--out", str(tmp_path / name),
                     *flags]) == 0
        return [r["train_loss"] for r in json.loads((tmp_path / name / "metrics.json")
                                                    .read_text())]

    assert run("perm-aug", "perm", "--augment", "4") != pytest.approx(run("perm", "perm"),
                                                                      rel=1e-3)
    assert run("quasi-aug", "quasi", "--augment", "4") == pytest.approx(run("quasi", "quasi"),
                                                                         rel=1e-4)
    capsys.readouterr()
    assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--augment", "0.5",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--augment R moves scales within [1/R, R] and needs R > 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_bf16_precision_lowers_the_matrix_products_of_training_only(zoo, tmp_path, capsys):
    """--precision bf16: the training forward's matrix products run in bfloat16 (the losses
    differ from an fp32 run's, though not by much), the loss and the weights stay float32,
    the run's config names the precision, and the kept metanet evaluates in float32; an
    unknown precision is refused with one line."""
    from torch_geometric.data import Batch

    from paramgraph.tasks.cli import main
    from paramgraph.tasks.data import ZooDataset
    from paramgraph.tasks.objectives import get_objective
    from paramgraph.tasks.precision import training_autocast

    def run(name: str, *flags: str) -> list[float]:
        assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--mode",
                     "quasi", "--epochs", "2", "--hidden", "16", "--layers", "2",
                     "--batch-size", "4", "--threads", "1", "--no-progress", "--out",
                     str(tmp_path / name), *flags]) == 0
        return [r["train_loss"] for r in json.loads((tmp_path / name / "metrics.json")
                                                    .read_text())]

    fp32, bf16 = run("fp32"), run("bf16", "--precision", "bf16")
    assert fp32 != bf16 and bf16 == pytest.approx(fp32, rel=0.1)
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert cfg["config"]["precision"] == "bf16"
    kept = load_file(tmp_path / "bf16" / "best.safetensors")
    assert {t.dtype for t in kept.values() if t.is_floating_point()} == {torch.float32}
    # the metanet's output is bfloat16 inside the autocast and float32 outside it
    objective = get_objective("generalization")
    net = build_metanet(with_task_defaults(TrainConfig(task="generalization", zoo=str(zoo.root),
                                                       **TINY), objective), objective)
    batch = Batch.from_data_list([ZooDataset(zoo, "train", "test_acc", progress=False)[i]
                                  for i in range(3)])
    with training_autocast("bf16", "cpu"):
        assert objective.predict(net, batch).dtype == torch.bfloat16
    assert objective.predict(net, batch).dtype == torch.float32
    with training_autocast("fp32", "cpu"):
        assert objective.predict(net, batch).dtype == torch.float32
    capsys.readouterr()
    assert main(["train", "--task", "generalization", "--zoo", str(zoo.root), "--precision",
                 "fp16", "--out", str(tmp_path / "bad")]) != 0
    with pytest.raises(TaskError, match="unknown precision 'fp16'"):
        train(TrainConfig(task="generalization", zoo=str(zoo.root), precision="fp16", **TINY),
              tmp_path / "bad2", progress=False)
    assert not (tmp_path / "bad2").exists()
