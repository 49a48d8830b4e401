"""A catalogue of small example networks covering every layer the converter supports.

``catalogue()`` returns :class:`Entry` items: a name, a factory that builds the module with
deterministic random weights (batch-norm statistics included, so that folding mistakes show), and
an example input. Other test files (metanet, CLI, tasks) reuse these networks::

    from tests.catalogue import catalogue, get
    entry = get("cnn2d_bn_maxpool")
    module, x = entry.build(), entry.example_input()

Every entry is small (at most a few thousand parameters) so that the whole catalogue converts in
well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import paramgraph


@dataclass(frozen=True)
class Entry:
    """One example network.

    ``factory()`` returns a fresh module (eval mode, deterministic weights). ``input_shape`` is the
    shape of its example input, ``dtype`` the input's dtype. ``nontrivial`` says whether the
    network's symmetry group (hidden permutations, scales, signs, head maps) is non-trivial, so a
    random element must change the weights. ``tags`` name the features it exercises (``no-export``:
    ``torch.export`` decomposes a layer into arithmetic the exported-program reader refuses).
    ``input_scale`` multiplies the random inputs of the symmetry tests, for activations whose
    clip or kink only shows on large pre-activations (ReLU6, SELU).
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    nontrivial: bool = True
    tags: tuple[str, ...] = field(default=())
    input_scale: float = 1.0

    def build(self) -> nn.Module:
        return self.factory()

    def example_input(self, seed: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.input_shape, generator=g, dtype=dtype or self.dtype)


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter and batch-norm statistic a deterministic random value; eval mode.

    Weights are N(0, 1/fan_in) so activations stay O(1); biases and norm shifts N(0, 0.5);
    norm scales and running variances are positive and away from 1; running means non-zero.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            if isinstance(owner, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm,
                                  nn.InstanceNorm2d)) and leaf == "weight":
                p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) * 1.5 + 0.5)
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / fan_in ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64) * 1.5 + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(7)
    return module.eval()


# -- building blocks used by several entries ---------------------------------------------------------

_ACTS = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "gelu": nn.GELU, "silu": nn.SiLU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "sine": lambda: paramgraph.Sine(3.0),
    "identity": nn.Identity,
}
# Activations of the CNNs people use (issue 13): each with exactly the symmetries it has.
_CNN_ACTS = {
    "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
    "mish": nn.Mish, "elu": nn.ELU, "selu": nn.SELU, "softplus": nn.Softplus,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "hardtanh": nn.Hardtanh,
    "softsign": nn.Softsign,
}


def mlp(act: str, widths=(5, 7, 6, 3), bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
        if i < len(widths) - 2:
            layers.append({**_ACTS, **_CNN_ACTS}[act]())
    return nn.Sequential(*layers)


class TorchSinMLP(nn.Module):
    """An MLP whose activation is the function ``torch.sin`` (a SIREN written by hand)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, 8), nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x):
        x = torch.sin(self.fc1(x))
        x = torch.sin(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus an identity or projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetTiny(nn.Module):
    """Stem, an identity-shortcut block, a projection-shortcut block, global pool, classifier."""

    def __init__(self, width: int = 4, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class PreActBlock1d(nn.Module):
    """A 1-D residual block without batch norm: x + conv(relu(conv(x)))."""

    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv1d(c, c, 3, padding=1)
        self.c2 = nn.Conv1d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(torch.relu(self.c1(x)))


class MHAClassifier(nn.Module):
    """Linear embedding, self-attention (batch_first), mean over tokens, linear head."""

    def __init__(self, d_in=3, embed=8, heads=2, out=2):
        super().__init__()
        self.embed = nn.Linear(d_in, embed)
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=True)
        self.head = nn.Linear(embed, out)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(a.mean(dim=1))


class MHAStack(nn.Module):
    """Linear -> attention -> ReLU -> linear per token (attention output feeds a plain MLP)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.attn = nn.MultiheadAttention(6, 3, batch_first=True)
        self.act = nn.ReLU()
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.act(self.attn(h, h, h)[0]))


class TransformerNet(nn.Module):
    """Linear -> TransformerEncoderLayer -> Linear, per token."""

    def __init__(self, norm_first: bool, activation: str, embed=8, heads=2, ff=12, layers=1):
        super().__init__()
        self.inp = nn.Linear(3, embed)
        layer = nn.TransformerEncoderLayer(embed, heads, ff, dropout=0.0, activation=activation,
                                           batch_first=True, norm_first=norm_first)
        if layers == 1:
            self.encoder = layer
        else:
            self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(embed),
                                                 enable_nested_tensor=False)
        self.out = nn.Linear(embed, 2)

    def forward(self, x):
        return self.out(self.encoder(self.inp(x)))


class TinyViT(nn.Module):
    """Conv patch embedding (4x4 patches) -> tokens -> pre-norm encoder layer -> LayerNorm ->
    mean over tokens -> linear head: a small vision transformer."""

    def __init__(self, channels=1, dim=8, heads=2, classes=3):
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, 4, 4)
        self.encoder = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0,
                                                  batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))


class SeqFirstAttention(nn.Module):
    """Self-attention with the default (sequence, batch, features) layout."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.attn = nn.MultiheadAttention(6, 2)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h)[0])


class FunctionalNet(nn.Module):
    """Functional calls: F.relu, torch.tanh, torch.flatten, x + y, F.linear with self.weight,
    F.avg_pool2d and x.mean(dim=(2, 3))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.empty(5, 4 * 2 * 2))
        self.bias = nn.Parameter(torch.empty(5))
        self.w_mean = nn.Parameter(torch.empty(5, 4))
        self.w_out = nn.Parameter(torch.empty(3, 5))
        self.b_out = nn.Parameter(torch.empty(3))

    def forward(self, x):
        h = F.relu(self.conv(x))
        h = h + self.conv2(h)
        g = torch.flatten(F.avg_pool2d(h, 2), 1)  # 4x4 -> 2x2, then 16 features
        g = torch.tanh(F.linear(g, self.weight, self.bias))
        m = F.linear(h.mean(dim=(2, 3)), self.w_mean)
        return F.linear(g + m, self.w_out, self.b_out)


class ChannelsLastFlatten(nn.Module):
    """conv -> tanh -> permute to (B, H, W, C) -> reshape -> linear: a position-major flatten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 2 * 2, 2)

    def forward(self, x):
        h = torch.tanh(self.conv(x)).permute(0, 2, 3, 1)
        return self.fc(h.reshape(h.shape[0], -1))


class CatFeatures(nn.Module):
    """Dense-style ``torch.cat`` of the input with a hidden value read twice, and ``z + z``."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(3 + 4 + 4, 5)
        self.fc3 = nn.Linear(5, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        z = self.fc2(torch.cat([x, h, h], dim=1))
        return self.fc3(torch.tanh(z + z))


class Inner(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, d), nn.Tanh())

    def forward(self, x):
        return self.body(x)


class Middle(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.blocks = nn.ModuleList([Inner(d), nn.Sequential(Inner(d), nn.Dropout(0.3))])
        self.proj = nn.ModuleDict({"a": nn.Linear(d, d)})

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return torch.relu(self.proj["a"](x))


class Nested(nn.Module):
    """Custom module > Sequential > custom > ModuleList/ModuleDict > Sequential > custom > Linear."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.stack = nn.Sequential(Middle(6), nn.Sequential(Middle(6)))
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.stack(self.inp(x)))


class MixedDtype(nn.Module):
    """A float64 first layer and a float32 second layer; the hidden value is cast in between."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6).double()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x.to(self.fc1.weight.dtype)))
        return self.fc2(h.to(self.fc2.weight.dtype))


# -- look-alikes of the CNNs people use (issue 13): tiny, pure torch, same wiring ------------------

class SqueezeExcite(nn.Module):
    """torchvision's SqueezeExcitation: x * gate(fc2(act(fc1(avgpool(x)))))."""

    def __init__(self, c: int, squeeze: int, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = act(), gate()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 and EfficientNet's MBConv: expand 1x1, depthwise kxk, optional SE,
    project 1x1, residual when the shape allows; stochastic depth on the branch."""

    def __init__(self, cin, cout, expand, stride=1, act=nn.ReLU6, se=None, kernel=3):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act()]
        layers += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                   nn.BatchNorm2d(mid), act()]
        if se is not None:
            layers.append(se(mid))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop = StochasticDepth(0.2)

    def forward(self, x):
        out = self.block(x)
        if self.residual:
            out = self.drop(out)
            out += x
        return out


class StochasticDepth(nn.Module):
    """Drops the whole branch per sample in training; the identity in eval."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MobileNetV2Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU6()),
            InvertedResidual(4, 4, 1), InvertedResidual(4, 6, 2, stride=2),
            InvertedResidual(6, 6, 2),
            nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 3))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class MobileNetV3Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        se = lambda c: SqueezeExcite(c, 4)  # noqa: E731
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.Hardswish()),
            InvertedResidual(4, 4, 1, act=nn.ReLU, se=se),
            InvertedResidual(4, 6, 2, stride=2, act=nn.Hardswish, se=se, kernel=5),
            InvertedResidual(6, 6, 2, act=nn.Hardswish, se=se))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6, 10), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(10, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class EfficientNetTiny(nn.Module):
    """SiLU everywhere, SE with SiLU and sigmoid, MBConv blocks with stochastic depth, and one
    SiLU written by hand as x * sigmoid(x)."""

    def __init__(self):
        super().__init__()
        se = lambda c: SqueezeExcite(c, 2, act=nn.SiLU, gate=nn.Sigmoid)  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4))
        self.blocks = nn.Sequential(InvertedResidual(4, 4, 1, act=nn.SiLU, se=se),
                                    InvertedResidual(4, 6, 2, 2, act=nn.SiLU, se=se),
                                    InvertedResidual(6, 6, 2, act=nn.SiLU, se=se))
        self.head = nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x * torch.sigmoid(x)
        x = self.head(self.blocks(x))
        return self.fc(x.mean(dim=(2, 3)))


class LayerNorm2d(nn.LayerNorm):
    """torchvision's LayerNorm2d: a LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt block: depthwise conv, channels-last LayerNorm, MLP, layer scale, drop path,
    residual. ``timm_style`` writes the layer scale as ``x.mul(gamma.reshape(1, -1, 1, 1))``."""

    def __init__(self, dim: int, timm_style: bool = False):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.timm_style = timm_style
        self.gamma = nn.Parameter(torch.full((dim,) if timm_style else (dim, 1, 1), 1e-6))
        self.drop = StochasticDepth(0.1)

    def forward(self, x):
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h)))).permute(0, 3, 1, 2)
        h = h.mul(self.gamma.reshape(1, -1, 1, 1)) if self.timm_style else self.gamma * h
        return x + self.drop(h)


class ConvNeXtTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 2, 2), LayerNorm2d(4, eps=1e-6))
        self.stage1 = nn.Sequential(CNBlock(4), CNBlock(4, timm_style=True))
        self.down = nn.Sequential(LayerNorm2d(4, eps=1e-6), nn.Conv2d(4, 8, 2, 2))
        self.stage2 = CNBlock(8)
        self.norm = nn.LayerNorm(8, eps=1e-6)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean(dim=(-2, -1))))


class ResNeXtBlock(nn.Module):
    """Bottleneck with a grouped 3x3 convolution (cardinality 2) and a projection shortcut."""

    def __init__(self, cin, width, cout, groups=2, stride=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = norm(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNeXtTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU())
        self.layer1 = nn.Sequential(ResNeXtBlock(4, 4, 8), ResNeXtBlock(8, 4, 8))
        # a grouped conv with 2 input and 3 output channels per group, and a depthwise one with
        # a channel multiplier of 2
        self.mixer = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, groups=4), nn.ReLU(),
                                   nn.Conv2d(12, 12, 1), nn.ReLU(),
                                   nn.Conv2d(12, 24, 3, padding=1, groups=12), nn.Tanh())
        self.fc = nn.Linear(24, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.mixer(self.layer1(self.stem(x))), 1), 1))


class GroupNormResNet(nn.Module):
    """A ResNet whose norms are GroupNorms (2 groups), with one InstanceNorm and a ResNeXt block."""

    def __init__(self):
        super().__init__()
        gn = lambda c: nn.GroupNorm(2, c)  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), gn(4), nn.ReLU())
        self.block1 = ResNeXtBlock(4, 4, 4, groups=2, norm=gn)
        self.block2 = ResNeXtBlock(4, 6, 8, groups=1, stride=2, norm=gn)
        self.inorm = nn.Sequential(nn.Conv2d(8, 6, 1), nn.InstanceNorm2d(6, affine=True), nn.Tanh())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.inorm(self.block2(self.block1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def channel_shuffle(x, groups: int):
    """torchvision's channel shuffle: (B, C, H, W) -> (B, g, C/g, H, W) -> swap -> (B, C, H, W)."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: stride 2 runs two branches on x; stride 1 splits the channels, runs
    one branch on the second half, concatenates and shuffles."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        b_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            nn.Conv2d(b_in, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.stage2 = nn.Sequential(ShuffleUnit(4, 8, 2), ShuffleUnit(8, 8, 1), ShuffleUnit(8, 8, 1))
        self.conv5 = nn.Sequential(nn.Conv2d(8, 10, 1, bias=False), nn.BatchNorm2d(10), nn.ReLU())
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        return self.fc(self.conv5(self.stage2(self.conv1(x))).mean([2, 3]))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseNetTiny(nn.Module):
    """DenseNet: each layer reads the concatenation of all before it; a transition halves."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.layers = nn.ModuleList([DenseLayer(4, 2), DenseLayer(6, 2)])
        self.transition = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False),
                                        nn.AvgPool2d(2))
        self.norm5 = nn.BatchNorm2d(4)
        self.classifier = nn.Linear(4, 3)

    def forward(self, x):
        features = [self.conv0(x)]
        for layer in self.layers:
            features.append(layer(features))
        x = F.relu(self.norm5(self.transition(torch.cat(features, 1))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class VGGTiny(nn.Module):
    """VGG blocks: conv-BN-ReLU twice, max pool, then a flattened classifier with dropout."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(6 * 2 * 2, 8), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ECA(nn.Module):
    """timm's EcaModule: the pooled channel vector through a Conv1d with one input and one output
    channel that slides along the channels (zero padding, no bias), a sigmoid gate per channel."""

    def __init__(self, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=(kernel - 1) // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.gate(self.conv(y)).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


class ECABlock(nn.Module):
    """ecaresnet's basic block: ECA on the branch, before the residual addition."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.eca = ECA(3)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.eca(self.bn2(self.conv2(out))) + x)


class ECAResNetTiny(nn.Module):
    """A stem, an ECA basic block, then a conv stage (SiLU) gated by ECA with a 5-tap kernel."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                                  nn.ReLU())
        self.block = ECABlock(6)
        self.stage = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(8), nn.SiLU(), ECA(5))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.stage(self.block(self.stem(x))).mean((2, 3)))


class SelectiveKernel(nn.Module):
    """timm's SelectiveKernel (SKNet): branches with 3x3 kernels of dilation 1, 2, ... (conv-BN-
    ReLU) read the input's equal parts (``split``) or all of it, are stacked, and are weighted by
    an attention over them: the branches' sum, pooled, a 1x1 reduce conv with BN and ReLU, a 1x1
    select conv to C channels per branch and a softmax across the branches; the weighted
    branches are summed."""

    def __init__(self, c: int, paths: int = 2, split: bool = True, attn: int = 4):
        super().__init__()
        self.paths_n, self.split_size = paths, (c // paths if split else 0)
        cin = c // paths if split else c
        self.paths = nn.ModuleList([
            nn.Sequential(nn.Conv2d(cin, c, 3, padding=d, dilation=d, bias=False),
                          nn.BatchNorm2d(c), nn.ReLU()) for d in range(1, paths + 1)])
        self.fc_reduce = nn.Conv2d(c, attn, 1, bias=False)
        self.bn, self.act = nn.BatchNorm2d(attn), nn.ReLU()
        self.fc_select = nn.Conv2d(attn, c * paths, 1, bias=False)

    def forward(self, x):
        if self.split_size:
            parts = torch.split(x, self.split_size, 1)
            outs = [op(parts[i]) for i, op in enumerate(self.paths)]
        else:
            outs = [op(x) for op in self.paths]
        x = torch.stack(outs, dim=1)
        torch._assert(x.shape[1] == self.paths_n, "one slot per branch")
        a = x.sum(1).mean((2, 3), keepdim=True)
        a = self.fc_select(self.act(self.bn(self.fc_reduce(a))))
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, self.paths_n, c // self.paths_n, h, w), dim=1)
        return torch.sum(x * a, dim=1)


class SKBlock(nn.Module):
    """timm's SelectiveKernelBasic: a selective-kernel conv, a 3x3 conv with BN, residual."""

    def __init__(self, c: int, **kw):
        super().__init__()
        self.conv1 = SelectiveKernel(c, **kw)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + x)


class SKNetTiny(nn.Module):
    """Two selective-kernel blocks: two branches on the halves of the input (as skresnet18),
    then three branches on all of it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU())
        self.blocks = nn.Sequential(SKBlock(4), SKBlock(4, paths=3, split=False))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class SplitAttention(nn.Module):
    """timm's SplitAttn (ResNeSt): a grouped 3x3 conv (``cardinality * radix`` groups) makes
    ``radix`` branches of C channels (BN, ReLU), viewed (B, radix, C, H, W); their sum, pooled,
    goes through fc1 (grouped by cardinality, bias), BN, ReLU and fc2 to radix * C (bias); the
    radix softmax (view (B, cardinality, radix, -1), transpose, softmax across radix) weights
    the branches, which are summed."""

    def __init__(self, cin: int, c: int, radix: int = 2, card: int = 1, attn: int = 4):
        super().__init__()
        self.radix, self.card = radix, card
        self.conv = nn.Conv2d(cin, c * radix, 3, padding=1, groups=card * radix, bias=False)
        self.bn0, self.act0 = nn.BatchNorm2d(c * radix), nn.ReLU()
        self.fc1 = nn.Conv2d(c, attn, 1, groups=card)
        self.bn1, self.act1 = nn.BatchNorm2d(attn), nn.ReLU()
        self.fc2 = nn.Conv2d(attn, c * radix, 1, groups=card)

    def forward(self, x):
        x = self.act0(self.bn0(self.conv(x)))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(self.act1(self.bn1(self.fc1(gap))))
        attn = attn.view(b, self.card, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(b, -1).view(b, -1, 1, 1)
        out = x * attn.reshape((b, self.radix, rc // self.radix, 1, 1))
        return out.sum(dim=1).contiguous()


class ResNeStBlock(nn.Module):
    """ResNeSt's bottleneck: 1x1 conv-BN-ReLU, split attention, 1x1 conv-BN, residual."""

    def __init__(self, c: int, width: int, **kw):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = SplitAttention(width, width, **kw)
        self.conv3, self.bn3 = nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.conv2(F.relu(self.bn1(self.conv1(x))))
        return F.relu(self.bn3(self.conv3(out)) + x)


class ResNeStTiny(nn.Module):
    """A radix-2 block of cardinality 1 (resnest14d's) and one of cardinality 2."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU())
        self.blocks = nn.Sequential(ResNeStBlock(4, 4), ResNeStBlock(4, 4, card=2))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class HRNetFuseTiny(nn.Module):
    """HRNet's multi-resolution fusion: a full- and a half-resolution branch, each brought to the
    other's resolution (nearest and bilinear upsampling, a strided conv) and added."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU())
        self.low = nn.Sequential(nn.Conv2d(4, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6),
                                 nn.ReLU())
        self.up = nn.Sequential(nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4),
                                nn.Upsample(scale_factor=2, mode="nearest"))
        self.down = nn.Sequential(nn.Conv2d(4, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6))
        self.head = nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        high = self.stem(x)
        low = self.low(high)
        high, low = F.relu(high + self.up(low)), F.relu(low + self.down(high))
        smooth = F.interpolate(self.head(low), scale_factor=2.0, mode="bilinear")
        return self.fc(torch.tanh(high + smooth).mean((2, 3)))


# name -> factory of the look-alikes (the "done when" list), shared by the tests
CNN_LOOKALIKES: dict[str, Callable[[], nn.Module]] = {
    "mobilenet_v2_tiny": MobileNetV2Tiny, "mobilenet_v3_tiny": MobileNetV3Tiny,
    "efficientnet_tiny": EfficientNetTiny, "convnext_tiny": ConvNeXtTiny,
    "resnext_tiny": ResNeXtTiny, "groupnorm_resnet_tiny": GroupNormResNet,
    "shufflenet_v2_tiny": ShuffleNetTiny, "densenet_tiny": DenseNetTiny, "vgg_tiny": VGGTiny,
    "ecaresnet_tiny": ECAResNetTiny, "sknet_tiny": SKNetTiny, "resnest_tiny": ResNeStTiny,
    "hrnet_fuse_tiny": HRNetFuseTiny,
}


def _seq(*layers) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(*layers())


def _entries() -> list[Entry]:
    E = Entry
    out: list[Entry] = []
    for i, act in enumerate(_ACTS):
        out.append(E(f"mlp_{act}", lambda act=act, i=i: randomize(mlp(act), 100 + i), (4, 5),
                     tags=("mlp", act)))
    for i, act in enumerate(_CNN_ACTS):
        out.append(E(f"mlp_{act}", lambda act=act, i=i: randomize(mlp(act), 200 + i), (4, 5),
                     tags=("mlp", act, "cnn-act") + (("no-export",) if act == "softsign" else ()),
                     input_scale=30.0))
    for i, (name, factory) in enumerate(CNN_LOOKALIKES.items()):
        # wide input scales: ReLU6's clip shows, and no ReLU of a few channels stays dead nor a
        # softmax across branches flat (the per-neuron oracle needs every neuron to matter)
        wide = name.startswith(("mobilenet", "sknet", "resnest"))
        out.append(E(name, lambda factory=factory, i=i: randomize(factory(), 300 + i),
                     (2, 3 if name != "groupnorm_resnet_tiny" else 2, 8, 8),
                     tags=("cnn", "lookalike"), input_scale=10.0 if wide else 1.0))
    out += [
        E("mlp_torch_sin", lambda: randomize(TorchSinMLP(), 120), (6, 2), tags=("mlp", "sin")),
        E("mlp_nobias_relu", lambda: randomize(mlp("relu", (3, 6, 4), bias=False), 121), (4, 3),
          tags=("mlp", "relu")),
        E("mlp_bn_relu", lambda: randomize(nn.Sequential(
            nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6), nn.BatchNorm1d(6),
            nn.Tanh(), nn.Linear(6, 2)), 122), (4, 5), tags=("mlp", "batchnorm")),
        E("mlp_layernorm_dropout", lambda: randomize(nn.Sequential(
            nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 8),
            nn.Dropout(0.2), nn.GELU(), nn.Linear(8, 2)), 123), (4, 5),
          tags=("mlp", "layernorm", "dropout")),
        E("cnn1d_bn_avgpool", lambda: randomize(nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
            nn.Conv1d(4, 5, 3, padding=2, dilation=2), nn.BatchNorm1d(5), nn.Tanh(),
            nn.AvgPool1d(2), nn.Flatten(), nn.Linear(5 * 4, 3)), 130), (2, 2, 16),
          tags=("cnn", "conv1d", "batchnorm", "avgpool")),
        E("cnn1d_maxpool_adaptive", lambda: randomize(nn.Sequential(
            nn.Conv1d(3, 4, 5, padding=2), nn.LeakyReLU(0.2), nn.MaxPool1d(2),
            nn.Conv1d(4, 6, 3), nn.Tanh(), nn.AdaptiveMaxPool1d(1), nn.Flatten(),
            nn.Linear(6, 2)), 131), (2, 3, 12), tags=("cnn", "conv1d", "maxpool")),
        E("cnn2d_bn_maxpool", lambda: randomize(nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=1, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2),
            nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(6, 3)), 132), (2, 3, 8, 8), tags=("cnn", "conv2d", "batchnorm", "maxpool")),
        E("cnn2d_tanh_maxpool", lambda: randomize(nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3),
            nn.Sigmoid(), nn.AdaptiveMaxPool2d((1, 1)), nn.Flatten(), nn.Linear(5, 2)), 133),
          (2, 2, 8, 8), tags=("cnn", "conv2d", "maxpool")),
        E("cnn2d_avgpool_flatten", lambda: randomize(nn.Sequential(
            nn.Conv2d(1, 3, (3, 2), stride=(2, 1), padding=(1, 0)), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(3 * 2 * 3, 4), nn.ReLU(), nn.Linear(4, 2)), 134),
          (2, 1, 8, 8), tags=("cnn", "conv2d", "avgpool", "flatten")),
        E("cnn2d_flatten_nopool", lambda: randomize(nn.Sequential(
            nn.Conv2d(2, 3, 3, bias=False), nn.GELU(), nn.Conv2d(3, 4, 2), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.SiLU(), nn.Linear(5, 2)), 135),
          (2, 2, 6, 6), tags=("cnn", "conv2d", "flatten")),
        E("resnet_tiny", lambda: randomize(ResNetTiny(), 140), (2, 2, 8, 8),
          tags=("cnn", "resnet", "batchnorm", "residual")),
        E("resnet1d_nobn", lambda: randomize(nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), PreActBlock1d(4), PreActBlock1d(4),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2)), 141), (2, 2, 10),
          tags=("cnn", "conv1d", "residual")),
        E("mha", lambda: randomize(MHAClassifier(), 150), (2, 5, 3),
          tags=("attention",)),
        E("mha_stack", lambda: randomize(MHAStack(), 151), (2, 4, 4), tags=("attention",)),
        E("transformer_post_relu", lambda: randomize(TransformerNet(False, "relu"), 160),
          (2, 5, 3), tags=("transformer", "layernorm")),
        E("transformer_pre_gelu", lambda: randomize(TransformerNet(True, "gelu"), 161),
          (2, 5, 3), tags=("transformer", "layernorm")),
        E("transformer_post_gelu", lambda: randomize(TransformerNet(False, "gelu"), 162),
          (2, 5, 3), tags=("transformer", "layernorm")),
        E("transformer_pre_relu_2layers", lambda: randomize(
            TransformerNet(True, "relu", layers=2), 163), (2, 4, 3),
          tags=("transformer", "layernorm")),
        E("cnn2d_channels_last_flatten", lambda: randomize(ChannelsLastFlatten(), 136),
          (2, 2, 4, 4), tags=("cnn", "conv2d", "flatten")),
        E("cat_features", lambda: randomize(CatFeatures(), 171), (4, 3),
          tags=("mlp", "cat", "residual")),
        E("bare_encoder_layer", lambda: randomize(nn.TransformerEncoderLayer(
            8, 4, 16, dropout=0.0, batch_first=True), 164), (2, 3, 8),
          tags=("transformer", "layernorm", "bare")),
        E("vit_tiny", lambda: randomize(TinyViT(), 165), (2, 1, 8, 8),
          tags=("transformer", "vit", "conv2d", "layernorm")),
        E("mha_seq_first", lambda: randomize(SeqFirstAttention(), 152), (5, 2, 3),
          tags=("attention",)),
        E("functional", lambda: randomize(FunctionalNet(), 170), (2, 2, 4, 4),
          tags=("functional", "cnn", "residual", "avgpool")),
        E("nested", lambda: randomize(Nested(), 180), (3, 4), tags=("nested", "mlp")),
        E("mlp_float64", lambda: randomize(mlp("tanh", (4, 6, 5, 2)).double(), 190), (3, 4),
          dtype=torch.float64, tags=("mlp", "float64")),
        E("cnn_float64", lambda: randomize(nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
            nn.Linear(3 * 4 * 4, 2)).double(), 191), (2, 1, 6, 6), dtype=torch.float64,
          tags=("cnn", "float64")),
        E("mixed_dtype", lambda: randomize(MixedDtype(), 192), (3, 4), dtype=torch.float64,
          tags=("mlp", "mixed")),
    ]
    return out


def catalogue() -> list[Entry]:
    """Every example network; see :class:`Entry`."""
    return _entries()


def get(name: str) -> Entry:
    """The catalogue entry called ``name``; raises ``KeyError`` listing the names otherwise."""
    for e in _entries():
        if e.name == name:
            return e
    raise KeyError(f"no catalogue entry '{name}'; have {[e.name for e in _entries()]}")


NAMES = [e.name for e in _entries()]


# -- helpers shared by the test files ----------------------------------------------------------------

def reference_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` without the batch-norm counters the converter leaves out."""
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def assert_state_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Same keys in the same order, and per tensor the same shape, dtype and bits."""
    assert list(got) == list(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


def states_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether any tensor of two state_dicts with the same keys differs."""
    return any(not torch.equal(a[k], b[k]) for k in a)


def assert_exact_and_symmetric(module: nn.Module, graph, error: Callable[..., float],
                               seeds: int = 2) -> None:
    """The graph restores ``module``'s state_dict bit for bit, and for each of ``seeds`` random
    group elements the moved graph's weights differ while ``error(moved)`` (the relative change
    of the function) stays below 1e-10."""
    assert_state_equal(paramgraph.to_state_dict(graph), reference_state(module))
    for seed in range(seeds):
        moved = paramgraph.random_symmetry(graph, generator=torch.Generator().manual_seed(seed))
        assert states_differ(paramgraph.to_state_dict(moved), reference_state(module))
        assert error(moved) < 1e-10, seed


def output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's output on ``x`` (eval mode, no grad) as one flat tensor (tuples joined)."""
    with torch.no_grad():
        y = module(x)
    if isinstance(y, (tuple, list)):
        return torch.cat([t.reshape(-1) for t in y])
    return y.reshape(-1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def random_inputs(entry: Entry, batch: int = 16, seed: int = 1) -> torch.Tensor:
    """``batch`` fresh float64 inputs shaped like the entry's example input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch,) + tuple(entry.input_shape[1:]), generator=g, dtype=torch.float64)
    if entry.input_scale == 1.0:
        return x
    # per-sample scales from 1 / input_scale to input_scale: every neuron sees small and large
    # pre-activations, so a clip (ReLU6, Hardswish) shows and a lone scaling is not vacuous
    lo, hi = -math.log(entry.input_scale), math.log(entry.input_scale)
    scale = torch.linspace(lo, hi, batch, dtype=torch.float64).exp()
    return x * scale.view((batch,) + (1,) * (x.dim() - 1))


# -- transformers people use (issue 14): pure-torch look-alikes of ViT, GPT-2 and LLaMA -----------
# Not in ``catalogue()``: some take token ids, and the metanet tests' float inputs do not fit them.
# ``TRANSFORMER_LOOKALIKES`` maps a name to (factory, example inputs); tests/test_transformers.py
# runs them.

class FusedAttention(nn.Module):
    """timm's Attention: one Linear(d, 3d), reshape/permute/unbind, q_norm/k_norm (Identity
    unless asked for) on the heads, eager softmax(q k^T) v with attn_drop (a Dropout) on the
    scores."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            attn = attn + attn_mask
        x = self.attn_drop(attn.softmax(dim=-1)) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class SdpaAttention(nn.Module):
    """Separate q/k/v projections, view/transpose, F.scaled_dot_product_attention."""

    def __init__(self, dim=8, heads=2, causal=False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, attn: nn.Module, dim=8, hidden=12):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attn
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTCls(nn.Module):
    """Patch embedding, a CLS token concatenated to the patches, learned positions (a parameter),
    two pre-norm blocks with fused qkv, final norm, head on the CLS token."""

    def __init__(self, channels=3, dim=8, heads=2, classes=3, patches=4):
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.blocks = nn.Sequential(*(ViTBlock(FusedAttention(dim, heads), dim) for _ in range(2)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class ViTSinusoidal(nn.Module):
    """Sinusoidal positions computed in forward with item assignment (GMN's make_transformer),
    separate q/k/v with F.scaled_dot_product_attention, mean pooling."""

    def __init__(self, channels=3, dim=8, heads=2, classes=3, layernorm_bias=False):
        super().__init__()
        self.dim = dim
        self.patch = nn.Conv2d(channels, dim, 4, 4)
        self.block = ViTBlock(SdpaAttention(dim, heads), dim)
        self.norm = nn.LayerNorm(dim, bias=layernorm_bias)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        n = x.shape[1]
        pe = torch.zeros(n, self.dim, dtype=x.dtype)
        pos = torch.arange(n, dtype=x.dtype).unsqueeze(1)
        div = torch.exp(torch.arange(0, self.dim, 2, dtype=x.dtype) * (-math.log(1e4) / self.dim))
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        x = x + pe
        return self.head(self.norm(self.block(x)).mean(dim=1))


class Conv1D(nn.Module):
    """GPT-2's Conv1D: a linear layer with its weight stored [in, out]."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size)


class GPTBlock(nn.Module):
    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = Conv1D(3 * dim, dim), Conv1D(dim, dim)
        self.c_fc, self.mlp_proj = Conv1D(4 * dim, dim), Conv1D(dim, 4 * dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (y.view(b, t, self.heads, c // self.heads).transpose(1, 2) for y in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(self.mlp_act(self.c_fc(self.ln_2(x))))

    def mlp_act(self, h):
        return F.gelu(h, approximate="tanh")


class GPTLike(nn.Module):
    """GPT-2: token and position embeddings (positions from arange), blocks with a fused Conv1D
    qkv and causal SDPA, final norm, a language-model head."""

    def __init__(self, vocab=11, positions=8, dim=8, heads=2, layers=2):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(positions, dim)
        self.h = nn.ModuleList(GPTBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        pos = torch.arange(0, idx.size(1), dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class LlamaBlock(nn.Module):
    """RMSNorm, q/k/v without bias, rotary embeddings (rotate_half), causal SDPA, SwiGLU."""

    def __init__(self, dim=8, heads=2, hidden=12):
        super().__init__()
        self.heads = heads
        self.input_layernorm, self.post_attention_layernorm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False)
                                                              for _ in range(4))
        self.gate_proj, self.up_proj = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, c = x.shape
        h = self.input_layernorm(x)
        q, k, v = (f(h).view(b, t, self.heads, -1).transpose(1, 2)
                   for f in (self.q_proj, self.k_proj, self.v_proj))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(y.transpose(1, 2).reshape(b, t, c))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class LlamaLike(nn.Module):
    """LLaMA: token embedding, rotary cosines/sines from a non-persistent inv_freq buffer,
    blocks, final RMSNorm, head."""

    def __init__(self, vocab=11, dim=8, heads=2, layers=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(LlamaBlock(dim, heads) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        d = dim // heads
        self.register_buffer("inv_freq", 1.0 / 1e4 ** (torch.arange(0, d, 2).float() / d),
                             persistent=False)

    def forward(self, idx):
        x = self.embed_tokens(idx)
        pos = torch.arange(idx.shape[1], dtype=self.inv_freq.dtype)
        freqs = torch.outer(pos, self.inv_freq.to(x.dtype))
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def repeat_kv(x, r: int):
    """Hugging Face's repeat_kv: [b, kv, t, d] -> [b, kv * r, t, d], key head g serving query
    heads g r ... g r + r - 1."""
    b, kv, t, d = x.shape
    return x[:, :, None, :, :].expand(b, kv, r, t, d).reshape(b, kv * r, t, d)


class GQABlock(nn.Module):
    """LLaMA/Mistral grouped-query attention: ``heads`` query heads, ``kv`` key/value heads;
    keys and values repeated with repeat_kv and eager softmax (``repeat="repeat_kv"``), with
    ``repeat_interleave`` and SDPA (``"interleave"``), or handed to scaled_dot_product_attention
    unrepeated (``"enable_gqa"``); RoPE (``rope``), RMSNorm, SwiGLU."""

    def __init__(self, dim=16, heads=4, kv=2, hidden=12, repeat="repeat_kv", rope=True):
        super().__init__()
        self.heads, self.kv, self.d, self.repeat = heads, kv, dim // heads, repeat
        self.rope = rope
        self.input_layernorm, self.post_attention_layernorm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj, self.v_proj = (nn.Linear(dim, kv * self.d, bias=False) for _ in range(2))
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.gate_proj, self.up_proj = (nn.Linear(dim, hidden, bias=False) for _ in range(2))
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, c = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, self.heads, self.d).transpose(1, 2)
        k, v = (f(h).view(b, t, self.kv, self.d).transpose(1, 2)
                for f in (self.k_proj, self.v_proj))
        if self.rope:
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.repeat == "enable_gqa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif self.repeat == "interleave":
            r = self.heads // self.kv
            k, v = k.repeat_interleave(r, dim=1), torch.repeat_interleave(v, r, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            r = self.heads // self.kv
            k, v = repeat_kv(k, r), repeat_kv(v, r)
            mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)
            y = torch.softmax(q @ k.transpose(2, 3) * self.d ** -0.5 + mask, dim=-1) @ v
        x = x + self.o_proj(y.transpose(1, 2).reshape(b, t, c))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class GQALlama(LlamaLike):
    """Grouped-query blocks of 4 query heads on 2 key/value heads with RoPE (repeat_kv and eager
    softmax; SDPA with enable_gqa; repeat_interleave and SDPA), then multi-query attention (1
    key/value head, no RoPE); the rest is the catalogue's LLaMA."""

    def __init__(self, vocab=11, dim=16, heads=4):
        super().__init__(vocab, dim, heads, layers=0)
        self.layers = nn.ModuleList([GQABlock(dim, heads, 2),
                                     GQABlock(dim, heads, 2, repeat="enable_gqa"),
                                     GQABlock(dim, heads, 2, repeat="interleave"),
                                     GQABlock(dim, heads, 1, rope=False)])


class MQALlama(LlamaLike):
    """Multi-query attention (one key/value head for 4 query heads) with RoPE, in each spelling
    of the key/value repetition: repeat_kv and eager softmax, SDPA with enable_gqa,
    repeat_interleave and SDPA; the key head is split off by ``view(b, t, 1, d)``."""

    def __init__(self, vocab=11, dim=16, heads=4):
        super().__init__(vocab, dim, heads, layers=0)
        self.layers = nn.ModuleList(GQABlock(dim, heads, 1, repeat=r)
                                    for r in ("repeat_kv", "enable_gqa", "interleave"))


def _tokens(vocab: int, shape=(2, 6)) -> Callable[[int], torch.Tensor]:
    return lambda seed: torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _images(shape=(2, 3, 8, 8)) -> Callable[[int], torch.Tensor]:
    return lambda seed: torch.randn(shape, generator=torch.Generator().manual_seed(seed),
                                    dtype=torch.float64)


TRANSFORMER_LOOKALIKES: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor]]] = {
    "vit_cls_learned_pos": (lambda: randomize(ViTCls(), 400), _images()),
    "vit_sinusoidal": (lambda: randomize(ViTSinusoidal(), 401), _images()),
    "gpt_decoder": (lambda: randomize(GPTLike(), 402), _tokens(11)),
    "llama_block": (lambda: randomize(LlamaLike(), 403), _tokens(11)),
    "llama_gqa": (lambda: randomize(GQALlama(), 404), _tokens(11)),
    "llama_mqa_rope": (lambda: randomize(MQALlama(), 408), _tokens(11)),
}
