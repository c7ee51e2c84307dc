"""Clustering scores against reference labels, and the accuracy of classes when some labels were
known in training.

:func:`clustering_scores` and :func:`class_accuracy`, which every report goes through, score the
rows that have a label and leave out those whose label is missing
(:data:`~pyro_gmvae.dataset.MISSING_LABEL`); the functions below them take labels that are all
present. One matching of clusters to labels serves everything that pairs them: :func:`match_clusters` (the
best one-to-one matching, Hungarian algorithm) gives :func:`cluster_accuracy`, the ordered
:func:`matched_confusion` matrix of the confusion figure, and the colours of the latent figure.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .dataset import has_label


def contingency(
    labels: np.ndarray, clusters: np.ndarray, n_clusters: int | None = None
) -> np.ndarray:
    """Counts ``C[k, c]`` of examples in cluster k with label c, shape ``(K, n_labels)``.

    Raises:
        ValueError: lengths that differ, no examples, or negative labels or clusters (both are
            indices).
    """
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if len(labels) != len(clusters) or len(labels) == 0:
        raise ValueError(f"{len(labels)} labels for {len(clusters)} cluster assignments")
    if labels.min() < 0 or clusters.min() < 0:
        raise ValueError("labels and clusters must be indices 0, 1, ..., not negative numbers")
    K = max(int(clusters.max()) + 1, n_clusters or 0)
    C = np.zeros((K, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(C, (clusters, labels), 1)
    return C


def _best_matching(C: np.ndarray) -> dict[int, int]:
    """``{cluster: label}`` maximising the matched counts of contingency table ``C (K, L)``;
    ``min(K, L)`` pairs, the other clusters (or labels) unmatched."""
    rows, cols = linear_sum_assignment(-C)  # it minimises a cost: negate counts to maximise
    return {int(k): int(c) for k, c in zip(rows, cols, strict=True)}


def match_clusters(
    labels: np.ndarray, clusters: np.ndarray, n_clusters: int | None = None
) -> dict[int, int]:
    """The best one-to-one matching of clusters to labels (Hungarian algorithm), as
    ``{cluster: label}``: the pairing with the most examples on matched pairs. With more clusters
    than labels (``n_clusters`` counts empty ones too) some clusters are left unmatched, with fewer
    some labels."""
    return _best_matching(contingency(labels, clusters, n_clusters))


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels (:func:`match_clusters`).

    With more clusters than labels, unmatched clusters count as errors.
    """
    C = contingency(labels, clusters)
    matched = _best_matching(C)
    return float(sum(C[k, c] for k, c in matched.items()) / len(labels))


def class_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """The fraction of ``predicted (N,)`` equal to ``labels (N,)``, with no matching: the
    accuracy of a model whose clusters are tied to classes (trained with some labels known).
    Rows whose label is missing are left out.

    Raises:
        ValueError: lengths that differ, or no row with a label.
    """
    labels, predicted = _labelled(labels, predicted, "predictions")
    return float((labels == predicted).mean())


def many_to_one_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy when each cluster is named after its most frequent label (for K > classes)."""
    C = contingency(labels, clusters)
    return float(C.max(axis=1).sum() / len(labels))


def matched_confusion(
    labels: np.ndarray, clusters: np.ndarray, n_clusters: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """Counts ``M[label, j]`` of each label in cluster ``order[j]``, shape ``(L, K)``, with the
    clusters ordered by :func:`match_clusters`: the cluster matched to the lowest matched label
    first, and so on, unmatched clusters last. With K >= L the matched counts are the diagonal, and
    a perfect clustering is diagonal.

    Raises:
        ValueError: ``labels`` and ``clusters`` are not 1-D of the same, nonzero length.
    """
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if labels.ndim != 1 or clusters.ndim != 1 or len(labels) != len(clusters) or len(labels) == 0:
        raise ValueError(
            f"labels {labels.shape} and clusters {clusters.shape} must be 1-D of the same, "
            "nonzero length"
        )
    C = contingency(labels, clusters, n_clusters)  # (K, L)
    cluster_of = {c: k for k, c in _best_matching(C).items()}  # label -> its cluster
    order = [cluster_of[c] for c in range(C.shape[1]) if c in cluster_of]
    order += [k for k in range(C.shape[0]) if k not in order]
    return C[order].T, order


def clustering_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``many_to_one_accuracy``, ``nmi`` and ``ari`` of ``clusters (N,)`` vs
    ``labels (N,)``, on the rows that have a label (those whose label is missing are left out).

    Raises:
        ValueError: lengths that differ, or no row with a label.
    """
    labels, clusters = _labelled(labels, clusters, "cluster assignments")
    return {
        "accuracy": cluster_accuracy(labels, clusters),
        "many_to_one_accuracy": many_to_one_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


def _labelled(labels: np.ndarray, other: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``labels (N,)`` and ``other (N,)`` that have a label."""
    labels, other = np.asarray(labels), np.asarray(other)
    if len(labels) != len(other):
        raise ValueError(f"{len(labels)} labels for {len(other)} {what}")
    present = has_label(labels)
    if not present.any():
        raise ValueError(f"none of the {len(labels)} labels is present: nothing to score")
    return labels[present], other[present]
