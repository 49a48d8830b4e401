"""Allocation of the large tensors of a graph.

Converting a network writes every one of its values once into freshly allocated memory, so on
Linux the cost of first touching that memory (one page fault per 4 KiB page) is a large part of
the conversion time: for a 22M-parameter network, ~550 MB of graph, 3-4x the cost of the writes
themselves. :func:`empty` asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``,
the same hint PyTorch gives with ``THP_MEM_ALLOC_ENABLE=1``) for the tensors it allocates, which
cuts the number of faults by up to 512x. The tensors are ordinary CPU tensors; where the hint is
unavailable (not Linux, no libc, THP disabled) it is simply not given.

Training has the same cost in another form: every step allocates and frees the same edge-sized
tensors (a batch of 64 small CNN graphs: ~14k edges x 64 features, 3.5 MB each), and glibc's
``malloc`` hands blocks that large back to the kernel when they are freed (``munmap``, or a trim
of the heap's top), so the next step faults every page in again: ~3,900 page faults per round
of the backbone, a fifth of its time. :func:`retain_freed_heap` tells ``malloc`` to keep freed
memory in the process (``mallopt``: no ``mmap`` below 1 GiB, no trimming below 2 GiB); the
process's peak memory is what it was, it is just not returned to the system until exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
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


# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BELOW = 1 << 30  # no mmap for blocks under 1 GiB: freed ones stay in the heap
_TRIM_ABOVE = 1 << 31  # the heap's free top is returned to the kernel only beyond 2 GiB
_retained = False


def retain_freed_heap() -> bool:
    """Keep memory that PyTorch frees inside the process, so that the next allocation of the
    same size reuses warm pages instead of faulting fresh ones in (see the module docstring).
    Process-wide and permanent; a no-op (``False``) where the C library is not glibc or the
    environment sets ``PARAMGRAPH_RETAIN_HEAP=0``. Returns whether the setting is in effect."""
    global _retained
    if _retained:
        return True
    if os.environ.get("PARAMGRAPH_RETAIN_HEAP", "1") == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both: setting either one turns off glibc's adaptive thresholds, and then the other's
    # default (128 KiB) alone would still unmap or trim every edge-sized block
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)
                     and mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))
    return _retained


@contextlib.contextmanager
def gc_frozen():
    """Keep the objects alive on entry out of the garbage collector's scans until exit
    (``gc.freeze``, then ``gc.unfreeze``). Why: a training process holds its data sets (thousands
    of stored graphs, each a dict of tensors), and every full collection, which the allocations
    of the steps trigger, walks all of them: one took ~200 ms in a 30-step quasi run on the bench
    zoo (7 ms per step, billed to whichever step it hit). Objects created inside are collected as
    usual; frozen ones that die inside are freed after exit."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
