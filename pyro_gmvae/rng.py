"""Randomness in one place: seeding a run, a forked random state for side computations (evaluation,
checks, figures) that leaves the caller's as it was, and the whole random state as tensors and plain
values, so that a checkpoint holds it and a resumed run draws what the uninterrupted one would."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyro
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (``pyro.set_rng_seed``)."""
    pyro.set_rng_seed(seed)


@contextlib.contextmanager
def preserved(device: torch.device | str = "cpu") -> Iterator[None]:
    """The block may draw from (or reseed) any global generator, Python's, numpy's, torch's and
    CUDA's on a CUDA ``device``; the caller's states are restored afterwards."""
    device = torch.device(device)
    state = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(state, device)


@contextlib.contextmanager
def forked_seed(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with torch's generator (and CUDA's on a CUDA ``device``) seeded with
    ``seed``; every global random state is restored afterwards (:func:`preserved`)."""
    with preserved(device):
        torch.manual_seed(seed)
        yield


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global random state of torch, Python and numpy (and CUDA on a CUDA ``device``), as
    tensors and plain values that ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()  # noqa: NPY002 (Pyro and scikit-learn draw from it)
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore a state from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
