"""Clustering scores against reference labels (labels are for scoring only, never for training)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, confusion_matrix, normalized_mutual_info_score


def contingency(
    labels: np.ndarray, clusters: np.ndarray, n_clusters: int | None = None
) -> np.ndarray:
    """Counts ``C[k, c]`` of examples in cluster k with label c, shape ``(K, n_labels)``."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    n_labels = int(labels.max()) + 1
    K = max(int(clusters.max()) + 1, n_clusters or 0)
    size = max(K, n_labels)
    C = confusion_matrix(clusters, labels, labels=np.arange(size))
    return C[:K, :n_labels]


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels (Hungarian algorithm).

    With more clusters than labels, unmatched clusters count as errors.
    """
    C = contingency(labels, clusters)
    rows, cols = linear_sum_assignment(-C)
    return float(C[rows, cols].sum() / len(labels))


def many_to_one_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy when each cluster is named after its most frequent label (for K > classes)."""
    C = contingency(labels, clusters)
    return float(C.max(axis=1).sum() / len(labels))


def clustering_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``many_to_one_accuracy``, ``nmi`` and ``ari`` of ``clusters`` vs ``labels``."""
    if len(labels) != len(clusters):
        raise ValueError(f"{len(labels)} labels for {len(clusters)} cluster assignments")
    return {
        "accuracy": cluster_accuracy(labels, clusters),
        "many_to_one_accuracy": many_to_one_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }
