"""select_clusters: on blobs with a clear K it recommends that K, by the rule it states."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.preprocessing import StandardScaler

from pyro_gmvae import GMVAEClustering, select_clusters

# Enough training for three blobs in 2-d to be told apart (about 1.5 s per K on one core).
SHORT = dict(
    pretrain_epochs=30,
    anchor_epochs=10,
    epochs=60,
    hidden=(16,),
    latent_dim=2,
    init="gmm",
    batch_size=32,
    lr=1e-2,
)


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    """200 rows of three well separated blobs, standardized."""
    x, _ = make_blobs(n_samples=200, centers=3, n_features=2, cluster_std=0.5, random_state=2)
    return StandardScaler().fit_transform(x)


@pytest.fixture(scope="module")
def selection(blobs):
    return select_clusters(blobs, [4, 1, 2, 3, 3], random_state=2, **SHORT)


def test_recommends_the_number_of_blobs(selection):
    assert selection.recommended == 3
    assert selection.table[2]["clusters_used"] == 3


def test_the_recommendation_follows_the_stated_rule(selection):
    table = selection.table
    assert [row["k"] for row in table] == [1, 2, 3, 4]  # sorted, duplicates dropped
    best = max(table, key=lambda row: row["heldout_log_likelihood"])
    assert selection.best == best["k"] and best["difference_to_best"] == 0.0
    within = [
        row["k"] for row in table if row["difference_to_best"] <= row["difference_to_best_se"]
    ]
    assert selection.recommended == min(within)
    for row in table:
        assert row["difference_to_best"] == pytest.approx(
            best["heldout_log_likelihood"] - row["heldout_log_likelihood"], abs=1e-9
        )
        # The importance-weighted bound is the tighter one, row by row on average.
        assert row["heldout_log_likelihood"] > row["heldout_elbo"]
    assert "one standard error" in selection.rule


def test_keeps_each_fitted_estimator_and_prints_the_table(selection):
    assert sorted(selection.estimators) == [1, 2, 3, 4]
    assert isinstance(selection.estimators[3], GMVAEClustering)
    assert selection.estimators[3].n_clusters == 3
    text = selection.format()
    assert "recommended K = 3" in text and len(text.splitlines()) == 6


@pytest.mark.parametrize(
    "ks, kwargs, match",
    [
        ([], {}, "ks is empty"),
        ([0, 2], {}, "at least 1"),
        ([2.5], {}, "integer"),
        ([2], {"heldout_fraction": 1.0}, "heldout_fraction"),
        ([2], {"heldout_fraction": 0.001}, "leaves"),
        ([200], {}, "training rows"),
        ([2], {"n_clusters": 3}, "own arguments"),
    ],
)
def test_bad_arguments_raise(blobs, ks, kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_clusters(blobs, ks, **kwargs)
