"""pyro_gmvae: a Gaussian-mixture variational autoencoder written as a Pyro program.

The cluster variable is summed out exactly by ``TraceEnum_ELBO`` (parallel enumeration); never
sampled or relaxed. Typical use::

    from pyro_gmvae import GMVAE, ModelConfig, TrainConfig, fit, load_data

    data = load_data("digits")
    model = GMVAE(ModelConfig(clusters=10, n_features=data.n_features, image_shape=data.image_shape))
    fit(model, data.x, TrainConfig(epochs=50), labels=data.labels)
    clusters = model.predict(data.x)

The public names are imported on first use (PEP 562), not with the package: torch, Pyro and
scikit-learn take seconds to import, and ``gmvae --help`` or a mistyped flag should not wait for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the submodule that defines it. The errors come from errors.py, where they are
# defined, rather than from the heavier modules that re-export them.
_SOURCES = {
    "GMVAE": "model",
    "GMVAEClustering": "estimator",
    "STARTS": "start",
    "SVI": "train",
    "Anchor": "train",
    "MixtureStart": "train",
    "Phase": "train",
    "Pretrain": "train",
    "Recipe": "train",
    "Start": "start",
    "default_recipe": "train",
    "register_start": "start",
    "Bernoulli": "likelihoods",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "ContinuousBernoulli": "likelihoods",
    "DataConfig": "config",
    "DataError": "errors",
    "Dataset": "dataset",
    "MISSING_LABEL": "dataset",
    "ScaledRows": "dataset",
    "DistributedConfig": "config",
    "Gaussian": "likelihoods",
    "Likelihood": "likelihoods",
    "ModelConfig": "config",
    "RunConfig": "config",
    "TrainConfig": "config",
    "Trainer": "train",
    "TrainingDiverged": "train",
    "TrainingInterrupted": "train",
    "TrainingProcessLost": "train",
    "clustering_scores": "metrics",
    "distributed_fit": "distributed",
    "elbo_per_example": "evaluate",
    "fit": "train",
    "load_data": "data",
    "log_likelihood": "evaluate",
    "posterior_predictive_checks": "ppc",
    "select_clusters": "selection",
    "train_run": "runs",
}

# Spelled out, not list(_SOURCES): linters and type checkers read a literal __all__ as the
# package's re-exports (tests/test_packaging.py checks that the two agree).
__all__ = [
    "GMVAE",
    "GMVAEClustering",
    "STARTS",
    "SVI",
    "Anchor",
    "MixtureStart",
    "Phase",
    "Pretrain",
    "Recipe",
    "Start",
    "default_recipe",
    "register_start",
    "Bernoulli",
    "CheckpointError",
    "ConfigError",
    "ContinuousBernoulli",
    "DataConfig",
    "DataError",
    "Dataset",
    "MISSING_LABEL",
    "ScaledRows",
    "DistributedConfig",
    "Gaussian",
    "Likelihood",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingProcessLost",
    "clustering_scores",
    "distributed_fit",
    "elbo_per_example",
    "fit",
    "load_data",
    "log_likelihood",
    "posterior_predictive_checks",
    "select_clusters",
    "train_run",
]

if TYPE_CHECKING:  # type checkers and IDEs see the names; at run time __getattr__ imports them
    from .config import DataConfig, DistributedConfig, ModelConfig, RunConfig, TrainConfig
    from .data import load_data
    from .dataset import MISSING_LABEL, Dataset, ScaledRows
    from .distributed import distributed_fit
    from .errors import CheckpointError, ConfigError, DataError
    from .estimator import GMVAEClustering
    from .evaluate import elbo_per_example, log_likelihood
    from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, Likelihood
    from .metrics import clustering_scores
    from .model import GMVAE
    from .ppc import posterior_predictive_checks
    from .runs import train_run
    from .selection import select_clusters
    from .start import STARTS, Start, register_start
    from .train import (
        SVI,
        Anchor,
        MixtureStart,
        Phase,
        Pretrain,
        Recipe,
        Trainer,
        TrainingDiverged,
        TrainingInterrupted,
        TrainingProcessLost,
        default_recipe,
        fit,
    )


def __getattr__(name: str) -> Any:
    """Import the submodule that defines public ``name`` and cache the name here."""
    if name not in _SOURCES:
        # An AttributeError also lets ``from pyro_gmvae import plots`` fall back to the submodule.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
