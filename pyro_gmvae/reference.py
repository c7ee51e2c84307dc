"""The GMVAE's negative ELBO written out in plain PyTorch, an explicit vectorised sum over the K
clusters: an oracle for the Pyro program.

:func:`hand_loss` computes, with the model's own networks and prior, what the trainer's phases
compute through ``TraceEnum_ELBO``: the :class:`~pyro_gmvae.train.SVI` loss (y summed out) and,
given each example's cluster, the :class:`~pyro_gmvae.train.Anchor` loss. The tests hold the Pyro
program to it, and ``benchmarks/speed.py`` times it as what the same computation costs without
Pyro. z is drawn exactly as Pyro draws it, so under the same seed both see the same z.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

from .likelihoods import Bernoulli
from .model import GMVAE

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log N(z; loc, diag(scale^2)), summed over the last dimension: ``(..., Z) -> (...)``."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - _HALF_LOG_2PI).sum(-1)


def _log_normal_of_draw(eps: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log N(loc + scale * eps; loc, scale) from the standard draw ``eps``: ``(..., Z) -> (...)``."""
    return (-0.5 * eps**2 - scale.log() - _HALF_LOG_2PI).sum(-1)


def _log_likelihood(model: GMVAE, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) from the decoder output ``(..., N, D)`` and ``x (N, D)``: ``-> (..., N)``."""
    if type(model.likelihood) is Bernoulli:
        # What one writes by hand; other likelihoods go through the model's own module.
        target = x.expand_as(decoded)
        return -F.binary_cross_entropy_with_logits(decoded, target, reduction="none").sum(-1)
    return model.likelihood(decoded).log_prob(x)


def draw_like_pyro(like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws of ``like``'s shape, as ``Normal.rsample`` makes them."""
    return torch.empty_like(like).normal_()


def draw_like_jit(like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws as ``Normal.rsample`` makes them under a JIT trace."""
    return torch.normal(torch.zeros_like(like), torch.ones_like(like))


def hand_loss(
    model: GMVAE,
    x: torch.Tensor,
    view: torch.Tensor | None = None,
    beta: float = 1.0,
    draw: Callable[[torch.Tensor], torch.Tensor] = draw_like_pyro,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """The negative ELBO per example, KL terms weighted by ``beta``, in plain PyTorch.

    With ``y=None`` it is the SVI phase's loss, y summed out over the K clusters (no Python loop):

    - marginal guide: ``-(log p(x|z) + beta * (log p(z) - log q(z|x)))``, where
      ``log p(z) = logsumexp_y [log pi_y + log p(z|y)]``;
    - enumerated guide: ``-sum_y q(y|x) [log p(x|z_y) + beta * (log pi_y + log p(z_y|y)
      - log q(y|x) - log q(z_y|x,y))]``, one z_y drawn per cluster.

    Given ``y``, the Anchor phase's: the sum collapses to each example's cluster, and q(y|x) adds
    no term: ``-(log p(x|z) + beta * (log pi_y + log p(z|y) - log q(z|x[,y])))``.

    Args:
        model: the GMVAE whose networks and prior are used.
        x: ``(N, D)`` the examples the likelihood scores.
        view: ``(N, D)`` what the encoders see instead of ``x`` (augmented view), or None.
        beta: the weight of the KL terms (the model's ``kl_scale``; 1: the exact ELBO).
        draw: makes the standard normal noise of z from a tensor of its shape, as the loss it is
            compared with does (:func:`draw_like_jit` for a JIT-compiled loss).
        y: ``(N,)`` each example's given cluster, or None to sum y out.

    Returns:
        A scalar: minus the ELBO averaged over the N examples.
    """
    seen = x if view is None else view
    log_pi = F.log_softmax(model.cluster_logits, -1)  # (K,)
    means, scales = model.cluster_means, model.cluster_scales()  # (K, Z)
    if y is None and model.cluster_encoder is not None:
        log_q_y = F.log_softmax(model.cluster_encoder(seen), -1).T  # (K, N)
        clusters = torch.arange(model.n_clusters, device=x.device).unsqueeze(-1)  # (K, 1)
        loc, scale = model.encoder(seen, clusters)  # (K, N, Z)
        eps = draw(loc)
        z = loc + scale * eps
        log_lik = _log_likelihood(model, model.decoder(z), x)  # (K, N): K decoder passes
        kl_terms = (
            log_pi.unsqueeze(-1)
            + _log_normal(z, means.unsqueeze(-2), scales.unsqueeze(-2))
            - log_q_y
            - _log_normal_of_draw(eps, scale)
        )  # (K, N)
        return -(log_q_y.exp() * (log_lik + beta * kl_terms)).sum(0).mean()

    # One z per example: from q(z|x), or from q(z|x,y) at the given y (enumerated guide).
    given = model.cluster_encoder is not None
    loc, scale = model.encoder(seen, y) if given else model.encoder(seen)  # (N, Z)
    eps = draw(loc)
    z = loc + scale * eps
    if y is None:
        # log p(z): (N, 1, Z) against (K, Z) -> (N, K), summed over the clusters
        log_prior = (log_pi + _log_normal(z.unsqueeze(-2), means, scales)).logsumexp(-1)
    else:
        log_prior = log_pi[y] + _log_normal(z, means[y], scales[y])  # (N,)
    log_lik = _log_likelihood(model, model.decoder(z), x)  # (N,)
    return -(log_lik + beta * (log_prior - _log_normal_of_draw(eps, scale))).mean()


__all__ = ["draw_like_jit", "draw_like_pyro", "hand_loss"]
