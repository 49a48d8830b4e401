"""Building an architecture named on the command line (``--arch MODULE:CALLABLE``) and fitting a
state_dict into it."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

from torch import Tensor, nn

from .errors import CheckpointError, ParamGraphError, one_line


def build_architecture(spec: str, kwargs: dict | None = None) -> nn.Module:
    """Build a network from ``"package.module:callable"`` (or ``"path/to/file.py:callable"``).

    The callable (a function or an ``nn.Module`` class; dotted names reach attributes) is called
    with ``kwargs`` and must return an ``nn.Module``. The current directory is importable, as
    with ``python -m``, while the module is imported (``sys.path`` is restored afterwards). This imports and runs the named code: it is the user's own choice, unlike
    anything inside a checkpoint. Raises :class:`~paramgraph.ParamGraphError` with one line
    saying what failed (bad spec, import error, missing attribute, failing call, wrong type).
    """
    obj, attr = resolve_callable(spec)
    try:
        net = obj(**(kwargs or {}))
    except Exception as err:
        raise ParamGraphError(f"--arch '{spec}': calling {attr}(**{kwargs or {}}) failed "
                              f"({type(err).__name__}: {one_line(err)})") from err
    if not isinstance(net, nn.Module):
        raise ParamGraphError(f"--arch '{spec}': {attr}() returned a {type(net).__name__}, not "
                              "an nn.Module")
    return net


def resolve_callable(spec: str):
    """``(callable, attribute name)`` named by ``spec`` (see :func:`build_architecture`), imported
    but not called; raises :class:`~paramgraph.ParamGraphError` as that function does."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ParamGraphError(f"--arch '{spec}' must look like 'package.module:callable' or "
                              "'file.py:callable'")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            file = Path(module_name)
            if not file.is_file():
                raise ParamGraphError(f"--arch '{spec}': no such file '{module_name}'")
            mod_spec = importlib.util.spec_from_file_location(f"_pg_arch_{file.stem}", file)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            with _cwd_importable():
                module = importlib.import_module(module_name)
    except ParamGraphError:
        raise
    except Exception as err:
        raise ParamGraphError(f"--arch '{spec}': cannot import '{module_name}' "
                              f"({type(err).__name__}: {one_line(err)})") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ParamGraphError(f"--arch '{spec}': '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ParamGraphError(f"--arch '{spec}': '{attr}' is not callable")
    return obj, attr


def fit_state_dict(module: nn.Module, state: dict[str, Tensor], source: str | os.PathLike,
                   arch: str = "the architecture") -> nn.Module:
    """Put the checkpoint's tensors into ``module`` as they are (same objects, dtypes kept).

    Returns ``module``. Raises :class:`CheckpointError` naming the file and listing, by name,
    the keys the architecture needs but the checkpoint lacks (``num_batches_tracked`` counters
    excepted), the keys the architecture does not have, and tensors of the wrong shape.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} (checkpoint {list(state[k].shape)}, architecture {list(own[k].shape)})"
             for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", wrong)):
            if names:
                more = f" and {len(names) - 8} more" if len(names) > 8 else ""
                parts.append(f"{label}: {', '.join(names[:8])}{more}")
        raise CheckpointError(source, f"does not fit {arch}: {'; '.join(parts)}")
    module.load_state_dict(state, strict=False, assign=True)
    return module


@contextmanager
def _cwd_importable():
    """The current directory on ``sys.path`` for the duration of one import, as ``python -m``
    would have it; the user's ``sys.path`` is left as it was."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with suppress(ValueError):
                sys.path.remove(cwd)
