"""Shared fixtures for the test suite."""

from pathlib import Path

import pytest

from pyro_gmvae.data import resolve_mnist8k


@pytest.fixture(scope="session")
def mnist8k_path() -> Path:
    """Path of the shared 8,000-digit MNIST file; skips the test where it is absent."""
    path = resolve_mnist8k()
    if path is None:
        pytest.skip("mnist8k.npz not found; set PYRO_GMVAE_MNIST8K to its path")
    return path
