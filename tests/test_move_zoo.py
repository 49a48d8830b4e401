"""scripts/move_zoo.py (paramgraph.tasks.zoo_move): a copy of a zoo whose every network is moved by a random
function-preserving group element; same functions, accuracies, runs and splits, other weights."""

from __future__ import annotations

import json

import pytest
import torch

from paramgraph.tasks.digits import dataset
from paramgraph.tasks.zoo import Zoo, make_zoo
from script_loader import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("move_zoo")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo") / "cnn", "cnn", 16, seed=4, progress=False)


@pytest.fixture(scope="module")
def moved(script, source, tmp_path_factory):
    out = tmp_path_factory.mktemp("moved") / "moved"
    script.main(["--zoo", str(source.root), "--scale-range", "4", "--out", str(out),
                 "--no-progress"])
    return Zoo(out)


def test_every_network_computes_the_same_function_with_other_weights(source, moved):
    x = dataset("test")[0][:64]
    for i in range(len(source)):
        a, b = source.model(i), moved.model(i)
        with torch.no_grad():
            want, got = a(x), b(x)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
        sa, sb = source.state_dict(i), moved.state_dict(i)
        assert list(sa) == list(sb)
        # the control: the weights themselves moved (scales, signs or order)
        assert max(float((sa[k] - sb[k]).abs().max()) for k in sa) > 1e-2
        keep = {k: v for k, v in source.rows[i].items() if k != "sha256"}
        assert {k: v for k, v in moved.rows[i].items() if k != "sha256"} == keep
        assert moved.rows[i]["sha256"] != source.rows[i]["sha256"]
    assert moved.splits == source.splits
    assert json.loads((moved.root / "zoo.json").read_text())["moved"]["scale_range"] == 4


def test_eval_on_another_zoo_scores_the_moved_networks(source, moved, tmp_path, capsys):
    """``paramgraph eval RUN --zoo MOVED``: a quasi metanet trained on the source zoo predicts
    the moved test networks as it predicts their sources (exactly invariant, with its tree
    prior); a perm metanet does not (the control). The run's own evaluation file stays."""
    from paramgraph.tasks.cli import main

    preds = {}
    for mode in ("quasi", "perm"):
        run = tmp_path / mode
        assert main(["train", "--task", "generalization", "--zoo", str(source.root), "--mode",
                     mode, "--out", str(run), "--epochs", "1", "--hidden", "8", "--layers", "1",
                     "--batch-size", "8", "--threads", "1", "--no-progress"]) == 0
        assert main(["eval", str(run)]) == 0
        own = (run / "eval-test.json").read_bytes()
        assert main(["eval", str(run), "--zoo", str(moved.root)]) == 0
        assert f"of {moved.root}" in capsys.readouterr().out
        assert (run / "eval-test.json").read_bytes() == own
        on_moved = json.loads((run / "eval-test-on-moved.json").read_text())
        mine = json.loads(own)
        assert on_moved["net_id"] == mine["net_id"] and on_moved["true"] == mine["true"]
        preds[mode] = (torch.tensor(mine["pred"]), torch.tensor(on_moved["pred"]))
    assert (preds["quasi"][0] - preds["quasi"][1]).abs().max() <= 1e-5
    assert (preds["perm"][0] - preds["perm"][1]).abs().max() > 1e-3


def test_refuses_to_overwrite_and_leaves_nothing_after_a_failure(script, source, tmp_path,
                                                                  monkeypatch):
    (tmp_path / "there").mkdir()
    with pytest.raises(SystemExit, match="exists"):
        script.main(["--zoo", str(source.root), "--out", str(tmp_path / "there")])
    import paramgraph.tasks.zoo_move as zoo_move

    monkeypatch.setattr(zoo_move, "CHECK_TOLERANCE", -1.0)  # every check fails
    with pytest.raises(SystemExit, match="another function"):
        script.main(["--zoo", str(source.root), "--out", str(tmp_path / "bad"),
                     "--no-progress"])
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
