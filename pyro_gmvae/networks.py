"""Neural networks of the model and the guides. The model and guides only wire these together.

Any ``nn.Module`` with the same call signature can replace one of them (see :class:`~pyro_gmvae.GMVAE`):

- decoder: ``z (..., Z) -> output (..., D * params_per_feature)``
- encoder: ``(x (N, D), y (K, 1) or None) -> (loc, scale)``, each ``(N, Z)``, or ``(K, N, Z)`` given y
- cluster encoder: ``x (N, D) -> logits (N, K)``
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def mlp(sizes: Sequence[int], activate_last: bool = False) -> nn.Sequential:
    """Fully connected layers ``sizes[0] -> ... -> sizes[-1]`` with ReLU between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or activate_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """``z -> `` the likelihood's parameters, through an MLP mirroring the encoder."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], n_outputs: int):
        super().__init__()
        self.net = mlp([latent_dim, *reversed(hidden), n_outputs])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Encoder(nn.Module):
    """q(z|x) or q(z|x,y): a diagonal Gaussian whose location may shift with the cluster y.

    The trunk runs once per example; conditioning on y adds a learned per-cluster offset to the
    location, so the enumerated guide costs one encoder pass however many clusters are summed.
    """

    def __init__(
        self, n_features: int, hidden: Sequence[int], latent_dim: int, n_clusters: int = 0
    ):
        super().__init__()
        self.trunk = mlp([n_features, *hidden], activate_last=True)
        width = hidden[-1] if hidden else n_features
        self.loc = nn.Linear(width, latent_dim)
        self.raw_scale = nn.Linear(width, latent_dim)
        # Zero offsets at the start: q(z|x,y) begins equal to q(z|x) for every y.
        self.cluster_offset = nn.Embedding(n_clusters, latent_dim) if n_clusters else None
        if self.cluster_offset is not None:
            nn.init.zeros_(self.cluster_offset.weight)

    @torch.no_grad()
    def reset_scale(self, scale: float) -> None:
        """Make q(z|x) have the same standard deviation ``scale`` in every dimension for every x
        (the location is untouched): autoencoder pretraining never trains the scale."""
        if not scale > 1e-4:
            raise ValueError(f"scale must be larger than 1e-4, the floor of the scale, not {scale}")
        self.raw_scale.weight.zero_()
        self.raw_scale.bias.fill_(math.log(math.expm1(scale - 1e-4)))  # softplus^-1

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        loc = self.loc(h)
        scale = F.softplus(self.raw_scale(h)) + 1e-4
        if y is not None and self.cluster_offset is not None:
            # y: (K, 1) under enumeration -> offset (K, 1, Z) broadcasts to (K, N, Z)
            loc = loc + self.cluster_offset(y)
            scale = scale.expand_as(loc)
        return loc, scale


class ClusterEncoder(nn.Module):
    """q(y|x): logits over the K clusters."""

    def __init__(self, n_features: int, hidden: Sequence[int], n_clusters: int):
        super().__init__()
        self.net = mlp([n_features, *hidden, n_clusters])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
