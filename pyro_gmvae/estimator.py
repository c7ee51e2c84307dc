"""The GMVAE as a scikit-learn estimator: :class:`GMVAEClustering`.

A thin layer: :meth:`GMVAEClustering.fit` builds a :class:`~pyro_gmvae.model.GMVAE` from its
parameters and trains it with :func:`~pyro_gmvae.train.fit`; clusters, codes, scores and samples
come from the model's own methods and :mod:`pyro_gmvae.evaluate`. What this module adds is
scikit-learn's contract: parameters in the constructor, input validation, fitted attributes with
a trailing underscore, ``clone``, pickling, and randomness that comes from ``random_state`` alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import numbers
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state, check_scalar
from sklearn.utils.validation import check_is_fitted

from .config import SUPERVISED_OPTIONS, ModelConfig, RunConfig, TrainConfig, network_for
from .errors import CheckpointError, ConfigError
from .evaluate import elbo_per_example, log_likelihood
from .files import atomic_write_bytes, atomic_write_text
from .likelihoods import LIKELIHOODS
from .model import GMVAE
from .rng import forked_seed, preserved
from .train import fit as fit_model

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn 1.3 - 1.5: the estimator's own method
    validate_data = None

#: What :meth:`GMVAEClustering.save` writes beside the model's ``config.json`` and
#: ``checkpoint.pt``: the estimator's parameters and fitted attributes, and ``labels_``.
ESTIMATOR_FILE = "estimator.json"
LABELS_FILE = "labels.npy"
_FORMAT = "pyro_gmvae.GMVAEClustering"
_FORMAT_VERSION = 1

# TrainConfig fields that are the estimator's own parameters, so train_options cannot set them.
TRAIN_PARAMETERS = (
    "epochs",
    "pretrain_epochs",
    "anchor_epochs",
    "batch_size",
    "lr",
    "init",
    "restarts",
    "beta",
)
_SCORE_METHODS = ("elbo", "iwae")
# t-SNE maps rows to 2-d from a PCA start, so each map needs 2 columns; the data map first
# reduces the data to 50 principal components, which takes 50 rows when there are more columns.


class GMVAEClustering(
    ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator
):
    """Clustering, codes and density of a Gaussian-mixture VAE, as a scikit-learn estimator.

    ``fit`` trains a :class:`~pyro_gmvae.model.GMVAE` with the library's recipe
    (:func:`~pyro_gmvae.train.fit`: autoencoder pretraining, a mixture start on the codes, anchor
    epochs, then SVI on the exact ELBO with the cluster summed out). Labels are never used: ``y``
    is accepted and ignored, as by every scikit-learn clusterer.

    Data: ``X`` of shape ``(n_samples, n_features)``, converted to float32. With
    ``likelihood="auto"`` the likelihood is ``"bernoulli"`` when every value of the training ``X``
    lies in [0, 1] (images scaled to [0, 1]) and ``"gaussian"`` otherwise; the Gaussian likelihood
    expects standardized columns, so put a ``StandardScaler`` before the estimator in a
    ``Pipeline`` for tables.

    Small data: the batch size is capped at ``n_samples`` and ``init_neighbors`` (spectral start)
    at ``n_samples - 1``; the starts themselves cope with few rows (see :mod:`pyro_gmvae.start`).
    ``train_config_`` records what ran.

    Randomness comes from ``random_state`` alone: the caller's global random states (Python,
    NumPy, torch) and Pyro's param store are left as they were by every method.

    Args:
        n_clusters: the number of mixture components K.
        latent_dim: size of the latent code z (0: from the data, see
            :func:`~pyro_gmvae.config.sized_network`).
        hidden: hidden layer sizes of the encoder, the decoder mirrors them (``()``: from the
            data, as ``latent_dim``).
        network: ``"auto"`` (``"conv"`` given an ``image_shape`` with a side over 4 pixels, else
            ``"mlp"``), ``"mlp"`` (fully connected layers ``hidden``) or ``"conv"`` (for images,
            with ``image_shape``: 3x3 convolutions of stride 2, then the layers ``hidden``).
        precision: ``"float32"``, or ``"bfloat16"``: the convolutional networks multiply in
            bfloat16 under ``torch.autocast`` and return float32 (faster on hardware with
            bfloat16 instructions; not for ``network="mlp"``).
        likelihood: ``"auto"`` (see above), ``"bernoulli"``, ``"continuous_bernoulli"`` or
            ``"gaussian"``.
        guide: ``"auto"`` (``"enumerated"``: the estimator never sees labels),
            ``"enumerated"`` (q(y|x) q(z|x,y)) or ``"marginal"`` (q(z|x), y summed out in the
            model).
        learn_weights: learn the mixture weights (default: fixed uniform).
        epochs: epochs of SVI on the ELBO.
        pretrain_epochs: epochs of autoencoder pretraining (0: none, and no anchor epochs).
        anchor_epochs: epochs with each row's cluster held at its start value.
        batch_size: minibatch size (capped at ``n_samples``).
        lr: Adam learning rate.
        init: the mixture start, ``"auto"`` (``"data-gmm"`` for fewer than 64 features, else
            ``"umap"``), ``"umap"``, ``"tsne"``, ``"data-gmm"``, ``"spectral"`` or ``"gmm"``.
        restarts: mixture initialisations tried at the start, the best by likelihood.
        beta: weight of the KL terms during SVI (1: the exact ELBO).
        image_shape: ``(height, width)`` when rows are flattened grey images, which turns on the
            recipe's random shifts and rotations of training minibatches.
        train_options: other :class:`~pyro_gmvae.config.TrainConfig` fields by name (e.g.
            ``{"lr_decay": 0.95, "pretrain_steps": 2000}``); not those above, ``seed`` or ``device``.
        score_method: what :meth:`score_samples` returns by default: ``"elbo"`` (the per-row
            ELBO, one draw of z) or ``"iwae"`` (an importance-weighted estimate of log p(x),
            ``n_importance_samples`` draws of z; tighter and slower).
        n_importance_samples: draws of z per row for ``"iwae"``.
        tol: relative change of the loss between the last two epochs below which the fit counts
            as converged (``converged_``); training always runs all its epochs.
        random_state: an int seed, a ``numpy.random.RandomState``, or None (a seed drawn from
            NumPy's global random state, as scikit-learn does). The seed used is ``seed_``.
        verbose: show a progress bar while fitting.
        device: ``"cpu"`` or ``"cuda"``; None: CUDA when available.

    Attributes:
        model_: the fitted :class:`~pyro_gmvae.model.GMVAE`.
        labels_: ``(n_samples,)`` cluster of each training row (``predict`` of the training data).
        n_features_in_: number of features seen in ``fit``; ``feature_names_in_`` when ``X`` had
            string column names.
        weights_: ``(K,)`` mixture weights pi.
        means_: ``(K, latent_dim)`` cluster means in the latent space.
        covariances_: ``(K, latent_dim)`` diagonal variances of the clusters in the latent space.
        history_: the per-epoch records of :func:`~pyro_gmvae.train.fit` (epoch, phase, loss, ...).
        n_iter_: epochs run (pretraining, anchor and SVI together).
        converged_: True when the last two epochs belong to one phase, their losses are finite,
            and the last differs from the one before by at most ``tol`` relative to it.
        likelihood_: the likelihood used (``likelihood`` with ``"auto"`` resolved).
        seed_: the int seed training ran with.
        train_config_: the :class:`~pyro_gmvae.config.TrainConfig` training ran with.

    Pickling stores the model as its configuration and weights (plain values and tensors), so a
    fitted estimator round-trips with identical predictions. Unpickling, like any ``pickle.load``,
    can run arbitrary code from the file: for files from elsewhere use :meth:`save` and
    :meth:`load`, which read only JSON, a NumPy array and ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        n_clusters: int = 10,
        *,
        latent_dim: int = 0,
        hidden: tuple[int, ...] = (),
        network: str = "auto",
        precision: str = "float32",
        likelihood: str = "auto",
        guide: str = "auto",
        learn_weights: bool = False,
        epochs: int = 20,
        pretrain_epochs: int = 300,
        anchor_epochs: int = 60,
        batch_size: int = 256,
        lr: float = 1e-3,
        init: str = "auto",
        restarts: int = 10,
        beta: float = 1.0,
        image_shape: tuple[int, int] | None = None,
        train_options: dict[str, Any] | None = None,
        score_method: str = "elbo",
        n_importance_samples: int = 100,
        tol: float = 1e-2,
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
        device: str | None = None,
    ):
        self.n_clusters = n_clusters
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.network = network
        self.precision = precision
        self.likelihood = likelihood
        self.guide = guide
        self.learn_weights = learn_weights
        self.epochs = epochs
        self.pretrain_epochs = pretrain_epochs
        self.anchor_epochs = anchor_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.init = init
        self.restarts = restarts
        self.beta = beta
        self.image_shape = image_shape
        self.train_options = train_options
        self.score_method = score_method
        self.n_importance_samples = n_importance_samples
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    # ------------------------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any = None) -> GMVAEClustering:
        """Train a GMVAE on ``X (n_samples, n_features)``; ``y`` is ignored. Returns ``self``.

        Raises:
            ValueError: for invalid parameters, NaN or infinite values, fewer than 2 rows or fewer
                rows than clusters (:class:`~pyro_gmvae.config.ConfigError` and
                :class:`~pyro_gmvae.data.DataError` are ValueErrors).
            pyro_gmvae.train.TrainingDiverged: when the loss stops being finite.
        """
        self._check_parameters()
        X = self._validate(X, reset=True)
        n, d = X.shape
        if n < self.n_clusters:
            raise ValueError(
                f"n_samples={n} is fewer than n_clusters={self.n_clusters}: the mixture start "
                "needs at least one row per cluster; lower n_clusters or give more rows"
            )
        likelihood = self._resolve_likelihood(X)
        seed = self._draw_seed()
        model_config = self._model_config(d, likelihood)
        train_config = self._train_config(n, d, seed)
        with preserved(_resolve_device(self.device)), pyro.get_param_store().scope():
            pyro.set_rng_seed(seed)  # the networks' first weights come from it, as in train_run
            model = GMVAE(model_config)
            history = fit_model(model, X, train_config, progress=bool(self.verbose))
        self.model_ = model
        self.history_ = history
        self.n_iter_ = len(history)
        self.converged_ = _converged(history, self.tol)
        self.likelihood_ = likelihood
        self.seed_ = seed
        self.train_config_ = train_config
        self.labels_ = model.predict(X)
        return self

    def _check_parameters(self) -> None:
        """Type and range checks of the parameters the configs do not check themselves; the
        rest are checked by ModelConfig and TrainConfig (see :meth:`_model_config`)."""
        for name in ("n_clusters", "batch_size", "restarts", "n_importance_samples"):
            check_scalar(getattr(self, name), name, numbers.Integral, min_val=1)
        check_scalar(self.latent_dim, "latent_dim", numbers.Integral, min_val=0)
        for name in ("epochs", "pretrain_epochs", "anchor_epochs"):
            check_scalar(getattr(self, name), name, numbers.Integral, min_val=0)
        for name in ("lr", "beta"):
            check_scalar(
                getattr(self, name), name, numbers.Real, min_val=0, include_boundaries="neither"
            )
        check_scalar(self.tol, "tol", numbers.Real, min_val=0)
        if not isinstance(self.hidden, (tuple, list)) or not all(
            isinstance(h, numbers.Integral) for h in self.hidden
        ):
            raise ValueError(
                f"hidden must be a tuple of layer sizes, e.g. (256, 64), not {self.hidden!r}"
            )
        if self.likelihood != "auto" and self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"likelihood must be 'auto' or one of {', '.join(LIKELIHOODS)}, not {self.likelihood!r}"
            )
        if self.score_method not in _SCORE_METHODS:
            raise ValueError(
                f"score_method must be one of {', '.join(_SCORE_METHODS)}, not {self.score_method!r}"
            )
        if self.train_options is not None and not isinstance(self.train_options, dict):
            raise ValueError(
                f"train_options must be a dict of TrainConfig fields or None, not {self.train_options!r}"
            )

    def _resolve_likelihood(self, X: np.ndarray) -> str:
        """``likelihood`` with ``"auto"`` made ``"bernoulli"`` for X in [0, 1], else ``"gaussian"``."""
        if self.likelihood != "auto":
            return self.likelihood
        return "bernoulli" if float(X.min()) >= 0.0 and float(X.max()) <= 1.0 else "gaussian"

    def _draw_seed(self) -> int:
        if isinstance(self.random_state, numbers.Integral) and not isinstance(
            self.random_state, bool
        ):
            if not 0 <= self.random_state < 2**32:
                raise ValueError(f"random_state must be in [0, 2**32), not {self.random_state}")
            return int(self.random_state)
        # None: NumPy's global random state; a RandomState: the caller's generator, advanced.
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _model_config(self, n_features: int, likelihood: str) -> ModelConfig:
        config = ModelConfig(
            clusters=self.n_clusters,
            latent_dim=self.latent_dim,
            hidden=tuple(self.hidden),
            network=self.network,
            precision=self.precision,
            likelihood=likelihood,
            guide=self.guide,
            learn_weights=self.learn_weights,
            n_features=n_features,
            image_shape=None if self.image_shape is None else tuple(self.image_shape),
        )
        with _named_as_parameters():
            config.validate()
        if config.image_shape is not None and math.prod(config.image_shape) != n_features:
            raise ValueError(
                f"image_shape={config.image_shape} holds {math.prod(config.image_shape)} pixels but "
                f"X has {n_features} features; give the (height, width) of the flattened images"
            )
        if config.network == "conv" and config.image_shape is None:
            raise ValueError(
                "network='conv' reads each row as an image: give image_shape=(height, width) of "
                "the flattened images, or use network='mlp'"
            )
        convolutional = config.network == "conv" or (
            config.network == "auto" and network_for(config.image_shape) == "conv"
        )
        if config.precision != "float32" and not convolutional:
            raise ValueError(
                f"precision={config.precision!r} applies to the convolutional networks, which "
                "images get: give image_shape=(height, width) of the flattened images, or keep "
                "precision='float32' (the fully connected networks compute in float32)"
            )
        return config

    def _train_config(self, n_samples: int, n_features: int, seed: int) -> TrainConfig:
        """The TrainConfig of the parameters and ``train_options``, adapted to small data."""
        options = dict(self.train_options or {})
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(
                f"train_options has no TrainConfig fields {unknown}; the fields are {sorted(fields)}"
            )
        own = sorted(set(options) & {*TRAIN_PARAMETERS, "seed", "device"})
        if own:
            raise ValueError(
                f"train_options sets {own}: pass these as GMVAEClustering's own parameters "
                "(seed as random_state)"
            )
        supervised = sorted(set(options) & SUPERVISED_OPTIONS)
        if supervised:
            raise ValueError(
                f"train_options sets {supervised}: GMVAEClustering clusters without labels; to "
                "train with some labels known use pyro_gmvae.fit(model, x, config, labels=y, "
                "known=mask) or gmvae train --labels-known"
            )
        config = TrainConfig(
            **options,
            **{name: getattr(self, name) for name in TRAIN_PARAMETERS},
            seed=seed,
            device=self.device,
        )
        with _named_as_parameters():
            config.validate()
        config.batch_size = min(config.batch_size, n_samples)
        config.init_neighbors = min(config.init_neighbors, n_samples - 1)
        return config

    # ---------------------------------------------------------------------------- inference
    def predict(self, X: Any) -> np.ndarray:
        """The most probable cluster of each row, ``(n_samples,)`` int64."""
        X = self._validate_fitted(X)  # first: self.model_ is looked up before the arguments
        return self.model_.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """The cluster posterior q(y|x), ``(n_samples, n_clusters)`` float32; rows sum to 1."""
        X = self._validate_fitted(X)
        return self.model_.predict_proba(X)

    def transform(self, X: Any) -> np.ndarray:
        """The codes: the posterior mean of z for each row, ``(n_samples, latent_dim)`` float32."""
        X = self._validate_fitted(X)
        return self.model_.encode(X)

    def score_samples(self, X: Any, method: str | None = None) -> np.ndarray:
        """A log-density score of each row, ``(n_samples,)``, higher for likelier rows.

        ``method`` (default ``score_method``): ``"elbo"`` for the ELBO of each row (y summed out
        exactly, one draw of z), ``"iwae"`` for an importance-weighted estimate of log p(x)
        (``n_importance_samples`` draws of z), a tighter bound. The draws of z are seeded by
        ``seed_``, so repeated calls agree; a row's draws still depend on the rows around it.
        """
        method = self.score_method if method is None else method
        if method not in _SCORE_METHODS:
            raise ValueError(f"method must be one of {', '.join(_SCORE_METHODS)}, not {method!r}")
        X = self._validate_fitted(X)
        self.model_.likelihood.check_support(X, name="X")
        with self._seeded(self.seed_):
            if method == "elbo":
                scores = elbo_per_example(self.model_, X)
            else:
                scores = log_likelihood(self.model_, X, num_samples=self.n_importance_samples)
        return scores.cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """The mean of :meth:`score_samples` over the rows of ``X`` (nats per row; higher is
        better, as for ``GaussianMixture``); ``y`` is ignored."""
        return float(np.mean(self.score_samples(X), dtype=np.float64))

    def sample(self, n_samples: int = 1, *, mean: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Generate rows from the fitted model, as ``GaussianMixture.sample`` does.

        Returns ``(X, y)``: ``X (n_samples, n_features)`` float32, draws from p(x|z) (or with
        ``mean=True`` its mean, the usual picture of a VAE sample), and ``y (n_samples,)`` the
        clusters they came from. Randomness comes from ``random_state``: an int gives the same
        rows on every call.
        """
        check_is_fitted(self)
        check_scalar(n_samples, "n_samples", numbers.Integral, min_val=1)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        with self._seeded(seed):
            return self.model_.sample(int(n_samples), mean=mean)

    @property
    def weights_(self) -> np.ndarray:
        """Mixture weights pi, ``(n_clusters,)``."""
        check_is_fitted(self)
        return self.model_.mixture_weights()

    @property
    def means_(self) -> np.ndarray:
        """Cluster means in the latent space, ``(n_clusters, latent_dim)``."""
        check_is_fitted(self)
        return self.model_.cluster_means.detach().cpu().numpy()

    @property
    def covariances_(self) -> np.ndarray:
        """Diagonal variances of the clusters in the latent space, ``(n_clusters, latent_dim)``."""
        check_is_fitted(self)
        return (self.model_.cluster_scales().detach() ** 2).cpu().numpy()

    @property
    def _n_features_out(self) -> int:
        # What ClassNamePrefixFeaturesOutMixin names: transform's columns, one per latent dim.
        check_is_fitted(self)
        return self.model_.config.latent_dim

    def _validate(self, X: Any, *, reset: bool) -> np.ndarray:
        """``X`` as a writable float32 ``(n_samples, n_features)`` array, checked by scikit-learn
        (finite, 2-d, not sparse, the features seen in fit when not ``reset``)."""
        options = {"dtype": np.float32, "ensure_min_samples": 2 if reset else 1}
        if validate_data is not None:
            X = validate_data(self, X, reset=reset, **options)
        else:
            X = self._validate_data(X, reset=reset, **options)
        # torch warns on (and must not write into) read-only arrays, such as joblib's memmaps.
        return np.require(X, requirements="W")

    def _validate_fitted(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self._validate(X, reset=False)

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """Torch's random state seeded by ``seed`` and Pyro's param store scoped, both restored."""
        with forked_seed(seed, self.model_.device), pyro.get_param_store().scope():
            yield

    # ---------------------------------------------------------------------------- tags
    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # the networks compute in float32
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"preserves_dtype": [np.float32]}

    # ---------------------------------------------------------------------------- persistence
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: Python may hand back __dict__ itself
        model = state.pop("model_", None)
        if model is not None:
            state["_model_state"] = {
                "config": dataclasses.asdict(model.config),
                "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        model_state = state.pop("_model_state", None)
        super().__setstate__(state)
        if model_state is not None:
            self.model_ = _rebuild_model(model_state["config"], model_state["weights"], self.device)

    def save(self, path: str | Path) -> None:
        """Save the fitted estimator into directory ``path``: the model as
        :meth:`GMVAE.save <pyro_gmvae.model.GMVAE.save>` writes it (``config.json``,
        ``checkpoint.pt``), the parameters and fitted attributes in ``estimator.json`` and
        ``labels_`` in ``labels.npy``. :meth:`load` reads it back without running code from it.

        A ``random_state`` that is a ``RandomState`` is saved as ``seed_``.
        """
        check_is_fitted(self)
        path = Path(path)
        self.model_.save(path)
        params = self.get_params(deep=False)
        if not (
            params["random_state"] is None or isinstance(params["random_state"], numbers.Integral)
        ):
            params["random_state"] = self.seed_
        fitted: dict[str, Any] = {
            name: getattr(self, name)
            for name in (
                "n_features_in_",
                "n_iter_",
                "converged_",
                "likelihood_",
                "seed_",
                "history_",
            )
        }
        fitted["train_config_"] = dataclasses.asdict(self.train_config_)
        if hasattr(self, "feature_names_in_"):
            fitted["feature_names_in_"] = [str(f) for f in self.feature_names_in_]
        record = {"format": _FORMAT, "version": _FORMAT_VERSION, "params": params, "fitted": fitted}
        buffer = io.BytesIO()
        np.save(buffer, self.labels_, allow_pickle=False)
        atomic_write_bytes(path / LABELS_FILE, buffer.getvalue())
        atomic_write_text(
            path / ESTIMATOR_FILE, json.dumps(record, indent=2, default=_plain) + "\n"
        )

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> GMVAEClustering:
        """The estimator saved in directory ``path`` by :meth:`save`, on ``device`` (default: the
        saved ``device`` parameter, falling back to the CPU when CUDA is not available).

        Raises:
            CheckpointError: when ``path`` holds no estimator saved by :meth:`save`, or its model's
                checkpoint is unreadable or holds more than tensors and plain values.
        """
        path = Path(path)
        try:
            record = json.loads((path / ESTIMATOR_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(
                f"cannot read {path / ESTIMATOR_FILE} ({e}); load a directory written by "
                "GMVAEClustering.save (a bare model saved by GMVAE.save loads with GMVAE.load)"
            ) from None
        if record.get("format") != _FORMAT or record.get("version") != _FORMAT_VERSION:
            raise CheckpointError(
                f"{path / ESTIMATOR_FILE} is not a GMVAEClustering of format version "
                f"{_FORMAT_VERSION} (found {record.get('format')!r} version {record.get('version')!r})"
            )
        params = dict(record["params"])
        for name in ("hidden", "image_shape"):  # JSON has no tuples
            if params.get(name) is not None:
                params[name] = tuple(params[name])
        estimator = cls(**params)
        if device is not None:
            estimator.device = device
        estimator.model_ = GMVAE.load(path, map_location=_usable_device(estimator.device))
        fitted = dict(record["fitted"])
        try:  # the run config's own reading: JSON's lists back to tuples, each type checked
            fitted["train_config_"] = RunConfig.from_dict({"train": fitted["train_config_"]}).train
        except ConfigError as e:
            raise CheckpointError(
                f"{path / ESTIMATOR_FILE} holds a bad training config: {e}"
            ) from None
        if "feature_names_in_" in fitted:
            fitted["feature_names_in_"] = np.asarray(fitted["feature_names_in_"], dtype=object)
        for name, value in fitted.items():
            setattr(estimator, name, value)
        estimator.labels_ = np.load(path / LABELS_FILE, allow_pickle=False)
        return estimator


# ----------------------------------------------------------------------------------- helpers
def _converged(history: list[dict[str, Any]], tol: float) -> bool:
    """True when the last two epochs are of one phase, with finite losses whose relative change
    is at most ``tol``; ``history`` as :func:`~pyro_gmvae.train.fit` returns it."""
    if len(history) < 2 or history[-1]["phase"] != history[-2]["phase"]:
        return False
    last, before = history[-1]["loss"], history[-2]["loss"]
    if not (math.isfinite(last) and math.isfinite(before)):
        return False
    return abs(last - before) <= tol * abs(before)


def _resolve_device(device: str | None) -> torch.device:
    """``device`` as a torch device; None is CUDA when available, as for TrainConfig."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _usable_device(device: str | None) -> torch.device:
    """Where a fitted model is put back: ``device``, or the CPU when it asks for absent CUDA."""
    resolved = _resolve_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"the estimator asks for device {device!r} but CUDA is not available; using the CPU",
            stacklevel=3,
        )
        return torch.device("cpu")
    return resolved


def _rebuild_model(
    config: dict[str, Any], weights: dict[str, torch.Tensor], device: str | None
) -> GMVAE:
    """The GMVAE of ``config`` (``dataclasses.asdict`` of its ModelConfig) with ``weights``."""
    with preserved(torch.device("cpu")):  # the initial weights, overwritten, draw from it
        model = GMVAE(ModelConfig(**config))
    model.load_state_dict(weights)
    return model.to(_usable_device(device))


@contextlib.contextmanager
def _named_as_parameters() -> Iterator[None]:
    """Re-raise a ConfigError with the estimator's parameter names for the flags it names
    (``--latent-dim`` -> ``latent_dim``), so the message points at the argument to change."""
    try:
        yield
    except ConfigError as e:
        names = {"clusters": "n_clusters"}

        def name(match: re.Match) -> str:
            field = match.group(1).replace("-", "_")
            return names.get(field, field)

        raise ConfigError(re.sub(r"--([a-z][a-z-]*)", name, str(e))) from None


def _plain(value: Any) -> Any:
    """JSON for the NumPy scalars and arrays that may sit in the records."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
