"""The architectures of the zoos, described by small JSON-able specs.

Every zoo network is rebuilt from its spec with :func:`build_model`, so a checkpoint plus its
metadata row is enough to get a working module back (and to convert it with
``paramgraph.from_module``). All image models read a ``[batch, 1, 8, 8]`` digit image and return
``[batch, 10]`` logits; a SIREN reads ``[points, 2]`` coordinates and returns ``[points, 1]``.

Specs (``family`` picks the builder):

``mlp``   ``{"hidden": [32, 16], "act": "relu", "dropout": 0.1}``: flatten the 64 pixels, then
          Linear -> act -> Dropout per hidden layer, then Linear to 10.
``cnn``   ``{"channels": [8, 16], "kernels": [3, 5], "strides": [2, 1], "batch_norm": true,
          "residual": false, "act": "relu", "dropout": 0.0}``: conv (padding ``k // 2``,
          ``strides`` default 1) -> [BN] -> act per layer; with ``residual`` every layer after the
          first is a block ``act(x + [BN](conv(x)))`` (so all channels must be equal and those
          strides 1); then global average pooling, flatten, Dropout, Linear to 10.
``vit``   ``{"width": 16, "layers": 1, "heads": 2, "ff": 32, "dropout": 0.0}``: the image is cut
          into 16 patches of 2x2 pixels (tokens of 4 values, row-major), embedded by a Linear,
          passed through ``layers`` post-norm ``nn.TransformerEncoderLayer`` (batch_first, GELU),
          and classified by a Linear over the flattened tokens (position-major). That readout is
          what gives the model position information: the converter does not support learned
          positional embeddings added to the tokens.
``siren`` ``{"hidden": [32, 32], "w0": 30.0}``: see :mod:`paramgraph.tasks.inr` for the convention.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from paramgraph import Sine

from .errors import ZooError

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
FAMILIES = ("mlp", "cnn", "vit", "siren")
IMAGE_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def _act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ZooError(f"unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})") from None


class MLP(nn.Module):
    """Flatten, hidden Linear layers with an activation and dropout, Linear to the classes."""

    def __init__(self, hidden: list[int], act: str = "relu", dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 64
        for h in hidden:
            layers += [nn.Linear(width, h), _act(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResidualConv(nn.Module):
    """``act(x + [BN](conv(x)))`` with a same-padding convolution."""

    def __init__(self, channels: int, kernel: int, batch_norm: bool, act: str):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.act = _act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.bn(self.conv(x)))


class CNN(nn.Module):
    """Convolutions (optionally residual, optionally batch-normed), global average pool, Linear."""

    def __init__(self, channels: list[int], kernels: list[int], batch_norm: bool = False,
                 residual: bool = False, act: str = "relu", dropout: float = 0.0,
                 strides: list[int] | None = None):
        super().__init__()
        strides = list(strides) if strides is not None else [1] * len(channels)
        if not channels or not len(channels) == len(kernels) == len(strides):
            raise ZooError(f"cnn spec needs one kernel size and stride per layer, got channels "
                           f"{channels}, kernels {kernels}, strides {strides}")
        if residual and (len(set(channels)) != 1 or any(s != 1 for s in strides[1:])):
            raise ZooError(f"a residual cnn needs equal channels and stride 1 after the first "
                           f"layer, got channels {channels}, strides {strides}")
        layers: list[nn.Module] = []
        c_in = 1
        for i, (c, k, st) in enumerate(zip(channels, kernels, strides)):
            if residual and i > 0:
                layers.append(ResidualConv(c, k, batch_norm, act))
            else:
                layers.append(nn.Conv2d(c_in, c, k, stride=st, padding=k // 2))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c))
                layers.append(_act(act))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.flatten(self.pool(self.features(x)))))


class ViT(nn.Module):
    """A small vision transformer over the 16 2x2 patches of an 8x8 image."""

    def __init__(self, width: int, layers: int, heads: int, ff: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ZooError(f"vit width {width} does not split into {heads} heads")
        self.embed = nn.Linear(4, width)
        self.encoder = nn.Sequential(*[
            nn.TransformerEncoderLayer(width, heads, ff, dropout=dropout, activation="gelu",
                                       batch_first=True)
            for _ in range(layers)
        ])
        self.flatten = nn.Flatten()
        self.head = nn.Linear(16 * width, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        # [b, 1, 8, 8] -> [b, 4 rows, 2, 4 cols, 2] -> [b, 16 patches, 4 pixels]
        patches = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        return self.head(self.flatten(self.encoder(self.embed(patches))))


def build_model(spec: dict) -> nn.Module:
    """A freshly initialised module for ``spec`` (see the module docstring).

    Returns the module in training mode. Raises :class:`~paramgraph.tasks.errors.ZooError` for an unknown
    family, a missing or malformed field.
    """
    from .inr import Siren

    if not isinstance(spec, dict) or "family" not in spec:
        raise ZooError(f"architecture spec must be a dict with a 'family', got {spec!r}")
    family = spec["family"]
    try:
        if family == "mlp":
            return MLP(list(spec["hidden"]), spec.get("act", "relu"), spec.get("dropout", 0.0))
        if family == "cnn":
            return CNN(list(spec["channels"]), list(spec["kernels"]), bool(spec.get("batch_norm")),
                       bool(spec.get("residual")), spec.get("act", "relu"),
                       spec.get("dropout", 0.0), spec.get("strides"))
        if family == "vit":
            return ViT(int(spec["width"]), int(spec["layers"]), int(spec["heads"]),
                       int(spec["ff"]), spec.get("dropout", 0.0))
        if family == "siren":
            return Siren(list(spec["hidden"]), float(spec.get("w0", 30.0)))
    except KeyError as err:
        raise ZooError(f"{family} spec {json.dumps(spec)} lacks field {err}") from None
    raise ZooError(f"unknown architecture family '{family}' (known: {', '.join(FAMILIES)})")


def example_input(spec: dict) -> Tensor:
    """An input of the right shape for tracing the model of ``spec`` (two samples)."""
    if spec.get("family") == "siren":
        return torch.zeros(2, 2)
    return torch.zeros(2, *IMAGE_SHAPE)


def describe(spec: dict) -> str:
    """A short human-readable name of an architecture, e.g. ``cnn[8,16]k3,5+bn+res``."""
    f = spec.get("family", "?")
    if f == "mlp":
        return f"mlp[{','.join(map(str, spec['hidden']))}]{spec.get('act', 'relu')}"
    if f == "cnn":
        tags = ("+bn" if spec.get("batch_norm") else "") + ("+res" if spec.get("residual") else "")
        if any(st != 1 for st in spec.get("strides") or ()):
            tags = f"s{','.join(map(str, spec['strides']))}" + tags
        return (f"cnn[{','.join(map(str, spec['channels']))}]k{','.join(map(str, spec['kernels']))}"
                f"{tags}")
    if f == "vit":
        return f"vit[w{spec['width']},l{spec['layers']},h{spec['heads']}]"
    if f == "siren":
        return f"siren[{','.join(map(str, spec['hidden']))}]"
    return f
