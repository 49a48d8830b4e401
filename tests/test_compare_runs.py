"""scripts/compare_runs.py: the paired bootstrap over a split's runs separates a method that ranks
the networks from one that does not, and gives identical methods a difference of exactly zero."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from script_loader import load_script


class _FakeZoo:
    """What the script reads of a zoo: a split, the targets and each network's run."""

    def __init__(self, root):
        rng = np.random.default_rng(1)
        self.root = root
        self.rows = [{"run": i // 4} for i in range(320)]  # 80 runs of 4 checkpoints
        self.acc = rng.uniform(0.1, 0.9, 320).tolist()

    def split(self, name):
        return {"test": list(range(160)), "val": list(range(160, 320))}.get(name, [])

    def column(self, name):
        assert name == "test_acc"
        return self.acc


@pytest.fixture()
def compare(monkeypatch):
    import paramgraph.tasks.zoo

    monkeypatch.setattr(paramgraph.tasks.zoo, "Zoo", _FakeZoo)
    return load_script("compare_runs")


def _fake_run(runs: Path, name: str, ids: list[int], pred) -> None:
    run = runs / name
    run.mkdir(parents=True)
    (run / "eval-test.json").write_text(json.dumps(
        {"net_id": ids, "pred": [float(v) for v in pred]}))


def test_bootstrap_separates_a_ranking_from_noise(compare, tmp_path, capsys):
    zoo = _FakeZoo(tmp_path)
    ids, true = zoo.split("test"), np.asarray(zoo.acc)[:160]
    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    for seed in (0, 1):
        wobble = 0.05 * np.sin(np.arange(160) * (seed + 1))
        _fake_run(runs, f"same-s{seed}", ids, true + wobble)
        _fake_run(runs, f"twin-s{seed}", ids, true + wobble)  # the control: identical
        _fake_run(runs, f"noise-s{seed}", ids, rng.standard_normal(160))
    out = tmp_path / "cmp.json"
    assert compare.main(["--zoo", "z", "--runs", str(runs), "--methods", "same", "twin",
                         "noise", "--draws", "200", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["same"]["kendall_tau"] > 0.8 and rows["same"]["seeds"] == [0, 1]
    assert rows["twin"]["minus_reference"] == 0.0
    assert rows["twin"]["difference_interval"] == [0.0, 0.0] and rows["twin"]["p_above"] == 0.0
    lo, hi = rows["noise"]["difference_interval"]
    assert hi < -0.5 and rows["noise"]["p_above"] == 0.0  # worse on every resample
    lo, hi = rows["same"]["interval"]
    assert lo < rows["same"]["kendall_tau"] < hi < 1.0
    assert "160 networks of 40 runs" in capsys.readouterr().out


def test_a_run_of_another_split_is_refused(compare, tmp_path):
    ids = _FakeZoo(tmp_path).split("test")
    _fake_run(tmp_path / "runs", "m-s0", ids[:-1], np.zeros(len(ids) - 1))
    with pytest.raises(SystemExit, match="m seed 0: its predictions are not of the zoo's"):
        compare.main(["--zoo", "z", "--runs", str(tmp_path / "runs"), "--methods", "m"])
    with pytest.raises(SystemExit, match="no finished runs 'other-sSEED'"):
        compare.main(["--zoo", "z", "--runs", str(tmp_path / "runs"), "--methods", "other"])


def test_two_fold_scores_test_and_validation_runs_together(compare, tmp_path, capsys):
    zoo = _FakeZoo(tmp_path)
    acc = np.asarray(zoo.acc)
    runs = tmp_path / "runs"
    for seed in (0, 1):  # good on the test split, useless on the validation one
        _fake_run(runs, f"m-s{seed}", zoo.split("test"), acc[:160])
        _fake_run(runs, f"m-swap-s{seed}", zoo.split("val"), -acc[160:])
        _fake_run(runs, f"exact-s{seed}", zoo.split("test"), acc[:160])
        _fake_run(runs, f"exact-swap-s{seed}", zoo.split("val"), acc[160:])
    _fake_run(runs, "exact-s2", zoo.split("test"), acc[:160])  # no swap run: left out
    out = tmp_path / "cmp.json"
    assert compare.main(["--zoo", "z", "--runs", str(runs), "--methods", "exact", "m",
                         "--two-fold", "--draws", "50", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["exact"]["kendall_tau"] == pytest.approx(1.0)
    assert rows["exact"]["seeds"] == [0, 1]
    assert abs(rows["m"]["kendall_tau"]) < 0.2  # right on half the runs, reversed on the rest
    assert "test+val split: 320 networks of 80 runs" in capsys.readouterr().out
