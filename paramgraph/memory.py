"""Allocation of the large tensors of a graph.

Converting a network writes every one of its values once into freshly allocated memory, so on
Linux the cost of first touching that memory (one page fault per 4 KiB page) is a large part of
the conversion time: for a 22M-parameter network, ~550 MB of graph, 3-4x the cost of the writes
themselves. :func:`empty` asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``,
the same hint PyTorch gives with ``THP_MEM_ALLOC_ENABLE=1``) for the tensors it allocates, which
cuts the number of faults by up to 512x. The tensors are ordinary CPU tensors; where the hint is
unavailable (not Linux, no libc, THP disabled) it is simply not given.
"""

from __future__ import annotations

import ctypes
import sys

import torch

_PAGE = 4096
_MIN_BYTES = 4 << 20  # below this, huge pages change nothing worth a system call
_MADV_HUGEPAGE = 14


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU, backed by huge pages where possible."""
    t = torch.empty(shape, dtype=dtype)
    if _madvise is not None and t.nbytes >= _MIN_BYTES:
        ptr = t.data_ptr()
        start = (ptr + _PAGE - 1) & ~(_PAGE - 1)
        end = (ptr + t.nbytes) & ~(_PAGE - 1)
        _madvise(start, end - start, _MADV_HUGEPAGE)  # a hint: failure costs nothing
    return t
