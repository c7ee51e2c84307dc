"""Choosing the number of clusters K by held-out likelihood: :func:`select_clusters`.

Each candidate K is fitted with :class:`~pyro_gmvae.estimator.GMVAEClustering` on the same
training rows, from the same seed, and scored on the same held-out rows, so the K alone differs.
On the training rows more clusters tend to fit better; on held-out rows the log-likelihood stops
improving once the mixture has the clusters the data has, and the recommendation is the smallest K
that is as good as the best within the noise of the held-out rows.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils import check_array

from .estimator import GMVAEClustering

RULE = (
    "the smallest K whose mean held-out log-likelihood is within one standard error of the best "
    "K's, the standard error of the mean per-row difference between the two (the held-out rows "
    "are the same for every K)"
)


@dataclass
class ClusterSelection:
    """What :func:`select_clusters` found.

    Attributes:
        table: one row per K, in increasing K: ``k``; ``heldout_log_likelihood`` and
            ``heldout_elbo``, their means over the held-out rows (nats per row) and standard
            errors (``..._se``); ``difference_to_best`` and its standard error
            ``difference_to_best_se`` (the best K's held-out log-likelihood minus this K's, per
            row, averaged); ``train_elbo`` (mean over the training rows); ``clusters_used`` (the
            clusters at least one training row is assigned to); ``converged``.
        recommended: the K chosen by ``rule``.
        best: the K with the highest mean held-out log-likelihood.
        rule: how ``recommended`` was chosen, in words.
        estimators: the fitted estimator of each K.
    """

    table: list[dict[str, Any]]
    recommended: int
    best: int
    rule: str = RULE
    estimators: dict[int, GMVAEClustering] = field(default_factory=dict, repr=False)

    def format(self) -> str:
        """The table for people to read, the recommended K marked with ``*``."""
        lines = [
            f"{'K':>4}  {'held-out log p(x)':>21}  {'held-out ELBO':>19}  {'train ELBO':>10}  used"
        ]
        for row in self.table:
            mark = "*" if row["k"] == self.recommended else " "
            lines.append(
                f"{row['k']:>3}{mark}  "
                f"{row['heldout_log_likelihood']:>11.3f} +- {row['heldout_log_likelihood_se']:<6.3f}  "
                f"{row['heldout_elbo']:>9.3f} +- {row['heldout_elbo_se']:<6.3f}  "
                f"{row['train_elbo']:>10.3f}  {row['clusters_used']:>4}"
            )
        lines.append(f"* recommended K = {self.recommended}: {self.rule}")
        return "\n".join(lines)


def select_clusters(
    x: Any,
    ks: Iterable[int],
    *,
    heldout_fraction: float = 0.2,
    random_state: int = 0,
    n_importance_samples: int = 100,
    **params: Any,
) -> ClusterSelection:
    """Fit a GMVAE for each K in ``ks`` and recommend one by held-out log-likelihood.

    The rows of ``x (N, D)`` are split once at random (``heldout_fraction`` held out, by
    ``random_state``); each K is fitted on the training rows by
    ``GMVAEClustering(n_clusters=K, random_state=random_state, **params)`` and its held-out rows
    scored by the importance-weighted estimate of log p(x) (``n_importance_samples`` draws of z)
    and by the ELBO. The recommended K follows :data:`RULE`: the smallest K within one standard
    error of the best.

    Standardize tables first (as for :class:`~pyro_gmvae.estimator.GMVAEClustering`).

    Raises:
        ValueError: for an empty ``ks``, a K below 1 or above the number of training rows, a
            ``heldout_fraction`` outside (0, 1) or one that holds out fewer than 2 rows.
    """
    clash = sorted({"n_clusters", "random_state", "n_importance_samples"} & set(params))
    if clash:
        raise ValueError(f"{clash} are select_clusters' own arguments (n_clusters comes from ks)")
    ks = sorted({_as_k(k) for k in ks})
    if not ks:
        raise ValueError("ks is empty: give the numbers of clusters to compare, e.g. range(1, 11)")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), not {heldout_fraction}")
    x = check_array(x, dtype=np.float32)
    train, heldout = train_test_split(x, test_size=heldout_fraction, random_state=random_state)
    if len(heldout) < 2 or len(train) < 2:
        raise ValueError(
            f"heldout_fraction={heldout_fraction} of {len(x)} rows leaves {len(train)} to train on "
            f"and {len(heldout)} to score; give more rows or another fraction"
        )
    if ks[-1] > len(train):
        raise ValueError(
            f"K={ks[-1]} is more than the {len(train)} training rows; every cluster needs a row"
        )

    estimators, log_px, rows = {}, {}, []
    for k in ks:
        est = GMVAEClustering(
            n_clusters=k,
            random_state=random_state,
            n_importance_samples=n_importance_samples,
            **params,
        ).fit(train)
        estimators[k] = est
        log_px[k] = est.score_samples(heldout, method="iwae").astype(np.float64)
        elbo = est.score_samples(heldout, method="elbo").astype(np.float64)
        rows.append(
            {
                "k": k,
                "heldout_log_likelihood": float(log_px[k].mean()),
                "heldout_log_likelihood_se": _standard_error(log_px[k]),
                "heldout_elbo": float(elbo.mean()),
                "heldout_elbo_se": _standard_error(elbo),
                "train_elbo": float(est.score_samples(train, method="elbo").mean()),
                "clusters_used": len(np.unique(est.labels_)),
                "converged": est.converged_,
            }
        )
    best = max(ks, key=lambda k: log_px[k].mean())
    for row in rows:
        difference = log_px[best] - log_px[row["k"]]  # (heldout,) >= 0 on average
        row["difference_to_best"] = float(difference.mean())
        row["difference_to_best_se"] = _standard_error(difference)
    recommended = next(
        row["k"] for row in rows if row["difference_to_best"] <= row["difference_to_best_se"]
    )
    return ClusterSelection(rows, recommended, best, RULE, estimators)


def _as_k(k: Any) -> int:
    if not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"every K in ks must be an integer of at least 1, not {k!r}")
    return int(k)


def _standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of ``values (n,)``, n >= 2."""
    return float(values.std(ddof=1) / math.sqrt(len(values)))
