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


@pytest.fixture
def refuse_calls(monkeypatch):
    """
    ``refuse_calls(message, (module, name), ...)`` replaces each named function of a module,
    for the rest of the test, by one that fails the test with ``message`` when called (e.g. a
    loader that must not run before the arguments are checked).
    """

    def refuse(message: str, *targets: tuple[object, str]) -> None:
        def fail(*args, **kwargs):
            raise AssertionError(message)

        for module, name in targets:
            monkeypatch.setattr(module, name, fail)

    return refuse
