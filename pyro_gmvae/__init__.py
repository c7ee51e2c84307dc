"""pyro_gmvae: a Gaussian-mixture variational autoencoder written as a Pyro program.

The cluster variable is summed out exactly by ``TraceEnum_ELBO`` (parallel enumeration); never
sampled or relaxed. Typical use::

    from pyro_gmvae import GMVAE, ModelConfig, TrainConfig, fit, load_data

    data = load_data("digits")
    model = GMVAE(ModelConfig(clusters=10, n_features=data.n_features, image_shape=data.image_shape))
    fit(model, data.x, TrainConfig(epochs=50), labels=data.labels)
    clusters = model.predict(data.x)
"""

from .config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import load_data
from .dataset import Dataset
from .errors import DataError
from .evaluate import elbo_per_example, log_likelihood
from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, Likelihood
from .metrics import clustering_scores
from .model import GMVAE
from .ppc import posterior_predictive_checks
from .runs import CheckpointError
from .train import Trainer, TrainingDiverged, TrainingInterrupted, fit, train_run

__version__ = "0.1.0"

__all__ = [
    "GMVAE",
    "Bernoulli",
    "CheckpointError",
    "ConfigError",
    "ContinuousBernoulli",
    "DataConfig",
    "DataError",
    "Dataset",
    "Gaussian",
    "Likelihood",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "clustering_scores",
    "elbo_per_example",
    "fit",
    "load_data",
    "log_likelihood",
    "posterior_predictive_checks",
    "train_run",
]
