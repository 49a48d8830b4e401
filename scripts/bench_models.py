"""Benchmark-sized networks, defined here because torchvision is not available.

* :func:`resnet18`: the ImageNet ResNet-18 layout (basic blocks [2, 2, 2, 2], widths 64-512,
  projection shortcuts, batch norm, max-pool stem, 1000 classes): 11.7M parameters.
* :func:`vit_small`: a ViT-S/16-sized encoder: conv patch embedding 3->384 (16x16 patches),
  12 ``nn.TransformerEncoderLayer`` (6 heads, MLP 1536, GELU, pre-norm), final LayerNorm,
  mean over tokens, 1000 classes: 22.0M parameters (no position embedding or class token,
  which are parameters added to activations and not part of the parameter-graph model).
* :func:`wide_mlp`: 1024 -> 4096 -> 4096 -> 1000 with ReLU: 25.0M parameters.

Only torch is imported, so these definitions do not depend on paramgraph. ``OPTIONAL_MODELS``
(``tv_mobilenet_v2``, ``tv_convnext_tiny``, ...) build torchvision's models when it is installed;
``--models`` selects them, the default run does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ViT(nn.Module):
    def __init__(self, dim=384, depth=12, heads=6, mlp=1536, patch=16, classes=1000):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, patches, dim]
        return self.head(self.encoder(tokens).mean(dim=1))


class GPT2Block(nn.Module):
    """GPT-2's block: LayerNorm, a fused qkv in GPT-2's transposed Conv1D layout (addmm),
    causal scaled-dot-product attention, a GELU (tanh) MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        shapes = {"c_attn": (dim, 3 * dim), "c_proj": (dim, dim), "c_fc": (dim, 4 * dim),
                  "mlp_proj": (4 * dim, dim)}
        for name, (i, o) in shapes.items():  # [in, out] weights, as GPT-2's Conv1D stores them
            self.register_parameter(f"{name}_weight", nn.Parameter(torch.randn(i, o) * 0.02))
            self.register_parameter(f"{name}_bias", nn.Parameter(torch.zeros(o)))

    def _conv1d(self, name: str, x):
        w, b = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
        return torch.addmm(b, x.view(-1, x.size(-1)), w).view(x.size()[:-1] + (w.shape[1],))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self._conv1d("c_attn", self.ln_1(x)).split(c, dim=2)
        q, k, v = (y.view(b, t, self.heads, c // self.heads).transpose(1, 2) for y in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self._conv1d("c_proj", y.transpose(1, 2).reshape(b, t, c))
        h = F.gelu(self._conv1d("c_fc", self.ln_2(x)), approximate="tanh")
        return x + self._conv1d("mlp_proj", h)


class GPT2(nn.Module):
    """GPT-2 small without its (tied) head: 50,257-token and 1,024-position embeddings, 12
    blocks of width 768 with 12 heads, final LayerNorm: 124.4M parameters."""

    def __init__(self, vocab=50257, positions=1024, dim=768, depth=12, heads=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(positions, dim)
        self.h = nn.ModuleList(GPT2Block(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


def resnet18() -> tuple[nn.Module, torch.Tensor]:
    return ResNet18().eval(), torch.randn(1, 3, 32, 32)


def vit_small() -> tuple[nn.Module, torch.Tensor]:
    return ViT().eval(), torch.randn(1, 3, 32, 32)


def wide_mlp() -> tuple[nn.Module, torch.Tensor]:
    net = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                        nn.Linear(4096, 1000))
    return net.eval(), torch.randn(2, 1024)


def gpt2_small() -> tuple[nn.Module, torch.Tensor]:
    return GPT2().eval(), torch.randint(0, 50257, (1, 16))


MODELS = {"resnet18": resnet18, "vit_small": vit_small, "wide_mlp": wide_mlp,
          "gpt2_small": gpt2_small}


def _torchvision(name: str):
    """A random-initialised torchvision model and a 1x3x32x32 input (torchvision is optional;
    imported as scripts/coverage.py does, tolerating C operators that fail to register)."""
    def build() -> tuple[nn.Module, torch.Tensor]:
        from coverage import import_torchvision

        tv = import_torchvision()
        return tv.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 32, 32)
    return build


# The CNNs of issue 13, from torchvision when it is installed (not run by default).
OPTIONAL_MODELS = {f"tv_{n}": _torchvision(n) for n in (
    "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "resnext50_32x4d",
    "regnet_y_400mf", "shufflenet_v2_x1_0", "densenet121")}
ALL_MODELS = {**MODELS, **OPTIONAL_MODELS}
