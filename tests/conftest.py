"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from more threads, and on a shared CPU two OpenMP threads
    that wait for each other made small fits 20x slower (measured: 143 s vs 6 s).
    Files with tiny fits use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
