"""The GMVAE: its generative model, its two guides, and what a user asks of a fitted one."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from .checkpoints import CHECKPOINT_FILE, CONFIG_FILE, load_checkpoint, save_checkpoint
from .config import ModelConfig, RunConfig
from .dataset import ScaledRows, check_finite, validate_array
from .errors import CheckpointError, ConfigError, DataError
from .likelihoods import Likelihood, make_likelihood
from .networks import (
    ClusterEncoder,
    ConvClusterEncoder,
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
)


class GMVAE(nn.Module):
    """Gaussian-mixture VAE (Dilokthanakul et al. 2016; Jiang et al. 2017) as a Pyro program.

    Generative model, for each example::

        p(y)   = Cat(pi)                          cluster
        p(z|y) = N(mu_y, diag(sigma_y^2))         latent code
        p(x|z) = likelihood(decoder(z))           observation

    The cluster ``y`` is never sampled: ``TraceEnum_ELBO`` sums it out exactly, either in the guide
    (``guide="enumerated"``) or in the model (``guide="marginal"``).

    Any part can be replaced without editing the library: pass ``encoder``, ``decoder``,
    ``cluster_encoder`` or ``likelihood`` modules, or subclass and override :meth:`cluster_prior`
    or :meth:`latent_prior`.

    Args:
        config: sizes and choices; ``config.n_features`` must be set.
        encoder: q(z|x[,y]) network, see :mod:`pyro_gmvae.networks`.
        decoder: z -> likelihood parameters.
        cluster_encoder: q(y|x) logits network (enumerated guide only).
        likelihood: a :class:`~pyro_gmvae.likelihoods.Likelihood`.
        name: the prefix of this model's parameters in Pyro's param store.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        cluster_encoder: nn.Module | None = None,
        likelihood: Likelihood | None = None,
        name: str = "gmvae",
    ):
        super().__init__()
        config.validate()
        if config.n_features < 1:
            raise ValueError("config.n_features must be set to the size of one observation")
        config.size_from_data()  # hidden and latent_dim from the data, where not set
        # guide "auto" without labels known here; gmvae train resolves it first, knowing them
        config.guide_from_labels(semi_supervised=False)
        self.config = config
        self.name = name
        K, Z, D = config.clusters, config.latent_dim, config.n_features
        enumerated = config.guide == "enumerated"

        self.likelihood = likelihood or make_likelihood(config.likelihood, D)
        P, H, offsets = self.likelihood.params_per_feature, config.hidden, K if enumerated else 0
        if config.network == "conv":
            shape, precision = self._image_shape(config), config.precision
            decoder = decoder or ConvDecoder(Z, H, shape, P, precision=precision)
            encoder = encoder or ConvEncoder(shape, H, Z, n_clusters=offsets, precision=precision)
            if enumerated:
                cluster_encoder = cluster_encoder or ConvClusterEncoder(
                    shape, H, K, precision=precision
                )
        elif config.precision != "float32":
            raise ConfigError(
                f"--precision {config.precision} applies to the convolutional networks; the fully "
                "connected ones (--network mlp, which tables get) compute in float32: drop "
                "--precision, or use --network conv for images"
            )
        self.decoder = decoder or Decoder(Z, H, D * P)
        self.encoder = encoder or Encoder(D, H, Z, n_clusters=offsets)
        self.cluster_encoder = (cluster_encoder or ClusterEncoder(D, H, K)) if enumerated else None

        # Prior parameters. Spread initial means so clusters are distinguishable from the start;
        # pretraining (see train.py) replaces them with a mixture fitted to the codes.
        self.cluster_means = nn.Parameter(torch.randn(K, Z))
        self.cluster_raw_scales = nn.Parameter(torch.zeros(K, Z))
        if config.learn_weights:
            self.cluster_logits = nn.Parameter(torch.zeros(K))
        else:
            self.register_buffer("cluster_logits", torch.zeros(K))

    @staticmethod
    def _image_shape(config: ModelConfig) -> tuple[int, int]:
        """The ``(H, W)`` that ``--network conv`` reads each row as; a table has none."""
        shape = config.image_shape
        if shape is None or math.prod(shape) != config.n_features:
            raise ConfigError(
                f"--network conv reads each row as an image, but these data of "
                f"{config.n_features} features are not images (no image shape"
                + ("" if shape is None else f": {tuple(shape)} holds {math.prod(shape)} pixels")
                + "); use --network mlp, or --kind image for square images whose pixels were "
                "not recognised"
            )
        return tuple(shape)  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------- priors
    @property
    def device(self) -> torch.device:
        return self.cluster_means.device

    @property
    def n_clusters(self) -> int:
        return self.config.clusters

    def cluster_scales(self) -> torch.Tensor:
        """sigma_y, shape ``(K, Z)``."""
        return F.softplus(self.cluster_raw_scales) + 1e-4

    def cluster_prior(self) -> dist.Categorical:
        """p(y) = Cat(pi)."""
        return dist.Categorical(logits=self.cluster_logits)

    def latent_prior(self, y: torch.Tensor) -> dist.TorchDistribution:
        """p(z|y) = N(mu_y, sigma_y); ``y`` of shape ``(K, 1)`` under enumeration or ``(N,)``."""
        return dist.Normal(self.cluster_means[y], self.cluster_scales()[y]).to_event(1)

    def cluster_log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """log p(y) + log p(z|y) for each of the K clusters: ``z (..., Z) -> (K, ...)``.

        Its ``logsumexp`` over the first dim is log p(z), the exact mixture density; its softmax
        there is p(y|z).
        """
        y = torch.arange(self.n_clusters, device=z.device)
        y = y.reshape((-1,) + (1,) * (z.dim() - 1))  # (K, 1, ..., 1) against z's batch dims
        return self.cluster_prior().log_prob(y) + self.latent_prior(y).log_prob(z)

    @torch.no_grad()
    def set_prior(
        self,
        means: np.ndarray | torch.Tensor,
        scales: np.ndarray | torch.Tensor,
        weights: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Set p(z|y) to ``N(means[y], scales[y])``, both ``(K, Z)``, and p(y) to ``weights (K,)``
        when the weights are learned (fixed uniform weights stay uniform).

        The parametrisation (a softplus of raw scales, logits of the weights) stays inside the
        model: callers pass the values themselves.
        """
        as_param = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        means, scales = as_param(means), as_param(scales)
        shape = tuple(self.cluster_means.shape)
        if tuple(means.shape) != shape or tuple(scales.shape) != shape:
            raise ValueError(
                f"means and scales must both have shape {shape} (K, Z), not "
                f"{tuple(means.shape)} and {tuple(scales.shape)}"
            )
        if not bool((scales > 1e-4).all()):
            raise ValueError("scales must be larger than 1e-4, the floor of sigma_y")
        self.cluster_means.copy_(means)
        shifted = scales - 1e-4
        self.cluster_raw_scales.copy_(shifted + torch.log(-torch.expm1(-shifted)))  # softplus^-1
        if weights is not None and self.config.learn_weights:
            self.cluster_logits.copy_(as_param(weights).log())

    # ------------------------------------------------------------------------- model and guide
    def data_plate(
        self, x: torch.Tensor, size: int | None = None, subsample: torch.Tensor | None = None
    ) -> pyro.plate:
        """The ``data`` plate over the rows of ``x (B, D)``: of size B by default, or of the
        full data's ``size`` N with ``subsample (B,)`` the rows' indices in it, so that Pyro
        scales every site by N / B and the loss estimates the full data's ELBO without bias
        (what each process of data-parallel training needs, its minibatch one part of N)."""
        if (size is None) != (subsample is None):
            raise ValueError("pass both size and subsample, or neither")
        if subsample is not None and len(subsample) != x.shape[0]:
            raise ValueError(f"{len(subsample)} subsample indices for {x.shape[0]} rows")
        return pyro.plate("data", x.shape[0] if size is None else size, subsample=subsample)

    # Semi-supervised training (Kingma et al. 2014, M2; Pyro's examples/vae/ss_vae_M2.py) gives
    # the model and guides each row's class ``y_obs (N,)`` where ``known (N,)`` is True. The batch
    # is split into two sibling plates: "data", the unlabelled rows, whose program is exactly the
    # unsupervised one (y enumerated), and "labelled", whose sites (``y_labelled``, observed;
    # ``z_labelled``; ``x_labelled``) have names of their own, since a trace holds a name once.
    # One plate with ``obs_mask`` would instead enumerate y on the labelled rows too (K decoder
    # passes for a row whose y is known) and leave the masked rows of an enumerated guide site to
    # TraceEnum_ELBO's bookkeeping; two plates keep each part's ELBO the plain formula that the
    # tests compute by hand. Each plate sums over its rows, so the batch's ELBO is the labelled
    # part plus the unlabelled part, on the same scale as without labels.
    def model(
        self,
        x: torch.Tensor,
        x_view: torch.Tensor | None = None,
        kl_scale: float = 1.0,
        y_obs: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        aux_weight: float = 0.0,
        *,
        size: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> None:
        """p(x, y, z); ``x`` of shape ``(N, D)``. ``x_view`` is for the guide and ignored here
        (except by the auxiliary term, which reads what the guide's networks read).

        ``kl_scale`` weights the latent sites' log-densities, here and in the guide, so the loss is
        ``-E[log p(x|z)] + kl_scale * KL`` (a beta-VAE; 1 is the exact ELBO), as Pyro's
        ``examples/dmm.py`` anneals its KL. ``size`` and ``subsample``: ``x`` is the minibatch
        ``subsample (B,)`` of ``size`` rows (see :meth:`data_plate`), here and in the guide.

        With ``y_obs (N,)`` (long) and ``known (N,)`` (bool), y is observed on the known rows
        (cluster k is class k) and enumerated on the others; ``aux_weight`` alpha adds
        ``alpha * log q(y_obs|x)`` on the known rows (Kingma et al.'s classification term, as in
        ``ss_vae_M2.py``'s ``model_classify``), with q(y|x) :meth:`cluster_log_proba`.
        """
        pyro.module(self.name, self)
        (x_u, view_u), (x_l, view_l, y_l) = self._split(x, x_view, y_obs, known, size)
        if len(x_u):
            with self.data_plate(x_u, size, subsample):
                with poutine.scale(scale=kl_scale):
                    # y: (K, 1) when enumerated, in the model or replayed from the enumerated guide
                    y = pyro.sample("y", self.cluster_prior(), infer={"enumerate": "parallel"})
                    # z: (N, Z) from q(z|x), or (K, N, Z) from q(z|x,y)
                    z = pyro.sample("z", self.latent_prior(y))
                pyro.sample("x", self.likelihood(self.decoder(z)), obs=x_u)
        if len(x_l):
            with pyro.plate("labelled", x_l.shape[0]):
                with poutine.scale(scale=kl_scale):
                    pyro.sample("y_labelled", self.cluster_prior(), obs=y_l)  # (L,)
                    z = pyro.sample("z_labelled", self.latent_prior(y_l))  # (L, Z)
                pyro.sample("x_labelled", self.likelihood(self.decoder(z)), obs=x_l)
                if aux_weight:
                    seen = x_l if view_l is None else view_l
                    with poutine.scale(scale=aux_weight):
                        q_y = dist.Categorical(logits=self.cluster_log_proba(seen))
                        pyro.sample("y_aux", q_y, obs=y_l)

    def guide_enumerated(
        self,
        x: torch.Tensor,
        x_view: torch.Tensor | None = None,
        kl_scale: float = 1.0,
        y_obs: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        aux_weight: float = 0.0,
        *,
        size: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> None:
        """q(y|x) q(z|x,y), with y enumerated: the ELBO sums q(y|x) over all K clusters; on the
        rows where ``known``, q(z|x,y) at the given ``y_obs`` alone (q(y|x) is not used there).

        ``x_view``, when given, is what the networks see instead of ``x`` (e.g. a randomly
        shifted copy during training): any q is a valid variational family, so the ELBO of
        ``x`` stays a bound, and the codes learn to ignore the perturbation. ``kl_scale``,
        ``y_obs``, ``known`` as in :meth:`model`; ``aux_weight`` is the model's alone.
        """
        pyro.module(self.name, self)
        (x_u, view_u), (x_l, view_l, y_l) = self._split(x, x_view, y_obs, known, size)
        if len(x_u):
            seen = x_u if view_u is None else view_u
            with self.data_plate(x_u, size, subsample), poutine.scale(scale=kl_scale):
                y = pyro.sample(
                    "y",
                    dist.Categorical(logits=self.cluster_encoder(seen)),
                    infer={"enumerate": "parallel"},
                )  # (K, 1)
                loc, scale = self.encoder(seen, y)  # (K, N, Z)
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        if len(x_l):
            seen = x_l if view_l is None else view_l
            with pyro.plate("labelled", x_l.shape[0]), poutine.scale(scale=kl_scale):
                loc, scale = self.encoder(seen, y_l)  # (L, Z)
                pyro.sample("z_labelled", dist.Normal(loc, scale).to_event(1))

    def guide_marginal(
        self,
        x: torch.Tensor,
        x_view: torch.Tensor | None = None,
        kl_scale: float = 1.0,
        y_obs: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        aux_weight: float = 0.0,
        *,
        size: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> None:
        """q(z|x) alone; y stays in the model, where p(z) is an exact mixture of K Gaussians on
        the unlabelled rows and p(z|y_obs) on the known ones. The arguments as in
        :meth:`guide_enumerated`."""
        pyro.module(self.name, self)
        (x_u, view_u), (x_l, view_l, _) = self._split(x, x_view, y_obs, known, size)
        plates = {
            "data": lambda rows: self.data_plate(rows, size, subsample),
            "labelled": lambda rows: pyro.plate("labelled", rows.shape[0]),
        }
        for site, plate, rows, view in (
            ("z", "data", x_u, view_u),
            ("z_labelled", "labelled", x_l, view_l),
        ):
            if len(rows):
                seen = rows if view is None else view
                with plates[plate](rows), poutine.scale(scale=kl_scale):
                    loc, scale = self.encoder(seen)  # (N, Z)
                    pyro.sample(site, dist.Normal(loc, scale).to_event(1))

    def guide(
        self,
        x: torch.Tensor,
        x_view: torch.Tensor | None = None,
        kl_scale: float = 1.0,
        y_obs: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        aux_weight: float = 0.0,
        **plate: int | torch.Tensor | None,
    ) -> None:
        """The guide chosen by ``config.guide``; ``plate``: ``size`` and ``subsample``, if any,
        as in :meth:`model`."""
        if self.config.guide == "enumerated":
            self.guide_enumerated(x, x_view, kl_scale, y_obs, known, aux_weight, **plate)
        else:
            self.guide_marginal(x, x_view, kl_scale, y_obs, known, aux_weight, **plate)

    @staticmethod
    def _split(
        x: torch.Tensor,
        x_view: torch.Tensor | None,
        y_obs: torch.Tensor | None,
        known: torch.Tensor | None,
        size: int | None = None,
    ) -> tuple[tuple, tuple]:
        """``((x_u, view_u), (x_l, view_l, y_l))``: the unlabelled rows ``(N - L, D)`` and the
        labelled ones ``(L, D)`` with their classes ``(L,)``. Without ``known``, all of ``x`` is
        unlabelled and passes through untouched (no copy), so the unsupervised program is
        unchanged."""
        if known is None:
            return (x, x_view), (x[:0], None, None)
        if size is not None:
            raise ValueError(
                "known labels and a data plate sized to the full data (data-parallel training) "
                "do not go together yet: train with labels in one process"
            )
        if y_obs is None or y_obs.shape != known.shape or known.shape != x.shape[:1]:
            raise ValueError("pass y_obs and known, both of shape (N,), or neither")
        pick = lambda a, rows: None if a is None else a[rows]  # noqa: E731
        return (x[~known], pick(x_view, ~known)), (x[known], pick(x_view, known), y_obs[known])

    # -------------------------------------------------------------------------------- inference
    def as_tensor(self, x: np.ndarray | torch.Tensor | ScaledRows, name: str = "x") -> torch.Tensor:
        """``x`` as a float tensor on the model's device, checked for shape and finiteness.

        A :class:`~pyro_gmvae.dataset.ScaledRows` is copied whole here (``np.asarray``, after
        the memory check); :meth:`batches` and :meth:`check_input` read one a chunk at a time.
        """
        if isinstance(x, ScaledRows):
            x = np.asarray(x)
        if not isinstance(x, torch.Tensor):
            validate_array(x, name=name)  # before np.asarray, which fails on ragged rows
            x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        self._check_width(tuple(x.shape), name)
        x = x.to(device=self.device, dtype=torch.float32)
        # Tensors skip validate_array above, and float64 beyond float32's range is inf here.
        # A NaN or inf anywhere makes the sum non-finite: one pass and no copy, where
        # torch.isfinite(x) would allocate 6 bytes per value. (Finite values whose sum
        # overflows only cost the full check, which then passes.)
        if not bool(torch.isfinite(x.sum())):
            validate_array(x.detach().cpu().numpy(), name=name)  # names the first bad value
        return x

    def _check_width(self, shape: tuple[int, ...], name: str) -> None:
        if len(shape) != 2 or shape[1] != self.config.n_features:
            raise DataError(
                f"{name} has shape {shape}; the model expects (N, {self.config.n_features}): "
                "flatten images to one row each and use data with the features it was trained on"
            )

    def batches(
        self, x: np.ndarray | torch.Tensor | ScaledRows, batch_size: int = 4096, name: str = "x"
    ) -> Iterator[torch.Tensor]:
        """``x (N, D)`` as :meth:`as_tensor`'s checked tensors on the model's device,
        ``batch_size`` rows each, in order. A :class:`~pyro_gmvae.dataset.ScaledRows` is read
        and converted a chunk at a time, so that one batch of it is in memory at once, never
        the whole; anything else is converted whole, then split."""
        if not isinstance(x, ScaledRows):
            yield from self.as_tensor(x, name).split(batch_size)
            return
        self._check_width(x.shape, name)
        for chunk in x.chunks(batch_size):
            yield self.as_tensor(chunk, name)

    def check_input(
        self, x: np.ndarray | torch.Tensor | ScaledRows, name: str = "x"
    ) -> torch.Tensor | ScaledRows:
        """``x (N, D)`` as training and inference read it, checked for its shape, finite values
        and the likelihood's support: :meth:`as_tensor`'s tensor, or a
        :class:`~pyro_gmvae.dataset.ScaledRows` as it is (on the host, read from disk as it is
        used), checked a chunk at a time."""
        if isinstance(x, ScaledRows):
            self._check_width(x.shape, name)
            check_finite(x, name)
        else:
            x = self.as_tensor(x, name)
        self.likelihood.check_support(x, name)
        return x

    def cluster_log_posterior_given_z(self, z: torch.Tensor) -> torch.Tensor:
        """log p(y|z) exactly, from Bayes' rule over the K clusters; ``z (N, Z) -> (N, K)``."""
        log_joint = self.cluster_log_joint(z)  # (K, N)
        return (log_joint - log_joint.logsumexp(0)).T

    @torch.no_grad()
    def _batched(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        x: np.ndarray | torch.Tensor | ScaledRows,
        batch_size: int = 4096,
    ) -> torch.Tensor:
        """``fn`` of each of :meth:`batches`, concatenated: ``(N, ...)`` on the device."""
        return torch.cat([fn(b) for b in self.batches(x, batch_size)])

    @torch.no_grad()
    def predict_log_proba(self, x: np.ndarray | torch.Tensor | ScaledRows) -> torch.Tensor:
        """Log-probability of each cluster for each example, shape ``(N, K)``.

        Enumerated guide: log q(y|x), from the cluster encoder. Marginal guide, which has no
        q(y|x): the exact log p(y|z), by Bayes' rule over the K clusters, at z the mean of q(z|x)
        (as VaDE assigns clusters). Works in batches of rows, so a
        :class:`~pyro_gmvae.dataset.ScaledRows` is read a chunk at a time.
        """
        return self._batched(self.cluster_log_proba, x)

    def cluster_log_proba(self, x: torch.Tensor) -> torch.Tensor:
        """log q(y|x) as a differentiable function of the parameters, ``(N, D) -> (N, K)``:
        the cluster encoder's for the enumerated guide, the exact log p(y|z) at the mean of
        q(z|x) for the marginal one (see :meth:`predict_log_proba`)."""
        if self.cluster_encoder is not None:
            return F.log_softmax(self.cluster_encoder(x), -1)
        return self.cluster_log_posterior_given_z(self.encoder(x)[0])

    def predict_proba(self, x: np.ndarray | torch.Tensor | ScaledRows) -> np.ndarray:
        """:meth:`predict_log_proba` exponentiated, as a numpy array ``(N, K)``; rows sum to 1:
        q(y|x) for the enumerated guide, p(y|z) at the mean of q(z|x) for the marginal guide."""
        return self.predict_log_proba(x).exp().cpu().numpy()

    def predict(self, x: np.ndarray | torch.Tensor | ScaledRows) -> np.ndarray:
        """The most probable cluster of each example, ``(N,)`` int64."""
        return self.predict_log_proba(x).argmax(-1).cpu().numpy()

    @torch.no_grad()
    def encode(self, x: np.ndarray | torch.Tensor | ScaledRows) -> np.ndarray:
        """The posterior mean of z, ``(N, Z)`` (averaged over q(y|x) for the enumerated guide);
        in batches of rows, as :meth:`predict_log_proba`."""

        def mean(b: torch.Tensor) -> torch.Tensor:
            if self.cluster_encoder is None:
                return self.encoder(b)[0]
            y = torch.arange(self.n_clusters, device=b.device).unsqueeze(-1)
            loc = self.encoder(b, y)[0]  # (K, N, Z)
            weights = F.softmax(self.cluster_encoder(b), -1).T.unsqueeze(-1)  # (K, N, 1)
            return (weights * loc).sum(0)

        return self._batched(mean, x).cpu().numpy()

    @torch.no_grad()
    def reconstruct(self, x: np.ndarray | torch.Tensor | ScaledRows) -> np.ndarray:
        """E[x | z = encode(x)], ``(N, D)``."""
        z = torch.as_tensor(self.encode(x), device=self.device)
        return self.likelihood.mean(self.decoder(z)).cpu().numpy()

    @torch.no_grad()
    def sample(
        self, n: int, cluster: int | None = None, *, mean: bool = True, generator=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Generate ``n`` examples from the prior, all from ``cluster`` if given.

        Returns ``(x, y)``: ``x (n, D)`` the likelihood's mean (``mean=True``, the usual picture
        of a VAE sample) or a draw from it, and ``y (n,)`` the clusters they came from.
        """
        if cluster is not None and not 0 <= cluster < self.n_clusters:
            raise ValueError(f"cluster must be in 0..{self.n_clusters - 1}, not {cluster}")
        if cluster is None:
            y = self.cluster_prior().sample((n,))
        else:
            y = torch.full((n,), cluster, dtype=torch.long, device=self.device)
        z = self.latent_prior(y).sample()
        out = self.decoder(z)
        x = self.likelihood.mean(out) if mean else self.likelihood(out).sample()
        return x.cpu().numpy(), y.cpu().numpy()

    def mixture_weights(self) -> np.ndarray:
        """pi, shape ``(K,)``."""
        return F.softmax(self.cluster_logits.detach(), -1).cpu().numpy()

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------ save/load
    def save(self, path: str | Path) -> None:
        """Write ``config.json`` and ``checkpoint.pt`` (the weights) into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        run_config = RunConfig(model=self.config)
        run_config.save(path / CONFIG_FILE)
        save_checkpoint(
            path / CHECKPOINT_FILE,
            {"config": json.dumps(run_config.to_dict()), "model": self.state_dict()},
        )

    @classmethod
    def load(
        cls, path: str | Path, map_location: str | torch.device = "cpu", **modules: nn.Module
    ) -> GMVAE:
        """The model saved in directory (or checkpoint file) ``path``, by :meth:`save` or by
        ``gmvae train``. Custom networks (``encoder=...``) must be passed again, as built."""
        state = load_checkpoint(path, map_location=map_location)
        if not state.get("config"):
            raise CheckpointError(f"{path} holds no model configuration; it cannot be rebuilt")
        try:
            config = RunConfig.from_dict(json.loads(state["config"])).model
        except (TypeError, ValueError, RecursionError) as e:  # ConfigError is a ValueError
            raise CheckpointError(f"{path} holds an unreadable model configuration ({e})") from None
        weights = state.get("model")
        if not isinstance(weights, dict) or not all(
            isinstance(v, torch.Tensor) for v in weights.values()
        ):
            raise CheckpointError(f"{path} holds no model weights; it is not a trained model")
        bad = [
            name
            for name, v in weights.items()
            if v.is_floating_point() and not bool(v.isfinite().all())
        ]
        if bad:
            raise CheckpointError(
                f"{path} holds NaN or infinite weights ({', '.join(bad[:3])}); it is damaged or "
                "from a diverged run: load an earlier checkpoint or train again"
            )
        model = cls(config, **modules)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(
                f"{path} does not fit this model's configuration or networks "
                f"({str(e).splitlines()[0]} ...); load it with the networks it was trained with"
            ) from None
        return model.to(map_location)
