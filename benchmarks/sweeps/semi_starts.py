"""Starts that use a few known labels, scored offline on the cases ``map_rules.py cache`` saves
(issue 18; benchmarks/RESULTS.md, "Starts that use the labels"). For each of the three t-SNE maps
(codes, data, joint) and each count of labelled rows (drawn balanced with ``labelled_rows``,
seeds 0-2), the accuracy on the unlabelled rows of:

- ``tied``: the library's start with labels (``start.tie_to_classes``: the unsupervised mixture's
  clusters renamed to the classes by the labelled rows);
- ``semiEM``: a full-covariance, uniform-weight mixture on the map, EM with the labelled rows held
  at their class (Nigam et al. 2000), begun from ``tied``;
- ``spread``: scikit-learn's ``LabelSpreading`` (15-nearest-neighbour graph, ``alpha=0.2``) on the
  map, and on the codes themselves (``spread-rawcodes``).

    OMP_NUM_THREADS=2 python benchmarks/sweeps/semi_starts.py /tmp/digits-0.npz /tmp/mnist8k-0.npz
"""

import sys

import numpy as np
from scipy.special import logsumexp
from sklearn.semi_supervised import LabelSpreading

from pyro_gmvae import start as S
from pyro_gmvae.dataset import labelled_rows
from pyro_gmvae.metrics import cluster_accuracy

K = 10


def semi_em(x: np.ndarray, labels: np.ndarray, known: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Responsibilities ``(N, K)`` of a full-covariance mixture with weights 1/K fitted to ``x``
    by EM from ``init (N, K)``, the ``known`` rows held at their ``labels`` throughout."""
    held = np.eye(K)[labels[known]]
    resp = init.copy()
    resp[known] = held
    previous = -np.inf
    for _ in range(200):
        counts = resp.sum(0) + 1e-10
        means = resp.T @ x / counts[:, None]
        log_p = np.empty((len(x), K))
        for k in range(K):
            centred = x - means[k]
            cov = (resp[:, k, None] * centred).T @ centred / counts[k] + 1e-4 * np.eye(x.shape[1])
            chol = np.linalg.cholesky(cov)
            solved = np.linalg.solve(chol, centred.T)
            log_p[:, k] = -0.5 * (solved**2).sum(0) - np.log(np.diag(chol)).sum()
        total = logsumexp(log_p, 1)
        resp = np.exp(log_p - total[:, None])
        resp[known] = held
        likelihood = total[~known].sum()
        if abs(likelihood - previous) < 1e-6 * abs(likelihood):
            break
        previous = likelihood
    return resp


def spread(x: np.ndarray, labels: np.ndarray, known: np.ndarray) -> np.ndarray:
    spreading = LabelSpreading(kernel="knn", n_neighbors=15, alpha=0.2, max_iter=200)
    return spreading.fit(x, np.where(known, labels, -1)).transduction_


def score(path: str) -> None:
    saved = np.load(path)
    labels = saved["labels"]
    for count in (50, 100) if len(labels) < 4000 else (100, 1000):
        for seed in (0, 1, 2):
            known = labelled_rows(labels, count, seed)
            unlabelled = ~known
            scores = {}
            for name in ("codes", "data", "joint"):
                embedding, clusters = saved["map_" + name], saved["cl_" + name]
                scores[f"unsup-{name}"] = cluster_accuracy(labels[unlabelled], clusters[unlabelled])
                tied = S.tie_to_classes(S.Start(S.one_hot(clusters, K)), labels, known)
                scores[f"tied-{name}"] = (tied.assignments == labels)[unlabelled].mean()
                fitted = semi_em(embedding, labels, known, tied.responsibilities)
                scores[f"semiEM-{name}"] = (fitted.argmax(1) == labels)[unlabelled].mean()
                scores[f"spread-{name}"] = (spread(embedding, labels, known) == labels)[
                    unlabelled
                ].mean()
            spread_codes = spread(saved["codes"], labels, known)
            scores["spread-rawcodes"] = (spread_codes == labels)[unlabelled].mean()
            print(path, count, seed, " ".join(f"{k}={v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    for path in sys.argv[1:]:
        score(path)
