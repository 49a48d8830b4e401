"""The security audit of ``torch.export`` programs (``.pt2``), run before ``torch.export.load``.

``torch.export.load`` is **not** safe for untrusted files (checked in torch 2.13: it unpickles
weights and constants marked ``use_pickle`` and sample inputs that fail a weights-only load with
``weights_only=False``, ``pickle.loads`` opaque objects, loads AOTInductor shared libraries, and
passes shape expressions from the file to ``sympy.sympify``, which evaluates them).
:func:`audit_pt2` therefore checks the archive without running anything from it: only a program
made of plain data (JSON graph, raw weight bytes, weights-only sample inputs, arithmetic shape
expressions) passes; anything else needs ``trust_pickle=True``.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError, one_line


_PT2_PLAIN = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|"
                        r"\.data/serialization_id|models/[^/]+\.json|"
                        r"data/weights/[^/]+_weights_config\.json|data/weights/weight_\d+|"
                        r"data/constants/[^/]+_constants_config\.json|data/constants/tensor_\d+|"
                        r"data/sample_inputs/[^/]+\.pt|extra/.+)")
_SYMPY_NAMES = frozenset({
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo", "Symbol", "Integer", "Rational",
    "Float", "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
    "zero", "nonzero", "even", "odd", "rational", "commutative",
})
# Tokens of a plain shape expression, e.g. "Symbol('s77', positive=True, integer=True)" or
# "2*s0 + FloorDiv(s1, 3)": names, numbers, quoted symbol names, operators. No attribute access,
# no underscores, no other strings.
_EXPR_TOKEN = re.compile(r"\s*(?:([A-Za-z][A-Za-z0-9]*)|(\d+(?:\.\d+)?(?:e[+-]?\d+)?)|"
                         r"('[a-z]+\d*'|\"[a-z]+\d*\")|(\*\*|//|[-+*/%(),<>=!&|~]))")


def audit_pt2(data: bytes, path: str | os.PathLike = "<pt2>") -> None:
    """Check that a ``.pt2`` archive is plain data that ``torch.export.load`` reads without code.

    Nothing from the archive is executed: the zip directory and JSON members are parsed, and the
    sample inputs are read with ``torch.load(weights_only=True)``. Refused: members outside the
    plain layout (AOTInductor libraries, ExecuTorch programs, legacy pickled state), weights or
    constants stored as pickles, script/opaque objects, sample inputs that are not weights-only,
    extension operators, and shape expressions that are not plain arithmetic on size symbols
    (``torch.export.load`` evaluates them with ``sympy.sympify``). Returns None; raises
    :class:`CheckpointError` naming the file and the first problem found.
    """
    p = Path(path)
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
    except (zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(p, f"corrupt or truncated zip archive ({one_line(err)})") from None

    def refuse(what: str):
        raise CheckpointError(p, f"refusing to load this torch.export program: {what}, which "
                              "torch.export.load would unpickle or execute; pass --trust-pickle "
                              "(trust_pickle=True) only if you trust where the file came from")

    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        refuse("its members are not under one archive folder (an unknown or legacy layout)")
    root = roots.pop() + "/"
    for name in names:
        rel = name[len(root):]
        if rel and not rel.endswith("/") and not _PT2_PLAIN.fullmatch(rel):
            refuse(f"it contains '{rel}'")
    try:
        for name in names:
            rel = name[len(root):]
            if rel.endswith(("_weights_config.json", "_constants_config.json")):
                config = json.loads(z.read(name)).get("config", {})
                for key, entry in config.items():
                    if entry.get("use_pickle"):
                        refuse(f"entry '{key}' is stored as a pickle")
                    if rel.endswith("_constants_config.json") and \
                            not str(entry.get("path_name", "")).startswith("tensor_"):
                        refuse(f"constant '{key}' is a script or opaque object")
            elif rel.startswith("models/"):
                _audit_program_json(json.loads(z.read(name)), refuse)
            elif rel.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(z.read(name)), map_location="cpu", weights_only=True)
                except Exception:
                    refuse(f"its sample inputs '{rel}' are not plain tensors")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, AttributeError, OSError) as err:
        raise CheckpointError(p, f"corrupt torch.export archive ({one_line(err)})") from None


def _audit_program_json(obj, refuse) -> None:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "expr_str" and isinstance(v, str):
                    _check_expression(v, refuse)
                elif k == "target" and isinstance(v, str) and v.startswith("#"):
                    refuse(f"it uses extension operator '{v}'")
                else:
                    stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)


def _check_expression(expr: str, refuse) -> None:
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                return
            refuse(f"shape expression {expr[:60]!r} is not plain arithmetic")
        name = m.group(1)
        if name and not (re.fullmatch(r"[a-z]+\d+", name) or name in _SYMPY_NAMES):
            refuse(f"shape expression {expr[:60]!r} uses the name '{name}'")
        pos = m.end()
