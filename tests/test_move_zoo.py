"""scripts/move_zoo.py: a copy of a zoo whose every network is moved by a random
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


def test_every_network_computes_the_same_function_with_other_weights(script, source, tmp_path):
    script.main(["--zoo", str(source.root), "--scale-range", "4", "--out",
                 str(tmp_path / "moved"), "--no-progress"])
    moved = Zoo(tmp_path / "moved")
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
    assert json.loads((tmp_path / "moved" / "zoo.json").read_text())["moved"]["scale_range"] == 4


def test_refuses_to_overwrite_and_leaves_nothing_after_a_failure(script, source, tmp_path,
                                                                  monkeypatch):
    (tmp_path / "there").mkdir()
    with pytest.raises(SystemExit, match="exists"):
        script.main(["--zoo", str(source.root), "--out", str(tmp_path / "there")])
    monkeypatch.setattr(script, "CHECK_TOLERANCE", -1.0)  # every check fails
    with pytest.raises(SystemExit, match="another function"):
        script.main(["--zoo", str(source.root), "--out", str(tmp_path / "bad"),
                     "--no-progress"])
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
