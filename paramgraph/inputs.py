"""Example inputs for tracing, written as text: ``--input-shape`` and ``--input-spec``.

A spec is one or more inputs separated by ``;``; each is ``[NAME=][DTYPE:]SHAPE[:LOW-HIGH]``::

    2,1,8,8                         one float input of that shape (what --input-shape takes)
    int64:1,16:0-100                token ids in [0, 100), shape (1, 16)
    int64:1,16:0-100;attention_mask=int64:1,16:1-2
                                    the ids positionally, the mask by keyword (all ones)

Float inputs are standard normal (``LOW-HIGH``: uniform in [LOW, HIGH)), integer inputs uniform
in [LOW, HIGH) (default [0, 2)); every input draws from one seeded generator, so a spec always
gives the same tensors. Parsing needs no torch (the command line reads specs before importing it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ParamGraphError

_DTYPES = ("float32", "float64", "float16", "bfloat16", "float", "double", "int64", "int32",
           "int16", "int8", "uint8", "long", "int", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One example input: its shape, dtype name (``None``: the network's float dtype), the range
    it is drawn from (``None``: the default of its kind) and its keyword name (``None``:
    positional)."""

    shape: tuple[int, ...]
    dtype: str | None = None
    low: float | None = None
    high: float | None = None
    name: str | None = None

    @property
    def is_integer(self) -> bool:
        return self.dtype is not None and (self.dtype.startswith(("int", "uint", "long"))
                                           or self.dtype == "bool")


def parse_shape(text: str, option: str = "--input-shape") -> tuple[int, ...]:
    """``"2,1,8,8"`` (or ``2x1x8x8``, or ``[2, 1, 8, 8]``) -> ``(2, 1, 8, 8)``; ParamGraphError
    naming ``option`` for anything else. The one shape parser (command line and zoo labels)."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip().strip("[]()"))]
    if parts and not parts[-1]:
        parts.pop()  # a trailing separator
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ParamGraphError(f"{option} '{text}': expected comma-separated positive integers, "
                              "e.g. 2,1,8,8")
    return shape


def parse_input_spec(text: str) -> list[InputSpec]:
    """The inputs of an ``--input-spec`` (see the module docstring); ParamGraphError naming the
    part that does not parse and what is expected."""
    specs = [_parse_one(part.strip(), text) for part in text.split(";") if part.strip()]
    if not specs:
        raise ParamGraphError(f"--input-spec '{text}': no input given; expected e.g. "
                              "int64:1,16:0-100")
    names = [s.name for s in specs if s.name]
    if len(set(names)) != len(names):
        raise ParamGraphError(f"--input-spec '{text}': an input is named twice")
    first_named = next((i for i, s in enumerate(specs) if s.name), len(specs))
    if any(s.name is None for s in specs[first_named:]):
        raise ParamGraphError(f"--input-spec '{text}': positional inputs must come before "
                              "keyword inputs (name=spec)")
    return specs


def _parse_one(part: str, text: str) -> InputSpec:
    name = None
    m = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", part)
    if m:
        name, part = m.group(1), m.group(2)
    fields = part.split(":")
    dtype = None
    if fields and fields[0].strip() in _DTYPES:
        dtype = fields.pop(0).strip()
    elif fields and re.fullmatch(r"[A-Za-z]\w*", fields[0].strip()):
        raise ParamGraphError(f"--input-spec '{text}': unknown dtype '{fields[0]}'; one of "
                              f"{', '.join(_DTYPES)}")
    if not fields or len(fields) > 2:
        raise ParamGraphError(f"--input-spec '{text}': '{part}' is not [NAME=][DTYPE:]SHAPE"
                              "[:LOW-HIGH], e.g. int64:1,16:0-100")
    try:
        shape = parse_shape(fields[0], "--input-spec")
    except ParamGraphError:  # name the whole spec, not only its shape
        raise ParamGraphError(f"--input-spec '{text}': shape '{fields[0]}' is not "
                              "comma-separated positive integers, e.g. int64:1,16:0-100") from None
    low = high = None
    if len(fields) == 2:
        m = re.fullmatch(r"\s*(-?[\d.]+(?:e-?\d+)?)\s*-\s*(-?[\d.]+(?:e-?\d+)?)\s*", fields[1])
        if not m or not float(m.group(1)) < float(m.group(2)):
            raise ParamGraphError(f"--input-spec '{text}': range '{fields[1]}' is not LOW-HIGH "
                                  "with LOW < HIGH, e.g. 0-100")
        low, high = float(m.group(1)), float(m.group(2))
    return InputSpec(shape, dtype, low, high, name)


def make_inputs(specs: list[InputSpec], float_dtype=None, seed: int = 0):
    """The example inputs of ``specs``: one tensor, a tuple (positional inputs) or a dict
    (keyword inputs; positional ones under their index), as :func:`paramgraph.from_module`
    takes them. Float inputs without a dtype get ``float_dtype`` (the network's)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for s in specs:
        dtype = getattr(torch, s.dtype) if s.dtype else (float_dtype or torch.float32)
        if s.is_integer:
            low, high = int(s.low if s.low is not None else 0), int(s.high or 2)
            t = torch.randint(low, high, s.shape, generator=gen).to(dtype)
        elif s.low is not None:
            t = (torch.rand(s.shape, generator=gen, dtype=torch.float64) * (s.high - s.low)
                 + s.low).to(dtype)
        else:
            t = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(dtype)
        tensors.append(t)
    if all(s.name is None for s in specs):
        return tensors[0] if len(tensors) == 1 else tuple(tensors)
    return {s.name if s.name else i: t for i, (s, t) in enumerate(zip(specs, tensors))}


def format_spec(specs: list[InputSpec]) -> str:
    """The text form of ``specs`` (recorded in converted graphs' metadata)."""
    def one(s: InputSpec) -> str:
        text = ",".join(map(str, s.shape))
        if s.dtype:
            text = f"{s.dtype}:{text}"
        if s.low is not None:
            text += f":{s.low:g}-{s.high:g}"
        return f"{s.name}={text}" if s.name else text
    return ";".join(one(s) for s in specs)
