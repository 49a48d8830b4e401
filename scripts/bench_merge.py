"""Loss barriers of linear interpolation between independently trained digit classifiers, with
and without alignment (``paramgraph.align``) and REPAIR (``paramgraph.merge.repair``).

For each architecture (an MLP and small residual CNNs without batch norm, at one or several
widths) and each pair of training seeds, two networks are trained on the bundled digits (the
fixed train split of ``paramgraph.tasks.digits``); the midpoint of the straight line between them
is evaluated on the test split: as they are, after aligning B's permutations to A by weight
matching, after aligning permutations and scales (canonical section), and after activation
matching (permutations, on 256 training images). With ``--repair`` the midpoints of "nothing",
weight matching and activation matching are also evaluated after REPAIR (each hidden channel's
mean and std on the 1437 training images set to the average of the end points', folded into the
layer's weights and bias). The loss barrier is the midpoint's test loss minus the mean of the end
points' losses. Prints a table and one JSON line.

    python scripts/bench_merge.py                    # 3 pairs per architecture, ~3 min on 2 busy cores
    python scripts/bench_merge.py --pairs 5 --epochs 30
    python scripts/bench_merge.py --no-mlp --resnet-width 16,32,64,128 --repair --cache /tmp/nets
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import paramgraph as pg
from paramgraph.activations import neuron_activations
from paramgraph.align import align
from paramgraph.merge import evaluate, interpolate, repair
from paramgraph.tasks.digits import classification_split


class MLP(nn.Module):
    def __init__(self, width: int = 128):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(64, width), nn.Linear(width, width), \
            nn.Linear(width, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class ResNet(nn.Module):
    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.block1, self.block2 = Block(c), Block(c)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.block2(self.block1(F.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


LABELS = ("naive", "permutations", "permutations+scales", "activations")
REPAIRED = ("naive+repair", "permutations+repair", "activations+repair")


def train(make, seed: int, epochs: int, x, y, cache: Path | None = None) -> nn.Module:
    torch.manual_seed(seed)
    net = make()
    if cache is not None and cache.is_file():
        net.load_state_dict(torch.load(cache))
        return net.eval()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(x.size(0), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), cache)
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3, help="seed pairs per architecture")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resnet-width", default="32",
                    help="channels of the ResNet; a comma-separated list runs each (16,32,64)")
    ap.add_argument("--no-mlp", action="store_true", help="ResNets only")
    ap.add_argument("--repair", action="store_true",
                    help="also evaluate the midpoints after REPAIR (on the training images)")
    ap.add_argument("--cache", metavar="DIR",
                    help="keep trained networks here and reuse them (same seeds and epochs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = classification_split()
    archs = {} if args.no_mlp else {"mlp (64-128-128-10)": ("mlp", MLP)}
    for width in (int(w) for w in args.resnet_width.split(",")):
        archs[f"resnet ({width} ch, 2 blocks, no BN)"] = (f"resnet{width}",
                                                          lambda width=width: ResNet(width))
    labels = LABELS + (REPAIRED if args.repair else ())
    rows, record = [], {}
    start = time.time()
    for name, (tag, make) in archs.items():
        record[name] = []

        def cached(seed, tag=tag):
            if args.cache is None:
                return None
            return Path(args.cache) / f"{tag}_e{args.epochs}_s{seed}.pt"

        for k in range(args.pairs):
            na = train(make, 2 * k, args.epochs, x_train, y_train, cached(2 * k))
            nb = train(make, 2 * k + 1, args.epochs, x_train, y_train, cached(2 * k + 1))
            ga = pg.from_module(na, x_test[:2])
            gb = pg.from_module(nb, x_test[:2])
            ends = [evaluate(na, x_test, y_test), evaluate(nb, x_test, y_test)]
            base = (ends[0]["loss"] + ends[1]["loss"]) / 2
            entry = {"seeds": [2 * k, 2 * k + 1],
                     "end_loss": [e["loss"] for e in ends],
                     "end_accuracy": [e["accuracy"] for e in ends],
                     "end_train_loss": [evaluate(n, x_train, y_train)["loss"] for n in (na, nb)]}
            probe = make().eval()
            acts = (neuron_activations(na, ga, x_train[:256]),
                    neuron_activations(nb, gb, x_train[:256]))
            for label, g in (("naive", gb),
                             ("permutations", align(ga, gb, scales=False).graph),
                             ("permutations+scales", align(ga, gb, scales=True).graph),
                             ("activations", align(ga, gb, scales=False, match="activations",
                                                   activations=acts).graph)):
                if label != "naive":  # the aligned B is B's function
                    moved = pg.load_into(make().eval(), g)
                    with torch.no_grad():
                        diff = float((moved(x_test) - nb(x_test)).abs().max())
                    entry[f"{label}_max_output_change"] = diff
                midpoint = interpolate(ga, g, 0.5)
                todo = [(label, midpoint)]
                if args.repair and label + "+repair" in REPAIRED:
                    todo.append((label + "+repair", repair(probe, [ga, g], midpoint, x_train)))
                for key, point in todo:
                    pg.load_into(probe, point)
                    mid = evaluate(probe, x_test, y_test)
                    entry[key] = {"mid_loss": mid["loss"], "mid_accuracy": mid["accuracy"],
                                  "barrier": mid["loss"] - base}
            record[name].append(entry)
            print(f"  {name} seeds {entry['seeds']}: " + ", ".join(
                f"{lab} {entry[lab]['barrier']:.3f}" for lab in labels), flush=True)
        for label in labels:
            b = [e[label]["barrier"] for e in record[name]]
            acc = [e[label]["mid_accuracy"] for e in record[name]]
            rows.append((name, label, statistics.mean(b), statistics.pstdev(b),
                         statistics.mean(acc), len(b)))
        ends = [a for e in record[name] for a in e["end_accuracy"]]
        rows.append((name, "end points", 0.0, 0.0, statistics.mean(ends), len(ends)))
    print(f"{'architecture':34s} {'B aligned by':22s} {'barrier (test loss)':>22s} "
          f"{'midpoint acc':>12s}  n")
    for name, label, mean, std, acc, n in rows:
        barrier = "" if label == "end points" else f"{mean:.3f} ± {std:.3f}"
        print(f"{name:34s} {label:22s} {barrier:>22s} {acc:12.3f}  {n}")
    print(f"({time.time() - start:.0f} s)")
    print(json.dumps({"epochs": args.epochs, "pairs": args.pairs, "results": record}))


if __name__ == "__main__":
    main()
