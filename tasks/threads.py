"""Control of torch's intra-op thread count.

Tiny networks run fastest on one thread (thread hand-offs cost more than the arithmetic, and far
more on a busy machine), and a fixed thread count keeps floating-point reductions, and so results,
identical between runs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def threads(n: int | None):
    """Run the body with ``torch.set_num_threads(n)`` (``None``: leave as is), then restore."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)
