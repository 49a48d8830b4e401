"""Loss barriers of linear interpolation between independently trained digit classifiers, with
and without alignment (``paramgraph.align``).

For each architecture (an MLP and a small residual CNN without batch norm) and each pair of
training seeds, two networks are trained on the bundled digits (the fixed train split of
``paramgraph.tasks.digits``); the midpoint of the straight line between them is evaluated on the
test split: as they are, after aligning B's permutations to A by weight matching, after aligning
permutations and scales (canonical section), and after activation matching (permutations, on 256
training images). The loss barrier is the midpoint's test
loss minus the mean of the end points' losses. Prints a table and one JSON line.

    python scripts/bench_merge.py                    # 3 pairs per architecture, ~3 min on 2 busy cores
    python scripts/bench_merge.py --pairs 5 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import paramgraph as pg
from paramgraph.activations import neuron_activations
from paramgraph.align import align
from paramgraph.merge import evaluate, interpolate
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


def train(make, seed: int, epochs: int, x, y) -> nn.Module:
    torch.manual_seed(seed)
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(x.size(0), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3, help="seed pairs per architecture")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resnet-width", type=int, default=32, help="channels of the ResNet")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = classification_split()
    width = args.resnet_width
    archs = {"mlp (64-128-128-10)": MLP,
             f"resnet ({width} ch, 2 blocks, no BN)": lambda: ResNet(width)}
    rows, record = [], {}
    start = time.time()
    for name, make in archs.items():
        record[name] = []
        for k in range(args.pairs):
            na = train(make, 2 * k, args.epochs, x_train, y_train)
            nb = train(make, 2 * k + 1, args.epochs, x_train, y_train)
            ga = pg.from_module(na, x_test[:2])
            gb = pg.from_module(nb, x_test[:2])
            ends = [evaluate(na, x_test, y_test), evaluate(nb, x_test, y_test)]
            base = (ends[0]["loss"] + ends[1]["loss"]) / 2
            entry = {"seeds": [2 * k, 2 * k + 1],
                     "end_loss": [e["loss"] for e in ends],
                     "end_accuracy": [e["accuracy"] for e in ends]}
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
                pg.load_into(probe, interpolate(ga, g, 0.5))
                mid = evaluate(probe, x_test, y_test)
                entry[label] = {"mid_loss": mid["loss"], "mid_accuracy": mid["accuracy"],
                                "barrier": mid["loss"] - base}
            record[name].append(entry)
        for label in LABELS:
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
