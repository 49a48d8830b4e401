"""paramgraph.memory: huge-page tensors and the retained heap (page faults, measured)."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from paramgraph import memory

# A child process: optionally retain the heap, then run steps that allocate and free two 40 MB
# tensors (a feature tensor of a batch of 1M-parameter CNN graphs is 28 MB), and report the
# minor page faults per step once warm. Blocks above 32 MB are always mmap'd by glibc's
# defaults (its adaptive threshold stops there), so the control faults every page of every step
# deterministically; smaller blocks refault only for some allocation patterns (a training step's
# do: README, "Page faults and a slow tanh"), which made a control built on them flaky.
_CHILD = """
import json, resource, sys
import torch
from paramgraph import memory
on = memory.retain_freed_heap() if sys.argv[1] == "1" else False
def step():
    a = torch.ones(10_000_000)
    b = a * 2
    del a, b
for _ in range(5):
    step()
f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f) / 10
print(json.dumps({"on": on, "faults": faults}))
"""

glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's")


def _faults(retain: bool, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, "1" if retain else "0"], check=True,
                         capture_output=True, text=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
def test_retained_heap_stops_refaulting_freed_tensors():
    retained, control = _faults(True), _faults(False)
    assert retained["on"] and not control["on"]
    # the control shows the cost the setting removes: every step faults its tensors in again
    # (9,766 pages per 40 MB tensor, ~19,500 per step), while the retained heap reuses warm
    # pages (0 per step, or ~980 in some runs: a twentieth of the control's)
    assert control["faults"] > 15000
    assert retained["faults"] < control["faults"] / 5


@glibc_linux
def test_retained_heap_can_be_switched_off():
    assert not _faults(True, PARAMGRAPH_RETAIN_HEAP="0")["on"]


def test_retain_freed_heap_is_idempotent():
    first = memory.retain_freed_heap()
    assert memory.retain_freed_heap() == first
    torch.ones(1000, 1000).sum()  # allocation still works


def test_empty_is_an_ordinary_tensor():
    t = memory.empty((2048, 1024), torch.float32)  # 8 MB: gets the huge-page hint
    t.fill_(1.5)
    assert t.shape == (2048, 1024) and t.dtype == torch.float32
    assert float(t.sum()) == 1.5 * t.numel()


def test_gc_frozen_keeps_live_objects_out_of_collections_and_restores_them():
    """Inside: the objects alive on entry are frozen (not scanned), new garbage is still
    collected; after (also after an error): nothing stays frozen. Control: outside, nothing is."""
    import gc

    from paramgraph.memory import gc_frozen

    assert gc.get_freeze_count() == 0  # control
    with gc_frozen():
        assert gc.get_freeze_count() > 0
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # a cycle made inside is still collected
    assert gc.get_freeze_count() == 0
    try:
        with gc_frozen():
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
