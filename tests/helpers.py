"""Tiny data and short recipes shared by the tests (importable: pytest puts tests/ on the path)."""

from __future__ import annotations

import numpy as np

from pyro_gmvae import ModelConfig, TrainConfig


def blobs(n: int = 300, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated 2-D Gaussian blobs sent through a fixed random linear map and a
    sigmoid into ``[0, 1]^d``: ``x (n, d)`` float32 and labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = 6.0 * np.array([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    latent = centers[labels] + rng.normal(size=(n, 2))
    x = 1.0 / (1.0 + np.exp(-latent @ rng.normal(size=(2, d)) / 2.0))
    return x.astype(np.float32), labels


def small_train(**kwargs) -> TrainConfig:
    """A short recipe for tiny data, independent of TrainConfig's (changing) defaults."""
    values = dict(
        epochs=15,
        pretrain_epochs=10,
        batch_size=64,
        lr=3e-3,
        lr_decay=0.9,
        init="gmm",
        restarts=2,
        anchor_epochs=0,
        anchor_min_steps=0,  # epochs alone: the tests' anchors are a few steps
        anchor_beta=10.0,
        anchor_classify=0.0,
        svi_lr=0.0,  # --lr
        clip_norm=10.0,
        beta=1.0,
        augment_rotation=0.0,
        augment_shift=0.0,
        consistency_weight=0.0,
        seed=0,
        device="cpu",
        checkpoint_every=5,
    )
    return TrainConfig(**(values | kwargs))


def small_model(**kwargs) -> ModelConfig:
    values = dict(clusters=3, latent_dim=2, hidden=(32,), learn_weights=True)
    return ModelConfig(**(values | kwargs))
