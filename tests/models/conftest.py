"""Fixtures of the model tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: a second OpenMP thread costs more than it gives (and spins for ~20 ms per op
    when the CPU is shared), so tests that ask for this run single-threaded; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
