"""Where the benchmarks find the shared 8,000-digit MNIST file.

Not part of the library: the file lies beside this repository, not inside an installed package.
The benchmarks run as scripts (``python benchmarks/speed.py``), so Python puts this directory on
``sys.path`` and they import this module as ``_paths``. ``tests/conftest.py`` locates the file
for the tests by the same rule.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_mnist8k(root: Path = REPO_ROOT) -> Path | None:
    """Path of the shared 8,000-digit MNIST file (``images`` (8000, 784) uint8, ``labels``).

    ``$PYRO_GMVAE_MNIST8K`` if set, else ``../shared/data/mnist8k.npz`` from the repository
    ``root``; None when the file does not exist.
    """
    env = os.environ.get("PYRO_GMVAE_MNIST8K")
    path = Path(env).expanduser() if env else root.parent / "shared/data/mnist8k.npz"
    return path if path.is_file() else None
