"""Small networks of mixed architectures for the metanet tests (self-contained, deterministic).

``NETS`` maps a name to ``(factory, input_shape)``. Every factory returns an eval-mode float64
module with random weights (batch-norm statistics included). Symmetries each one exercises:

* ``mlp_relu``: permutations and positive scales of plain neurons;
* ``mlp_tanh_identity``: sign flips (tanh), and scale *and* sign (identity activation);
* ``cnn_bn_res``: 3x3 kernels, batch norm (scales acting on the norm's affine parameters),
  a residual block (tied permutations, no scales on the residual stream), average pooling, a
  flatten into a linear layer (spatial kernel edges);
* ``siren``: sign flips of sine neurons;
* ``transformer``: a TransformerEncoderLayer between linear layers: tied residual-stream
  permutations, attention-head permutations, ReLU feed-forward scales, the final LayerNorm's
  scale and sign, and its per-head GL(d_head) maps (fixed by ``quasi``'s head section; tests of
  ``strict`` draw ``heads=False``).
"""

from __future__ import annotations

import torch
from torch import nn

import paramgraph


class ResCNN(nn.Module):
    def __init__(self, c: int = 4, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(c)
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.c3 = nn.Conv2d(c, c + 1, 3, padding=1)
        self.fc = nn.Linear((c + 1) * 4, classes)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(h + self.bn2(self.c2(torch.relu(self.bn1(self.c1(h))))))
        h = nn.functional.avg_pool2d(h, 2)
        h = torch.relu(self.c3(h))
        h = nn.functional.avg_pool2d(h, 2)
        return self.fc(h.flatten(1))


class Transformer(nn.Module):
    def __init__(self, d_in: int = 3, embed: int = 8, heads: int = 2, out: int = 2):
        super().__init__()
        self.inp = nn.Linear(d_in, embed)
        self.enc = nn.TransformerEncoderLayer(embed, heads, 12, dropout=0.0, batch_first=True)
        self.out = nn.Linear(embed, out)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)))


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / fan_in ** 0.5)
            elif name.endswith("weight"):  # norm scales: positive, away from 1
                p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64) + 0.5)
    return module.eval()


NETS = {
    "mlp_relu": (lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                                       nn.Linear(6, 3)), (4, 5)),
    "mlp_tanh_identity": (lambda: nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 5),
                                                nn.Linear(5, 2)), (4, 4)),
    "cnn_bn_res": (ResCNN, (2, 2, 8, 8)),
    "siren": (lambda: nn.Sequential(nn.Linear(2, 8), paramgraph.Sine(3.0), nn.Linear(8, 8),
                                    paramgraph.Sine(1.0), nn.Linear(8, 1)), (4, 2)),
    "transformer": (Transformer, (2, 4, 3)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A fresh ``name`` network with weights from ``seed`` and an example input."""
    factory, shape = NETS[name]
    module = _randomize(factory(), 1000 * seed + list(NETS).index(name))
    g = torch.Generator().manual_seed(seed)
    return module, torch.randn(shape, generator=g, dtype=torch.float64)


def graphs(seeds=(0, 1)) -> tuple[list, list, list]:
    """Every network for every seed: ``(names, modules, graphs)``; graphs are float64."""
    names, modules, out = [], [], []
    for seed in seeds:
        for name in NETS:
            module, x = build(name, seed)
            names.append(name)
            modules.append(module)
            out.append(paramgraph.from_module(module, x))
    return names, modules, out


def random_input(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random inputs for the network ``name``."""
    shape = (n,) + tuple(NETS[name][1][1:])
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def assert_same_functions(names, modules, graphs, seed: int, rtol: float, atol: float) -> None:
    """Each of ``graphs`` (new values for the network ``modules[i]`` called ``names[i]``),
    loaded into a copy of its module, computes what the module computes on random inputs."""
    import copy

    gen = torch.Generator().manual_seed(seed)
    for name, module, g in zip(names, modules, graphs):
        x = random_input(name, 8, gen)
        with torch.no_grad():
            clone = paramgraph.load_into(copy.deepcopy(module), g)
            assert torch.allclose(clone(x), module(x), rtol=rtol, atol=atol), name
