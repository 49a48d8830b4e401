"""Sharded zoo generation: N shards written into one directory and merged equal one unsharded
zoo make with the same seed, byte for byte; merging early names what is missing."""

from __future__ import annotations

import pytest

from paramgraph.tasks.cli import main
from paramgraph.tasks.errors import ZooError
from paramgraph.tasks.sharding import parse_shard, select_units
from paramgraph.tasks.zoo import Zoo, make_zoo, merge_zoo


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for sub in ("nets", "rows") for p in sorted((root / sub).iterdir())}


def test_two_shards_merged_equal_one_unsharded_zoo(tmp_path, capsys):
    # 14 networks, 4 checkpoints per run: 4 runs, the last one short
    whole = make_zoo(tmp_path / "whole", "hetero", 14, seed=7, progress=False)

    shard_dir = tmp_path / "sharded"
    assert make_zoo(shard_dir, "hetero", 14, seed=7, progress=False, shard=(1, 2)) is None
    with pytest.raises(ZooError, match="missing"):  # shard 0 has not run: merge names the gap
        merge_zoo(shard_dir)
    with pytest.raises(ZooError, match="unfinished"):
        Zoo(shard_dir)
    # the second shard through the command line; being the last, it merges the zoo
    assert main(["zoo", "make", "--kind", "hetero", "--size", "14", "--seed", "7", "--out",
                 str(shard_dir), "--shard", "0/2", "--no-progress"]) == 0
    assert "14 hetero networks" in capsys.readouterr().out
    merged = Zoo(shard_dir)
    assert merged.fingerprint() == whole.fingerprint()
    for name in ("metadata.jsonl", "metadata.csv", "splits.json"):
        assert (shard_dir / name).read_bytes() == (whole.root / name).read_bytes(), name
    assert _files(shard_dir) == _files(whole.root)
    # an explicit merge gives the same again
    assert main(["zoo", "merge", str(shard_dir)]) == 0
    assert Zoo(shard_dir).fingerprint() == whole.fingerprint()


def test_shards_partition_the_units():
    from paramgraph.tasks.zoo import work_units

    units = work_units(None, "cnn", 40, 0, 4, 10, [8])
    parts = [select_units(units, (i, 3)) for i in range(3)]
    ids = sorted(i for part in parts for u in part for i in u.ids)
    assert ids == list(range(40))
    assert [len(p) for p in parts] == [4, 3, 3]


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/3", "0/0"])
def test_bad_shard_is_refused(text):
    with pytest.raises(ZooError, match="--shard"):
        parse_shard(text)


def test_shards_must_agree_on_the_size(tmp_path):
    make_zoo(tmp_path / "z", "cnn", 4, seed=1, progress=False, shard=(0, 2))
    with pytest.raises(ZooError, match="size"):
        make_zoo(tmp_path / "z", "cnn", 8, seed=1, progress=False, shard=(1, 2))
