"""Shared fixtures for the test suite."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_mnist8k(root: Path = REPO_ROOT) -> Path | None:
    """Path of the shared 8,000-digit MNIST file (``images`` (8000, 784) uint8, ``labels``).

    ``$PYRO_GMVAE_MNIST8K`` if set, else ``../shared/data/mnist8k.npz`` from the repository
    ``root``; None when the file does not exist. Here and not in the library, which has no
    business knowing where this repository's shared files lie; ``benchmarks/_paths.py`` is the
    benchmarks' copy of the same rule.
    """
    env = os.environ.get("PYRO_GMVAE_MNIST8K")
    path = Path(env).expanduser() if env else root.parent / "shared/data/mnist8k.npz"
    return path if path.is_file() else None


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
