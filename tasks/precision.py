"""Training precision: the metanet's training forward pass in float32 or under bfloat16 autocast.

``"bf16"`` runs each training step's forward pass under :func:`torch.autocast`: matrix products
in bfloat16 (2.3x faster than float32 on one core of a CPU with AVX512-BF16, as on tensor-core
GPUs), layer norms and everything that is not a matrix product in its input's dtype, and
everything in float64 (``strict``'s canonicalised reads) untouched, since autocast only lowers
float32. ``quasi``'s gauge runs outside the autocast altogether (its learned factor multiplies
every value), and the value channels' message sums are float32. The loss, the gradients'
accumulation into the float32 weights and the optimizer stay float32.

Evaluation, prediction and every saved metanet run in float32 whatever the training precision:
the invariance a metanet promises (``quasi`` and ``strict`` predictions unchanged to 1e-5 under
the networks' symmetries) is a property of that float32 forward pass, and the same trained
weights give it.
"""

from __future__ import annotations

import contextlib

from .errors import TaskError

# name: the torch dtype autocast lowers matrix products to (None: no autocast). Names, not dtypes:
# the command line reads this table, and its --help must not pay for importing torch.
PRECISIONS = {
    "fp32": None,
    "bf16": "bfloat16",
}


def check_precision(name: str) -> str:
    """``name`` if it is a known precision; a :class:`TaskError` naming the choices if not."""
    if name not in PRECISIONS:
        raise TaskError(f"unknown precision '{name}' (known: {', '.join(PRECISIONS)})")
    return name


def training_autocast(name: str, device):
    """The context a training forward pass runs in at precision ``name`` on ``device``."""
    import torch

    dtype = PRECISIONS[check_precision(name)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype))


def emulated(name: str, device) -> bool:
    """Whether precision ``name`` has no native support on ``device`` (and runs slower than
    ``"fp32"``)."""
    return PRECISIONS[check_precision(name)] == "bfloat16" and not native_bf16(device)


def native_bf16(device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (elsewhere ``"bf16"`` is
    emulated and slower than float32)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False
