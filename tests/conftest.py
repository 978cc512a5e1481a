"""Fixtures shared by every test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_defaults():
    """Tests must not leak global torch settings into each other."""
    threads = torch.get_num_threads()
    yield
    if torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)
