"""Shared fixtures for the test suite."""

from pathlib import Path

import pytest
import torch

from pyro_gmvae.data import resolve_mnist8k


@pytest.fixture(scope="session")
def mnist8k_path() -> Path:
    """Path of the shared 8,000-digit MNIST file; skips the test where it is absent."""
    path = resolve_mnist8k()
    if path is None:
        pytest.skip("mnist8k.npz not found; set PYRO_GMVAE_MNIST8K to its path")
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Run fast tests on one CPU thread: their tiny matrices gain nothing from more, and on a
    busy machine competing threads make them many times slower. Slow tests keep the default."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
