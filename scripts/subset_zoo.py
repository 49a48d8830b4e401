"""A zoo whose splits keep only the networks whose metadata match, e.g. the tanh half of a zoo:

    python scripts/subset_zoo.py --zoo zoos/cnn-2000-s0 --where spec.act=tanh \\
        --out zoos/cnn-2000-s0-tanh

Every network, row and metadata file is kept (hard links where the file system allows, else
copies), so ids, runs and checkpoints are those of the source zoo; only ``splits.json`` is
filtered, which is what training, evaluation and the baseline read. The graph cache is not
carried over (its key depends on the splits; the first training run rebuilds it). Used for the
README's "trained on one family alone" rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def metadata_value(row: dict, dotted: str):
    """``row["spec"]["act"]`` for ``"spec.act"``; ``None`` where a key is missing."""
    for key in dotted.split("."):
        row = row.get(key) if isinstance(row, dict) else None
    return row


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def subset_zoo(zoo: Path, out: Path, key: str, value: str) -> dict[str, int]:
    """Write the subset zoo to ``out`` (which must not exist); returns each split's size."""
    if out.exists():
        raise SystemExit(f"subset_zoo: '{out}' exists; choose another --out")
    rows = [json.loads(line) for line in (zoo / "metadata.jsonl").read_text().splitlines()
            if line.strip()]
    keep = {r["id"] for r in rows if str(metadata_value(r, key)) == value}
    if not keep:
        raise SystemExit(f"subset_zoo: no network of '{zoo}' has {key} = {value}")
    splits = json.loads((zoo / "splits.json").read_text())
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for path in zoo.rglob("*"):
        rel = path.relative_to(zoo)
        if rel.parts[0] == "cache" or rel.name == "splits.json":
            continue
        if path.is_dir():
            (tmp / rel).mkdir(parents=True, exist_ok=True)
        else:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, tmp / rel)
    subset = {name: ([i for i in ids if i in keep] if isinstance(ids, list) else ids)
              for name, ids in splits.items()}
    (tmp / "splits.json").write_text(json.dumps(subset, indent=1))
    tmp.rename(out)  # nothing half-written is left under --out
    return {name: len(ids) for name, ids in subset.items() if isinstance(ids, list)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, required=True, help="the source zoo")
    p.add_argument("--where", required=True, metavar="KEY=VALUE",
                   help="a metadata key (dotted for nested ones, e.g. spec.act) and its value")
    p.add_argument("--out", type=Path, required=True, help="the new zoo directory")
    args = p.parse_args(argv)
    if "=" not in args.where:
        raise SystemExit(f"subset_zoo: --where needs KEY=VALUE, got '{args.where}'")
    key, value = args.where.split("=", 1)
    sizes = subset_zoo(args.zoo, args.out, key, value)
    print(f"{args.out}: {', '.join(f'{n} {k}' for n, k in sizes.items())} networks "
          f"with {key} = {value}")


if __name__ == "__main__":
    sys.exit(main())
