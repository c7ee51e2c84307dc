"""The two locators of the shared MNIST file, the tests' (conftest.py) and the benchmarks'
(benchmarks/_paths.py), follow the same rule: ``$PYRO_GMVAE_MNIST8K``, else
``../shared/data/mnist8k.npz`` from the repository root."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import conftest
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmarks_paths():
    spec = importlib.util.spec_from_file_location("_paths", ROOT / "benchmarks" / "_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCATORS = {"tests": conftest.resolve_mnist8k, "benchmarks": _benchmarks_paths().resolve_mnist8k}


@pytest.mark.parametrize("who", sorted(LOCATORS))
def test_the_environment_variable_names_the_file(tmp_path, monkeypatch, who):
    target = tmp_path / "m.npz"
    monkeypatch.setenv("PYRO_GMVAE_MNIST8K", str(target))
    assert LOCATORS[who]() is None
    np.savez(target, images=np.zeros((2, 4), np.uint8))
    assert LOCATORS[who]() == target


@pytest.mark.parametrize("who", sorted(LOCATORS))
def test_the_default_is_shared_data_beside_the_repository_root(tmp_path, monkeypatch, who):
    monkeypatch.delenv("PYRO_GMVAE_MNIST8K", raising=False)
    root = tmp_path / "repo"
    assert LOCATORS[who](root) is None
    target = tmp_path / "shared" / "data" / "mnist8k.npz"
    target.parent.mkdir(parents=True)
    np.savez(target, images=np.zeros((2, 4), np.uint8))
    assert LOCATORS[who](root) == target


def test_both_default_to_this_repository():
    assert conftest.REPO_ROOT == _benchmarks_paths().REPO_ROOT == ROOT
