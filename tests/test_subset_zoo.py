"""scripts/subset_zoo.py: a zoo whose splits keep only the networks whose metadata match; every
file but the splits is the source's, and the result trains and evaluates like any zoo."""

from __future__ import annotations

import json

import pytest

from paramgraph.tasks.zoo import Zoo, make_zoo
from script_loader import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("subset_zoo")


def test_subset_keeps_the_matching_networks_of_every_split(script, tmp_path):
    source = make_zoo(tmp_path / "cnn", "cnn", 16, seed=4, progress=False)
    acts = {r["id"]: r["spec"]["act"] for r in source.rows}
    act = acts[0]
    script.main(["--zoo", str(source.root), "--where", f"spec.act={act}",
                 "--out", str(tmp_path / "sub")])
    sub = Zoo(tmp_path / "sub")
    for name in ("train", "val", "test"):
        want = [i for i in source.split(name) if acts[i] == act]
        assert sub.split(name) == want
    assert sum(len(sub.split(n)) for n in ("train", "val", "test")) < len(acts)  # the control
    assert (tmp_path / "sub" / "metadata.jsonl").read_bytes() == \
        (source.root / "metadata.jsonl").read_bytes()
    assert sub.state_dict(sub.split("train")[0]).keys() == source.state_dict(0).keys()
    assert not (tmp_path / "sub" / "cache").exists()
    with pytest.raises(SystemExit, match="exists"):
        script.main(["--zoo", str(source.root), "--where", f"spec.act={act}",
                     "--out", str(tmp_path / "sub")])
    with pytest.raises(SystemExit, match="no network"):
        script.main(["--zoo", str(source.root), "--where", "spec.act=softsign",
                     "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists() and not (tmp_path / "none.partial").exists()
    assert json.loads((tmp_path / "sub" / "splits.json").read_text())["test"] == sub.split("test")
