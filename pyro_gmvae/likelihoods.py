"""Observation models p(x|z): each maps the decoder's output to a Pyro distribution over x.

A likelihood is a small ``nn.Module`` (so a learned scale trains with the rest of the model) with
three duties: say how many decoder outputs it needs per feature, build the distribution, and check
that data lie in its support before training starts. Subclass :class:`Likelihood` to add one.
"""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .dataset import value_range
from .errors import ConfigError, DataError


class Likelihood(nn.Module):
    """Base class: ``forward(decoder_output) -> distribution`` with event shape ``(D,)``."""

    #: decoder outputs per feature (e.g. 2 for a location and a scale)
    params_per_feature: int = 1

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = n_features

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The expected x given the decoder output, shape ``(..., D)``."""
        return self(decoder_output).mean

    def check_support(self, x: np.ndarray | torch.Tensor, name: str = "data") -> None:
        """Raise :class:`DataError` when ``x`` lies outside this likelihood's support; ``x``
        may be a :class:`~pyro_gmvae.dataset.ScaledRows`, gone through in chunks."""


class _UnitInterval(Likelihood):
    def check_support(self, x: np.ndarray | torch.Tensor, name: str = "data") -> None:
        lo, hi = value_range(x)
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{name}: values range over [{lo:g}, {hi:g}] but the {self.label} likelihood needs "
                "values in [0, 1]; scale images to [0, 1] (e.g. divide grey levels by 255) or use "
                "--likelihood gaussian for real-valued data"
            )


class Bernoulli(_UnitInterval):
    """Bernoulli pixels with decoder logits. Grey levels in [0, 1] are allowed as soft targets:
    the log-density is then the (negative) binary cross-entropy, as in most VAE papers."""

    label = "bernoulli"

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        # validate_args=False: grey levels are not in {0, 1}, which Bernoulli would reject.
        return dist.Bernoulli(logits=decoder_output, validate_args=False).to_event(1)


class ContinuousBernoulli(_UnitInterval):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a proper density on [0, 1]."""

    label = "continuous_bernoulli"

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        # Clamp keeps the normalising constant finite in float32 at extreme logits.
        logits = decoder_output.clamp(-15.0, 15.0)
        return dist.ContinuousBernoulli(logits=logits, validate_args=False).to_event(1)


class Gaussian(Likelihood):
    """Gaussian with the decoder's mean and a learned per-feature scale, for real-valued tables."""

    label = "gaussian"

    def __init__(self, n_features: int, min_scale: float = 1e-3):
        super().__init__(n_features)
        self.min_scale = min_scale
        self.raw_scale = nn.Parameter(torch.full((n_features,), 0.5413))  # softplus -> 1.0

    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(decoder_output, self.scale()).to_event(1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "continuous_bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
}


def make_likelihood(name: str, n_features: int) -> Likelihood:
    """The likelihood called ``name`` (``--likelihood``) for observations of ``n_features``
    values; the one registry of likelihood names is :data:`LIKELIHOODS`.

    Raises:
        ConfigError: an unknown name.
    """
    if name not in LIKELIHOODS:
        raise ConfigError(f"--likelihood must be one of {', '.join(LIKELIHOODS)}, not {name!r}")
    return LIKELIHOODS[name](n_features)
