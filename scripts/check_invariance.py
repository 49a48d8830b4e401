"""How far a metanet's predictions move under function-preserving symmetries, over a whole split.

    .venv/bin/python scripts/check_invariance.py RUN [RUN ...] [--split test] [--draws 3]

For every network of the split (collapsed ones included) and ``--draws`` random elements of its
symmetry group (permutations, positive scales in ``--scale-range``, sign flips and attention
head maps; ``--no-heads`` leaves the head maps out), the run's best metanet predicts the original and the moved network in the
run's own dtype; the table gives the largest and the 99th-percentile absolute change of the
prediction (the task's output: accuracy, class probabilities, image), and how many networks are
*collapsed* (a hidden channel whose incoming weights have norm below 1e-6). JSON with every
number goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def collapsed(graph, threshold: float = 1e-6) -> bool:
    """Whether a hidden neuron's incoming weight values have an L2 norm below ``threshold``."""
    import torch
    from torch_geometric.utils import scatter

    from paramgraph.types import NodeType

    ss = scatter(graph.edge_value.double().square(), graph.value_edges(), 0,
                 dim_size=graph.edge_index.shape[1], reduce="sum")
    weight = graph.weight_edge_mask()
    incoming = scatter(torch.where(weight, ss, torch.zeros_like(ss)), graph.edge_index[1], 0,
                       dim_size=graph.num_nodes, reduce="sum")
    hidden = graph.node_type == int(NodeType.HIDDEN)
    return bool((hidden & (incoming.sqrt() < threshold)).any())


def check_run(run: str, split: str, draws: int, scale_range: tuple[float, float],
              batch_size: int = 64, heads: bool = True) -> dict:
    """Largest and p99 prediction change of ``run``'s metanet over ``split``."""
    import numpy as np
    import torch
    from torch_geometric.data import Batch

    import paramgraph
    from paramgraph.models import prepare
    from paramgraph.tasks.train import RunData, load_run

    cfg, objective, net, _ = load_run(run)
    data = RunData(cfg, objective, progress=False)
    dataset = data.sets[split]
    graphs = [dataset[k] for k in range(len(dataset))]
    gen = torch.Generator().manual_seed(0)
    changes, flags = [], [collapsed(g) for g in graphs]

    def predict(nets):
        batch, structure = prepare(Batch.from_data_list(nets))
        return objective.predict(net, batch, data.hidden, structure)

    with torch.no_grad():
        for start in range(0, len(graphs), batch_size):
            chunk = graphs[start:start + batch_size]
            base = predict(chunk)
            for _ in range(draws):
                moved = [paramgraph.random_symmetry(g, generator=gen, heads=heads,
                                                    scale_range=scale_range) for g in chunk]
                pred = predict(moved)
                diff = (pred - base).abs().reshape(len(chunk), -1).amax(1)
                changes.append(diff)
    per_net = torch.stack([torch.cat(changes[i::draws]) for i in range(draws)]).amax(0)
    per_net = per_net.double().numpy()
    return {"run": run, "mode": cfg.mode, "split": split, "networks": len(graphs),
            "collapsed": int(sum(flags)), "max_change": float(per_net.max()),
            "p99_change": float(np.quantile(per_net, 0.99)),
            "max_change_collapsed": float(per_net[np.array(flags)].max()) if any(flags) else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.01, 100.0))
    p.add_argument("--no-heads", action="store_true",
                   help="leave attention head maps out of the drawn elements")
    p.add_argument("--out", default="bench_results/invariance.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = [check_run(r, args.split, args.draws, tuple(args.scale_range),
                      heads=not args.no_heads) for r in args.runs]
    print("| run | mode | networks | collapsed | max change | p99 change | max on collapsed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        coll = "—" if r["max_change_collapsed"] is None else f"{r['max_change_collapsed']:.2e}"
        print(f"| {r['run']} | {r['mode']} | {r['networks']} | {r['collapsed']} | "
              f"{r['max_change']:.2e} | {r['p99_change']:.2e} | {coll} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
