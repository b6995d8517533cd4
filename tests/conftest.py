"""Shared fixtures."""
import os

import pytest
import torch

SEED_ENV = "STRETCHYSNAKE_TEST_SEED"


def draw_seed() -> int:
    """A fresh seed for random test inputs (STRETCHYSNAKE_TEST_SEED fixes it), printed: pytest
    shows a failing test's output, so the failure can be replayed with that seed."""
    seed = int(os.environ.get(SEED_ENV) or torch.seed() % 2**31)
    print(f"random inputs: seed {seed} ({SEED_ENV}={seed} replays them)")
    return seed


@pytest.fixture(autouse=True)
def fresh_seed() -> int:
    """Every test starts with torch's global generator seeded afresh from draw_seed (so random
    inputs drawn without a generator can be replayed too); the seed, for a generator of its
    own."""
    seed = draw_seed()
    torch.manual_seed(seed)
    return seed


@pytest.fixture
def one_torch_thread():
    """Time with one torch thread: when another process holds the cores, a spinning OpenMP team
    makes runs up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
