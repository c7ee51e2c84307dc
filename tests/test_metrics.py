"""Clustering scores: the one-to-one matching is optimal (not greedy), ignores what the clusters are
called, and handles more or fewer clusters than labels; the figure's matrix uses the same matching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_gmvae.dataset import MISSING_LABEL
from pyro_gmvae.metrics import (
    class_accuracy,
    cluster_accuracy,
    clustering_scores,
    contingency,
    many_to_one_accuracy,
    match_clusters,
    matched_confusion,
)

PROPERTY = settings(max_examples=60, deadline=None)


@st.composite
def partitions(draw, max_labels=5, max_clusters=7):
    """``(labels, clusters, K)``: 1 to 40 examples, each with a label and a cluster."""
    n = draw(st.integers(1, 40))
    n_labels = draw(st.integers(1, max_labels))
    K = draw(st.integers(1, max_clusters))
    labels = draw(st.lists(st.integers(0, n_labels - 1), min_size=n, max_size=n))
    clusters = draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n))
    return np.array(labels), np.array(clusters), K


def _from_counts(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and clusters whose contingency table ``C[k, c]`` is the one given."""
    clusters, labels = [], []
    for k, c in np.ndindex(C.shape):
        clusters += [k] * int(C[k, c])
        labels += [c] * int(C[k, c])
    return np.array(labels), np.array(clusters)


def test_a_known_table_is_matched_optimally_not_greedily():
    # Greedy matching takes the largest cell (5: cluster 0 with label 0) and is left with 0;
    # the best one-to-one matching pairs the two 4s: 8 of 13 right.
    C = np.array([[5, 4], [4, 0]])
    labels, clusters = _from_counts(C)
    assert np.array_equal(contingency(labels, clusters), C)
    assert match_clusters(labels, clusters) == {0: 1, 1: 0}
    assert cluster_accuracy(labels, clusters) == pytest.approx(8 / 13)
    assert many_to_one_accuracy(labels, clusters) == pytest.approx(9 / 13)  # both clusters: label 0


@PROPERTY
@given(partitions(), st.randoms(use_true_random=False))
def test_accuracy_ignores_what_the_clusters_are_called(partition, random):
    labels, clusters, K = partition
    renaming = list(range(K))
    random.shuffle(renaming)
    renamed = np.array(renaming)[clusters]
    assert cluster_accuracy(labels, renamed) == pytest.approx(cluster_accuracy(labels, clusters))
    assert many_to_one_accuracy(labels, renamed) == pytest.approx(
        many_to_one_accuracy(labels, clusters)
    )


@PROPERTY
@given(partitions())
def test_scores_are_bounded_and_many_to_one_is_at_least_one_to_one(partition):
    labels, clusters, _ = partition
    one_to_one = cluster_accuracy(labels, clusters)
    assert 0 < one_to_one <= many_to_one_accuracy(labels, clusters) <= 1
    # at least the largest label's share (all of it in one cluster), at most the K largest
    counts = np.sort(np.bincount(labels))[::-1]
    n_clusters = len(np.unique(clusters))
    assert one_to_one <= counts[:n_clusters].sum() / len(labels) + 1e-12


@PROPERTY
@given(partitions())
def test_the_matching_is_one_to_one_and_gives_the_accuracy(partition):
    labels, clusters, K = partition
    matched = match_clusters(labels, clusters, K)
    C = contingency(labels, clusters, K)
    assert len(set(matched.values())) == len(matched) == min(C.shape)  # no label used twice
    assert sum(C[k, c] for k, c in matched.items()) / len(labels) == pytest.approx(
        cluster_accuracy(labels, clusters)
    )


def test_more_clusters_than_labels_count_unmatched_clusters_as_errors():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2, 2, 2])  # label 0 split over clusters 0 and 1
    assert cluster_accuracy(labels, clusters) == pytest.approx(6 / 8)
    assert many_to_one_accuracy(labels, clusters) == 1.0
    matched = match_clusters(labels, clusters)
    assert matched[2] == 1 and len(matched) == 2  # one of clusters 0 and 1 is left out


def test_fewer_clusters_than_labels_leave_labels_unmatched():
    labels = np.array([0, 0, 0, 1, 1, 2])
    clusters = np.zeros(6, dtype=int)  # everything in one cluster
    assert match_clusters(labels, clusters) == {0: 0}
    assert cluster_accuracy(labels, clusters) == pytest.approx(3 / 6)
    M, order = matched_confusion(labels, clusters)
    assert order == [0] and np.array_equal(M, [[3], [2], [1]])


@PROPERTY
@given(partitions(max_labels=6, max_clusters=6), st.randoms(use_true_random=False))
def test_identical_partitions_score_one_whatever_their_names(partition, random):
    labels, _, _ = partition
    n_labels = int(labels.max()) + 1
    renaming = list(range(n_labels))
    random.shuffle(renaming)
    scores = clustering_scores(labels, np.array(renaming)[labels])
    assert scores == pytest.approx(
        {"accuracy": 1.0, "many_to_one_accuracy": 1.0, "nmi": 1.0, "ari": 1.0}
    )


def test_clustering_scores_refuse_lengths_that_differ():
    with pytest.raises(ValueError, match="3 labels for 2"):
        clustering_scores(np.zeros(3, int), np.zeros(2, int))


def test_scores_leave_out_the_rows_whose_label_is_missing():
    labels = np.array([0, 0, MISSING_LABEL, 1, 1, MISSING_LABEL, 2])
    clusters = np.array([1, 1, 0, 0, 2, 2, 2])
    present = labels != MISSING_LABEL
    # By hand, on the 5 rows with a label: cluster 0 holds label 1 once, cluster 1 label 0
    # twice, cluster 2 labels 1 and 2 once each. Matched one-to-one (1 -> 0, 0 -> 1, 2 -> 2)
    # 4 of 5 are right, and each cluster named after its majority label gets 1 + 2 + 1 = 4.
    scores = clustering_scores(labels, clusters)
    assert scores["accuracy"] == pytest.approx(4 / 5)
    assert scores["many_to_one_accuracy"] == pytest.approx(4 / 5)
    assert scores == pytest.approx(clustering_scores(labels[present], clusters[present]))
    assert class_accuracy(labels, clusters) == pytest.approx(1 / 5)  # only row 6: 2 == 2
    with pytest.raises(ValueError, match="none of the 2 labels is present"):
        clustering_scores(np.full(2, MISSING_LABEL), np.zeros(2, int))
    with pytest.raises(ValueError, match="none of the 2 labels is present"):
        class_accuracy(np.full(2, MISSING_LABEL), np.zeros(2, int))


# --------------------------------------------------------------------------- matched confusion
def test_matched_confusion_puts_a_permuted_clustering_on_the_diagonal():
    labels = np.repeat(np.arange(4), 5)
    clusters = np.array([2, 0, 3, 1])[labels]
    M, order = matched_confusion(labels, clusters)
    assert order == [2, 0, 3, 1]
    assert np.array_equal(M, 5 * np.eye(4, dtype=int))
    # more clusters than labels: unmatched clusters come last, with their counts
    clusters[:2] = 4
    M, order = matched_confusion(labels, clusters, n_clusters=5)
    assert M.shape == (4, 5) and order[-1] == 4 and M[0, 4] == 2


@PROPERTY
@given(partitions())
def test_matched_confusion_reorders_the_counts_by_the_matching(partition):
    labels, clusters, K = partition
    M, order = matched_confusion(labels, clusters, K)
    C = contingency(labels, clusters, K)
    assert sorted(order) == list(range(K))  # every cluster once, empty ones too
    assert np.array_equal(M, C[order].T)
    assert M.sum() == len(labels)
    matched = match_clusters(labels, clusters, K)
    # matched clusters first, in the order of their labels
    assert order[: len(matched)] == sorted(matched, key=matched.get)


def test_matched_confusion_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="same, nonzero length"):
        matched_confusion(np.zeros(5, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="same, nonzero length"):
        matched_confusion(np.zeros((5, 2), int), np.zeros((5, 2), int))
    with pytest.raises(ValueError, match="same, nonzero length"):
        matched_confusion(np.zeros(0, int), np.zeros(0, int))


def test_contingency_refuses_what_cannot_index_it():
    with pytest.raises(ValueError, match="3 labels for 2"):
        contingency(np.zeros(3, int), np.zeros(2, int))
    with pytest.raises(ValueError, match="0 labels"):
        contingency(np.zeros(0, int), np.zeros(0, int))
    with pytest.raises(ValueError, match="not negative"):
        contingency(np.array([0, -1]), np.array([0, 1]))
