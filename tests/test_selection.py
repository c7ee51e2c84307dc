"""select_clusters: on blobs with a clear K it recommends that K, by the rule it states."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.preprocessing import StandardScaler

from pyro_gmvae import GMVAEClustering, select_clusters
from pyro_gmvae.errors import RunDirectoryError
from pyro_gmvae.selection import check_selection_directory, write_selection

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
    train_options={"anchor_min_steps": 320},  # as these were measured; the default is 1,920
    guide="marginal",  # as these were measured; the default is enumerated
)


@pytest.fixture(scope="module")
def blobs_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """200 rows of three well separated blobs, standardized, and the blob of each."""
    x, y = make_blobs(n_samples=200, centers=3, n_features=2, cluster_std=0.5, random_state=2)
    return StandardScaler().fit_transform(x), y


@pytest.fixture(scope="module")
def blobs(blobs_and_labels) -> np.ndarray:
    return blobs_and_labels[0]


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
        ([2], {"labels": np.zeros(3)}, "one per row"),
        ([2, 3], {"n_jobs": 0}, "n_jobs"),
    ],
)
def test_bad_arguments_raise(blobs, ks, kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_clusters(blobs, ks, **kwargs)


def test_parallel_fits_with_labels_give_the_same_table(blobs_and_labels, selection):
    """Fitting the Ks in two processes changes nothing, and labels are only reported: the table
    of K = 2, 3 matches the sequential, unlabelled one."""
    x, y = blobs_and_labels
    parallel = select_clusters(x, [3, 2], labels=y, random_state=2, n_jobs=2, **SHORT)
    sequential = {row["k"]: row for row in selection.table}
    for row in parallel.table:
        for key in ("heldout_log_likelihood", "heldout_elbo", "train_elbo", "clusters_used"):
            assert row[key] == pytest.approx(sequential[row["k"]][key], rel=1e-5), key
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["heldout_nmi"] <= 1.0
    assert parallel.table[1]["accuracy"] == 1.0  # K = 3 finds the three blobs
    assert parallel.recommended == 3
    assert sorted(parallel.estimators) == [2, 3]
    assert (parallel.estimators[3].predict(x) == selection.estimators[3].predict(x)).all()
    assert "accuracy" in parallel.format() and "not used to choose" in parallel.format()


def test_writes_its_directory_and_refuses_others(selection, tmp_path):
    out = tmp_path / "choice"
    check_selection_directory(out, force=False)  # absent: fine
    paths = write_selection(selection, out, {"data": "blobs"})
    record = json.loads((out / "selection.json").read_text())
    assert record["recommended"] == 3 and record["data"] == "blobs"
    assert record["rule"] == selection.rule and len(record["table"]) == 4
    assert (out / "figures" / "selection.png").read_bytes().startswith(b"\x89PNG")
    assert "Recommended K = **3**" in (out / "selection.md").read_text()
    assert sorted(p.name for p in paths) == ["selection.json", "selection.md", "selection.png"]
    with pytest.raises(RunDirectoryError, match="--force"):
        check_selection_directory(out, force=False)
    check_selection_directory(out, force=True)  # an earlier selection may be replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RunDirectoryError, match="replaces selections"):
        check_selection_directory(tmp_path / "mine", force=True)
    with pytest.raises(RunDirectoryError, match="is a file"):
        check_selection_directory(tmp_path / "mine" / "notes.txt", force=True)
