"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, as `tapfinger evaluate` runs: forward passes of small
    networks are chains of small ops, and extra threads only contend on a shared machine."""
    import torch  # only the modules that use this fixture need torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
