"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Time with one torch thread: when another process holds the cores, a spinning OpenMP team
    makes runs up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
