"""Test-session settings shared by every test file.

torch runs each test network's small ops on one thread: with several threads, ops of a few
microseconds spend up to 100 ms synchronising the thread pool whenever the machine is busy
(pytest-xdist workers, other jobs), which made the suite 10-40x slower. Set
``PARAMGRAPH_TEST_THREADS`` to use more.
"""

from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("PARAMGRAPH_TEST_THREADS", "1")))
