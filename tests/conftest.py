"""
Fixtures shared by the test modules. Builders that tests call with arguments live in helper
modules beside this file (``core_factories``, ``training_factories``, ``frame_factories``), which
are imported as modules; no test module imports another.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """
    One intra-op thread for the rest of the module (restored afterwards): the tensors of the
    tests are small, so one thread is as fast, and far faster when the cores are busy. Module
    scope, so that module fixtures that train or render (and depend on it) also run on one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
