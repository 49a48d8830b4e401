"""Checkpoints in and state_dicts out. Nothing here runs code from a file.

Checkpoints (:func:`load_checkpoint`) are recognised by their content, not their suffix:

* safetensors: read with ``safetensors``;
* ``torch.save`` files: read with ``torch.load(..., weights_only=True)``, which only rebuilds
  tensors and plain containers. Anything else in the pickle (a whole ``nn.Module``, or a crafted
  ``__reduce__``) makes it refuse; :class:`CheckpointError` says so, and only ``trust_pickle=True``
  unpickles such a file with code execution;
* ``torch.export`` programs (``.pt2``): audited by :func:`paramgraph.pt2audit.audit_pt2` before
  ``torch.export.load`` sees them (that loader is not safe for untrusted files; see there). The
  bytes are read once and the audited bytes are the ones loaded.

State_dicts are written by :func:`save_state_dict` (safetensors or ``torch.save``), atomically.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .atomic import atomic_path
from .errors import CheckpointError, ParamGraphError, one_line
from .pt2audit import audit_pt2
from .sniff import sniff_format
from .graphfile import storable

# -- checkpoints -----------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False):
    """Load a checkpoint file without running code from it (unless ``trust_pickle``).

    Returns a state_dict (``dict`` of name -> tensor) for safetensors files and ``torch.save``d
    state_dicts (also when nested under a ``"state_dict"``, ``"model_state_dict"`` or ``"model"``
    key of a training checkpoint), an :class:`~torch.export.ExportedProgram` for ``.pt2`` programs,
    and, only with ``trust_pickle=True``, whatever a full unpickle gives (a pickled
    ``nn.Module``, say).

    Raises :class:`CheckpointError` naming the file for a missing, empty, truncated or corrupt
    file, an unknown format, a graph file, content that is not a state_dict, and for a pickle or
    ``.pt2`` archive that holds more than plain data (refused unless ``trust_pickle``; the message
    says what it holds and why it was refused).
    """
    p = Path(path)
    kind = sniff_format(p)
    if kind == "graph":
        raise CheckpointError(p, "is a paramgraph graph file, not a checkpoint")
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as err:
            raise CheckpointError(p, f"corrupt or truncated safetensors file "
                                  f"({one_line(err)})") from None
    if kind in ("torch", "pickle"):
        return _load_torch(p, trust_pickle)
    if kind == "pt2":
        return _load_pt2(p, trust_pickle)
    raise CheckpointError(p, "unknown format: not a safetensors file, a torch.save file or a "
                          "torch.export program")


def _load_torch(p: Path, trust_pickle: bool):
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "Weights only load failed" not in message:
            raise CheckpointError(p, f"corrupt pickle ({one_line(err)})") from None
        if not trust_pickle:
            found = re.search(r"GLOBAL ([\w.]+)", message)
            if found:
                raise CheckpointError(p, f"refusing to unpickle: the file holds Python objects "
                                      f"({found.group(1)}), not only tensors, and unpickling "
                                      "them can run arbitrary code; pass --trust-pickle "
                                      "(trust_pickle=True) only if you trust where the file "
                                      "came from") from None
            detail = message[message.find("WeightsUnpickler error:"):].split("\n\n")
            detail = one_line(" ".join(detail[:2])).removeprefix("WeightsUnpickler error:")
            raise CheckpointError(p, f"corrupt, or a pickle that only a full unpickle could read "
                                  f"(weights-only unpickler: {detail.strip()}); a full unpickle "
                                  "(--trust-pickle) can run code from the file") from None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise CheckpointError(p, f"unpickling failed ({one_line(err2)})") from None
    except Exception as err:  # zip/stream errors, bad magic numbers, cut-off data
        raise CheckpointError(p, f"corrupt or truncated torch.save file ({one_line(err)})") \
            from None
    if isinstance(obj, nn.Module):
        return obj
    state = _find_state_dict(obj)
    if state is None:
        raise CheckpointError(p, f"holds a {type(obj).__name__}, not a state_dict (a dict of "
                              "tensors) or a module")
    return state


def _find_state_dict(obj) -> dict[str, Tensor] | None:
    def is_state(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, Tensor)
                                                 for k, v in d.items())

    if is_state(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if is_state(obj.get(key)):
                return dict(obj[key])
    return None


def _load_pt2(p: Path, trust_pickle: bool):
    try:
        data = p.read_bytes()
    except OSError as err:
        raise CheckpointError(p, f"cannot read ({err.strerror})") from None
    if not trust_pickle:
        audit_pt2(data, p)
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    try:
        with warnings.catch_warnings(), _quiet_logging(quiet):
            warnings.simplefilter("ignore")
            return torch.export.load(io.BytesIO(data))
    except Exception as err:
        raise CheckpointError(p, f"corrupt or unreadable torch.export program "
                              f"({one_line(err)})") from None


@contextlib.contextmanager
def _quiet_logging(quiet: bool):
    # torch.export.load logs a multi-line traceback at WARNING level before raising.
    if not quiet:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def check_finite(tensors: dict[str, Tensor], source: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` if any floating tensor holds NaN or infinity.

    The message names each offending tensor with its counts (at most 5 named, then how many
    more) and says that ``--allow-nonfinite`` converts anyway.
    """
    bad = []
    for name, t in tensors.items():
        if not isinstance(t, Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(t).sum())
        inf = int((~finite).sum()) - nan
        parts = [f"{nan} NaN"] * bool(nan) + [f"{inf} inf"] * bool(inf)
        bad.append(f"{name} ({', '.join(parts)})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(source, f"non-finite weights in {', '.join(bad[:5])}{more}; pass "
                              "--allow-nonfinite to convert anyway")


# -- state_dicts out -------------------------------------------------------------------------------


def save_state_dict(state: dict[str, Tensor], path: str | os.PathLike) -> Path:
    """Write a state_dict atomically: safetensors for ``.safetensors``, ``torch.save`` for
    ``.pt``/``.pth``/``.bin``. Returns the path; raises :class:`~paramgraph.ParamGraphError` for
    another suffix."""
    from safetensors.torch import save_file

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        tensors = {k: storable(v) for k, v in state.items()}
        with atomic_path(p) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    elif suffix in (".pt", ".pth", ".bin"):
        with atomic_path(p) as tmp:
            torch.save({k: v.detach().clone() for k, v in state.items()}, tmp)
    else:
        raise ParamGraphError(f"{p}: unknown output format '{suffix}' (use .safetensors, .pt or "
                              ".pth)")
    return p
