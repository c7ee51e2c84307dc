"""GMVAEClustering: scikit-learn's own estimator checks, and what a user does with it."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import random
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_iris, make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks

from pyro_gmvae import GMVAEClustering, ModelConfig, TrainConfig
from pyro_gmvae.errors import CheckpointError

# A few gradient steps on a tiny network: what the checks need, in about a second per fit. The
# anchor's minimum stays at 320 steps (the default's 1,920 would make each fit 8 times as long).
TINY_OPTIONS = {"anchor_min_steps": 320}
TINY = dict(
    epochs=2,
    pretrain_epochs=2,
    anchor_epochs=2,
    hidden=(8,),
    latent_dim=2,
    init="gmm",
    restarts=2,
    train_options=TINY_OPTIONS,
)

# Checks that cannot hold for this model, with the reason; each is marked xfail.
EXPECTED_FAILED_CHECKS = {
    "check_methods_subset_invariance": (
        "score_samples is a Monte Carlo estimate: each row's draws of z depend on the rows "
        "batched with it (predict, predict_proba and transform are checked for this in "
        "test_methods_other_than_score_samples_do_not_depend_on_the_batch)"
    ),
    "check_methods_sample_order_invariance": (
        "score_samples is a Monte Carlo estimate: each row's draws of z depend on its position "
        "(see test_methods_other_than_score_samples_do_not_depend_on_the_batch)"
    ),
}


def _estimator_checks():
    """``parametrize_with_checks`` with the expected failures marked, in any scikit-learn >= 1.3."""
    estimator = GMVAEClustering(n_clusters=3, **TINY)
    signature = inspect.signature(estimator_checks.parametrize_with_checks)
    if "expected_failed_checks" in signature.parameters:  # scikit-learn >= 1.6
        # Strict where supported (1.8): a check listed here that starts passing is reported.
        strict = {"xfail_strict": True} if "xfail_strict" in signature.parameters else {}
        return estimator_checks.parametrize_with_checks(
            [estimator], expected_failed_checks=lambda _: EXPECTED_FAILED_CHECKS, **strict
        )
    # Before 1.6 the reasons lived in the estimator's _xfail_checks tag: mark them here instead.
    params = []
    for est, check in estimator_checks.check_estimator(estimator, generate_only=True):
        name = getattr(check, "func", check).__name__
        reason = EXPECTED_FAILED_CHECKS.get(name)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        params.append(pytest.param(est, check, marks=marks, id=name))
    return pytest.mark.parametrize("estimator, check", params)


@_estimator_checks()
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def blobs():
    """Three well separated, standardized clusters of 20 rows in 4 dimensions."""
    x, y = make_blobs(n_samples=60, centers=3, n_features=4, cluster_std=0.5, random_state=0)
    return StandardScaler().fit_transform(x), y


@pytest.fixture(scope="module")
def fitted(blobs):
    return GMVAEClustering(n_clusters=3, random_state=0, **TINY).fit(blobs[0])


# ------------------------------------------------------------------------------------ behaviour
def test_defaults_are_the_librarys():
    """The constructor's defaults are ModelConfig's and TrainConfig's, so the two never drift."""
    params = GMVAEClustering().get_params()
    model, train = ModelConfig(), TrainConfig()
    assert params["n_clusters"] == model.clusters
    for name in ("latent_dim", "hidden", "network", "precision", "guide", "learn_weights"):
        assert params[name] == getattr(model, name), name
    for name in ("image_shape",):
        assert params[name] == getattr(model, name), name
    for name in ("epochs", "pretrain_epochs", "anchor_epochs", "batch_size", "lr", "init"):
        assert params[name] == getattr(train, name), name
    for name in ("restarts", "beta"):
        assert params[name] == getattr(train, name), name


def test_pipeline_on_iris_fits_and_predicts_the_species(iris):
    x, species = iris
    pipe = make_pipeline(
        StandardScaler(),
        GMVAEClustering(
            n_clusters=3,
            hidden=(16,),
            latent_dim=2,
            pretrain_epochs=30,
            anchor_epochs=10,
            epochs=10,
            batch_size=32,
            init="gmm",
            random_state=0,
            train_options={"anchor_min_steps": 0},  # n_iter_ below counts the epochs given
        ),
    )
    labels = pipe.fit(x).predict(x)
    assert labels.shape == (150,) and labels.dtype == np.int64
    assert set(labels) <= {0, 1, 2}
    assert adjusted_rand_score(species, labels) > 0.4  # setosa at least is told apart
    estimator = pipe[-1]
    assert estimator.likelihood_ == "gaussian"  # standardized: outside [0, 1]
    assert estimator.n_iter_ == 30 + 10 + 10 == len(estimator.history_)
    assert estimator.transform(pipe[0].transform(x)).shape == (150, 2)
    assert estimator.get_feature_names_out().tolist() == ["gmvaeclustering0", "gmvaeclustering1"]


def test_grid_search_over_n_clusters_uses_the_estimators_score(blobs):
    search = GridSearchCV(
        GMVAEClustering(random_state=0, **TINY), {"n_clusters": [2, 3]}, cv=3, error_score="raise"
    )
    search.fit(blobs[0])
    assert search.best_params_["n_clusters"] in (2, 3)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all()
    best = search.best_estimator_
    assert search.score(blobs[0]) == pytest.approx(best.score(blobs[0]))


def test_pickle_round_trips_predictions_exactly(fitted, blobs):
    x = blobs[0]
    blob = pickle.dumps(fitted)
    torch_state = torch.get_rng_state()
    again = pickle.loads(blob)
    assert torch.equal(torch.get_rng_state(), torch_state)  # rebuilding draws no random numbers
    assert np.array_equal(again.predict(x), fitted.predict(x))
    assert np.array_equal(again.predict_proba(x), fitted.predict_proba(x))
    assert np.array_equal(again.transform(x), fitted.transform(x))
    assert np.array_equal(again.score_samples(x), fitted.score_samples(x))
    assert np.array_equal(again.labels_, fitted.labels_)
    assert again.history_ == fitted.history_ and again.seed_ == fitted.seed_
    assert "model_" in vars(fitted)  # pickling took nothing away from the original


def test_pickle_stores_the_model_as_config_and_weights(fitted):
    state = fitted.__getstate__()
    assert "model_" not in state
    assert set(state["_model_state"]) == {"config", "weights"}
    assert state["_model_state"]["config"]["clusters"] == 3
    assert all(isinstance(w, torch.Tensor) for w in state["_model_state"]["weights"].values())


def test_save_and_load_round_trip_without_pickle(fitted, blobs, tmp_path):
    x = blobs[0]
    fitted.save(tmp_path / "est")
    assert {p.name for p in (tmp_path / "est").iterdir()} >= {
        "config.json",
        "checkpoint.pt",
        "estimator.json",
        "labels.npy",
    }
    loaded = GMVAEClustering.load(tmp_path / "est")
    assert loaded.get_params() == fitted.get_params()
    assert np.array_equal(loaded.predict_proba(x), fitted.predict_proba(x))
    assert np.array_equal(loaded.labels_, fitted.labels_)
    assert loaded.train_config_ == fitted.train_config_
    assert (loaded.n_iter_, loaded.converged_, loaded.seed_) == (
        fitted.n_iter_,
        fitted.converged_,
        fitted.seed_,
    )
    assert loaded.history_ == fitted.history_


def test_load_refuses_a_directory_without_an_estimator(fitted, tmp_path):
    fitted.model_.save(tmp_path / "bare")  # a model, not an estimator
    with pytest.raises(CheckpointError, match=r"GMVAEClustering\.save"):
        GMVAEClustering.load(tmp_path / "bare")


def test_clone_gives_an_unfitted_estimator_with_equal_params(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "model_") and not hasattr(copy, "labels_")
    with pytest.raises(NotFittedError):
        copy.predict(np.zeros((2, 4)))


def test_same_random_state_gives_identical_predictions(blobs):
    x = blobs[0]
    a = GMVAEClustering(n_clusters=3, random_state=5, **TINY).fit(x)
    b = GMVAEClustering(n_clusters=3, random_state=5, **TINY).fit(x)
    assert np.array_equal(a.predict_proba(x), b.predict_proba(x))
    assert np.array_equal(a.labels_, b.labels_)
    assert np.array_equal(a.score_samples(x), b.score_samples(x))  # seeded by seed_


def test_fit_leaves_the_callers_randomness_and_param_store_alone(blobs):
    pyro.clear_param_store()
    pyro.param("users_own", torch.ones(2))
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    torch.manual_seed(1)
    expected = (random.random(), np.random.random(), torch.rand(1))  # noqa: NPY002
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    torch.manual_seed(1)
    est = GMVAEClustering(n_clusters=3, random_state=0, **TINY).fit(blobs[0])
    est.score(blobs[0])
    est.sample(3)
    assert (random.random(), np.random.random()) == expected[:2]  # noqa: NPY002
    assert torch.equal(torch.rand(1), expected[2])
    assert list(pyro.get_param_store().keys()) == ["users_own"]
    pyro.clear_param_store()


def test_random_state_none_draws_a_seed_from_numpys_global_state(blobs):
    np.random.seed(3)  # noqa: NPY002
    est = GMVAEClustering(n_clusters=3, **TINY).fit(blobs[0])
    np.random.seed(3)  # noqa: NPY002
    assert est.seed_ == np.random.randint(np.iinfo(np.int32).max)  # noqa: NPY002


def test_nan_raises_a_value_error_naming_it(fitted, blobs):
    x = blobs[0].copy()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GMVAEClustering(n_clusters=3, **TINY).fit(x)
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(x)
    x[3, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        fitted.score_samples(x)


def test_wrong_number_of_features_raises(fitted, blobs):
    with pytest.raises(ValueError, match="X has 3 features, but GMVAEClustering is expecting 4"):
        fitted.transform(blobs[0][:, :3])


def test_predict_before_fit_raises_not_fitted():
    est = GMVAEClustering()
    for method in (est.predict, est.predict_proba, est.transform, est.score_samples, est.score):
        with pytest.raises(NotFittedError):
            method(np.zeros((3, 2)))
    with pytest.raises(NotFittedError):
        est.sample(2)
    with pytest.raises(NotFittedError):
        est.means_  # noqa: B018


def test_sample_returns_rows_and_their_clusters(fitted):
    x, y = fitted.sample(7)
    assert x.shape == (7, 4) and y.shape == (7,)
    assert set(y) <= {0, 1, 2}
    again, _ = fitted.sample(7)
    assert np.array_equal(x, again)  # an int random_state gives the same rows, as GaussianMixture
    means, _ = fitted.sample(7, mean=True)
    assert means.shape == (7, 4)
    with pytest.raises(ValueError, match="n_samples"):
        fitted.sample(0)


def test_fitted_attributes_have_their_shapes(fitted, blobs):
    assert fitted.labels_.shape == (60,)
    assert np.array_equal(fitted.labels_, fitted.predict(blobs[0]))
    assert fitted.weights_.shape == (3,) and fitted.weights_.sum() == pytest.approx(1.0)
    assert fitted.means_.shape == (3, 2) and fitted.covariances_.shape == (3, 2)
    assert (fitted.covariances_ > 0).all()
    assert fitted.n_features_in_ == 4
    assert fitted.predict_proba(blobs[0]).sum(1) == pytest.approx(np.ones(60), abs=1e-5)


def test_converged_compares_the_last_two_epochs(fitted):
    last, before = fitted.history_[-1]["loss"], fitted.history_[-2]["loss"]
    expected = abs(last - before) <= fitted.tol * abs(before)
    assert fitted.converged_ == expected
    loose = clone(fitted).set_params(tol=1e9).fit(np.asarray(fitted.sample(30)[0]))
    assert loose.converged_  # any finite change is within a huge tolerance


def test_importance_weighted_score_is_at_least_the_elbo(fitted, blobs):
    """IWAE with many draws bounds log p(x) more tightly than the ELBO (Burda et al. 2016)."""
    x = blobs[0]
    elbo = fitted.score_samples(x)
    iwae = fitted.score_samples(x, method="iwae")
    assert iwae.shape == elbo.shape == (60,)
    assert iwae.mean() > elbo.mean()
    assert clone(fitted).set_params(score_method="iwae").fit(x).score(x) == pytest.approx(
        iwae.mean(), rel=1e-6
    )
    with pytest.raises(ValueError, match="method"):
        fitted.score_samples(x, method="exact")


def test_methods_other_than_score_samples_do_not_depend_on_the_batch(fitted, blobs):
    x = blobs[0]
    order = np.random.default_rng(0).permutation(len(x))
    assert np.array_equal(fitted.predict(x[order]), fitted.predict(x)[order])
    assert np.array_equal(fitted.predict(x[:7]), fitted.predict(x)[:7])
    np.testing.assert_allclose(fitted.transform(x[order]), fitted.transform(x)[order], atol=1e-6)
    np.testing.assert_allclose(fitted.predict_proba(x[:7]), fitted.predict_proba(x)[:7], atol=1e-6)


def test_likelihood_auto_is_bernoulli_for_data_in_the_unit_interval():
    x = np.random.default_rng(0).random((20, 6))
    assert GMVAEClustering(n_clusters=2, **TINY).fit(x).likelihood_ == "bernoulli"
    assert GMVAEClustering(n_clusters=2, **TINY).fit(x - 0.5).likelihood_ == "gaussian"
    bernoulli = GMVAEClustering(n_clusters=2, likelihood="bernoulli", **TINY).fit(x)
    with pytest.raises(ValueError, match=r"needs values in \[0, 1\]"):
        bernoulli.score_samples(x + 1)


def test_tiny_data_with_the_default_start(blobs):
    """The t-SNE start on 12 rows of 64 features: the data map takes as many principal components
    as there are rows; the batch size is capped at the rows."""
    x = np.random.default_rng(0).standard_normal((12, 64))
    est = GMVAEClustering(n_clusters=3, **(TINY | {"init": "tsne"})).fit(x)
    assert est.train_config_.tsne_input == "auto"
    assert est.train_config_.batch_size == 12
    assert est.labels_.shape == (12,)


def test_the_starts_run_on_as_many_rows_as_clusters():
    x = np.random.default_rng(0).standard_normal((3, 4))
    est = GMVAEClustering(n_clusters=3, **(TINY | {"init": "tsne"})).fit(x)
    assert est.train_config_.init == "tsne" and est.labels_.shape == (3,)
    spectral = GMVAEClustering(n_clusters=2, **(TINY | {"init": "spectral"})).fit(x)
    assert spectral.train_config_.init_neighbors == 2


def test_too_few_rows_for_the_clusters_raises():
    with pytest.raises(ValueError, match="n_samples=4 is fewer than n_clusters=5"):
        GMVAEClustering(n_clusters=5, **TINY).fit(np.zeros((4, 2)))


def test_invalid_parameters_are_named():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="latent_dim"):
        GMVAEClustering(latent_dim=-1).fit(x)
    with pytest.raises(ValueError, match="guide must be one of"):
        GMVAEClustering(n_clusters=2, guide="amortised", **TINY).fit(x)
    with pytest.raises(ValueError, match="no TrainConfig fields"):
        GMVAEClustering(n_clusters=2, **(TINY | {"train_options": {"learning_rate": 1.0}})).fit(x)
    with pytest.raises(ValueError, match="random_state"):
        GMVAEClustering(n_clusters=2, **(TINY | {"train_options": {"seed": 1}})).fit(x)
    with pytest.raises(ValueError, match="lr_decay"):
        GMVAEClustering(n_clusters=2, **(TINY | {"train_options": {"lr_decay": 2.0}})).fit(x)
    with pytest.raises(ValueError, match="clusters without labels.*known=mask"):
        GMVAEClustering(n_clusters=2, **(TINY | {"train_options": {"labels_known": 4}})).fit(x)


def test_train_options_reach_the_training(blobs):
    options = TINY_OPTIONS | {"lr_decay": 0.5, "clip_norm": 1.0}
    est = GMVAEClustering(n_clusters=3, **(TINY | {"train_options": options})).fit(blobs[0])
    assert dataclasses.asdict(est.train_config_) | options == dataclasses.asdict(est.train_config_)
    assert est.get_params()["train_options"] is options  # not copied or changed by fit


def test_enumerated_guide(blobs):
    est = GMVAEClustering(n_clusters=3, guide="enumerated", **TINY).fit(blobs[0])
    assert est.predict_proba(blobs[0]).shape == (60, 3)
    assert np.isfinite(est.score(blobs[0]))


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's "scikit-learn estimator" example, verbatim, so it cannot rot."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## scikit-learn estimator", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # it saves into ./iris_gmvae
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "iris_gmvae" / "estimator.json").exists()


def test_image_shape_turns_on_the_recipes_augmentation():
    """Flattened 8x8 digits in [0, 1]: Bernoulli by the auto rule, trained on moved views."""
    from sklearn.datasets import load_digits

    x = load_digits().data[:40] / 16.0
    est = GMVAEClustering(n_clusters=3, image_shape=(8, 8), **TINY).fit(x)
    assert est.likelihood_ == "bernoulli"
    assert est.model_.config.image_shape == (8, 8)
    assert est.train_config_.augment_rotation > 0  # the default recipe's, now in effect
    with pytest.raises(ValueError, match="image_shape"):
        GMVAEClustering(n_clusters=3, image_shape=(4, 4), **TINY).fit(x)


def test_conv_networks_read_the_rows_as_images():
    from sklearn.datasets import load_digits

    from pyro_gmvae.networks import ConvEncoder

    x = load_digits().data[:40] / 16.0
    est = GMVAEClustering(n_clusters=3, image_shape=(8, 8), network="conv", **TINY).fit(x)
    assert isinstance(est.model_.encoder, ConvEncoder)
    assert est.predict(x).shape == (40,)
    with pytest.raises(ValueError, match="network='conv'.*image_shape"):
        GMVAEClustering(n_clusters=3, network="conv", **TINY).fit(x)


def test_bfloat16_is_for_images():
    """``precision="bfloat16"`` trains the conv networks under autocast; a table's fully
    connected networks would ignore it, so the estimator names the fix before any training."""
    from sklearn.datasets import load_digits

    x = load_digits().data[:40] / 16.0
    est = GMVAEClustering(n_clusters=3, image_shape=(8, 8), precision="bfloat16", **TINY).fit(x)
    assert est.model_.decoder.autocast_dtype is torch.bfloat16
    assert est.predict(x).shape == (40,)
    with pytest.raises(ValueError, match="precision='bfloat16'.*image_shape"):
        GMVAEClustering(n_clusters=3, precision="bfloat16", **TINY).fit(x)
