"""Choosing the number of clusters K by held-out likelihood: :func:`select_clusters`.

Each candidate K is fitted with :class:`~pyro_gmvae.estimator.GMVAEClustering` on the same
training rows, from the same seed, and scored on the same held-out rows, so the K alone differs.
On the training rows more clusters tend to fit better; on held-out rows the log-likelihood stops
improving once the mixture has the clusters the data has, and the recommendation is the smallest K
that is as good as the best within the noise of the held-out rows. Labels, where given, are only
reported beside each K (accuracy, NMI); they never enter the choice.

The Ks are independent fits, so ``n_jobs`` fits them in parallel processes, each on one thread.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import numbers
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_array

from .errors import ConfigError, RunDirectoryError
from .estimator import GMVAEClustering
from .files import atomic_write_text
from .metrics import clustering_scores
from .runs import LOCK_FILE
from .start import affinity_cores

#: What :func:`write_selection` writes into its directory.
SELECTION_FILE = "selection.json"
SELECTION_REPORT = "selection.md"
SELECTION_FIGURE = "figures/selection.png"

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
            clusters at least one training row is assigned to); ``converged``; ``seconds`` (the
            wall time of the fit and its scores). With labels also ``accuracy`` and ``nmi`` of
            the training rows and ``heldout_accuracy`` and ``heldout_nmi``, for reading only.
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

    @property
    def has_labels(self) -> bool:
        """Whether the table reports each K's agreement with labels."""
        return "accuracy" in self.table[0]

    def format(self) -> str:
        """The table for people to read, the recommended K marked with ``*``."""
        labelled = self.has_labels
        header = (
            f"{'K':>4}  {'held-out log p(x)':>21}  {'held-out ELBO':>19}  {'train ELBO':>10}  used"
        )
        lines = [header + ("  accuracy    NMI" if labelled else "")]
        for row in self.table:
            mark = "*" if row["k"] == self.recommended else " "
            line = (
                f"{row['k']:>3}{mark}  "
                f"{row['heldout_log_likelihood']:>11.3f} +- {row['heldout_log_likelihood_se']:<6.3f}  "
                f"{row['heldout_elbo']:>9.3f} +- {row['heldout_elbo_se']:<6.3f}  "
                f"{row['train_elbo']:>10.3f}  {row['clusters_used']:>4}"
            )
            if labelled:
                line += f"  {row['accuracy']:>8.3f}  {row['nmi']:>5.3f}"
            lines.append(line)
        lines.append(f"* recommended K = {self.recommended}: {self.rule}")
        if labelled:
            lines.append(
                "(accuracy and NMI of the training rows against the labels: not used to choose)"
            )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The table as Markdown, with the rule and the recommendation in words."""
        labelled = self.has_labels
        columns = ["K", "held-out log p(x)", "held-out ELBO", "train ELBO", "clusters used"]
        columns += ["accuracy", "NMI", "held-out accuracy"] if labelled else []
        lines = [
            "# Choosing K",
            "",
            f"Recommended K = **{self.recommended}** (best held-out log-likelihood: K = {self.best}).",
            "",
            f"Rule: {self.rule}.",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for row in self.table:
            k = f"**{row['k']}**" if row["k"] == self.recommended else str(row["k"])
            cells = [
                k,
                f"{row['heldout_log_likelihood']:.3f} ± {row['heldout_log_likelihood_se']:.3f}",
                f"{row['heldout_elbo']:.3f} ± {row['heldout_elbo_se']:.3f}",
                f"{row['train_elbo']:.3f}",
                str(row["clusters_used"]),
            ]
            if labelled:
                cells += [f"{row[name]:.3f}" for name in ("accuracy", "nmi", "heldout_accuracy")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "Log-likelihoods and ELBOs in nats per row, mean ± standard error over the held-out rows.",
        ]
        if labelled:
            lines.append(
                "Accuracy and NMI against the data's labels are shown for reading, never used to choose."
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The table, the rule and the recommendation as plain values (for ``selection.json``)."""
        return {
            "recommended": self.recommended,
            "best": self.best,
            "rule": self.rule,
            "table": self.table,
        }


def select_clusters(
    x: Any,
    ks: Iterable[int],
    *,
    labels: Any = None,
    heldout_fraction: float = 0.2,
    random_state: int = 0,
    n_importance_samples: int = 100,
    n_jobs: int | None = None,
    **params: Any,
) -> ClusterSelection:
    """Fit a GMVAE for each K in ``ks`` and recommend one by held-out log-likelihood.

    The rows of ``x (N, D)`` are split once at random (``heldout_fraction`` held out, by
    ``random_state``); each K is fitted on the training rows by
    ``GMVAEClustering(n_clusters=K, random_state=random_state, **params)`` and its held-out rows
    scored by the importance-weighted estimate of log p(x) (``n_importance_samples`` draws of z)
    and by the ELBO. The recommended K follows :data:`RULE`: the smallest K within one standard
    error of the best.

    ``labels (N,)``, when given, are split with the rows and only reported: each K's accuracy
    and NMI on the training and the held-out rows. ``n_jobs`` fits that many Ks at once, each in
    a process of its own on one thread (None or 1: one after the other, here; -1: one per CPU
    core this process may use); the results do not depend on it beyond float rounding.
    The workers are spawned, so a script that calls this with ``n_jobs`` > 1 must do so under
    ``if __name__ == "__main__":``.

    Standardize tables first (as for :class:`~pyro_gmvae.estimator.GMVAEClustering`).

    Raises:
        ConfigError (a ValueError): for an empty ``ks``, a K below 1 or above the number of
            training rows, a ``heldout_fraction`` outside (0, 1) or one that holds out fewer than
            2 rows, labels of another length, an ``n_jobs`` of 0 or below -1.
    """
    clash = sorted({"n_clusters", "random_state", "n_importance_samples"} & set(params))
    if clash:
        raise ConfigError(f"{clash} are select_clusters' own arguments (n_clusters comes from ks)")
    x = check_array(x, dtype=np.float32)
    ks = check_candidates(ks, len(x), heldout_fraction)
    workers = _n_workers(n_jobs, len(ks))
    if labels is None:
        train, heldout = train_test_split(x, test_size=heldout_fraction, random_state=random_state)
        train_labels = heldout_labels = None
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(x),):
            raise ConfigError(
                f"labels must have shape ({len(x)},), one per row, not {labels.shape}"
            )
        train, heldout, train_labels, heldout_labels = train_test_split(
            x, labels, test_size=heldout_fraction, random_state=random_state
        )
    jobs = [
        (
            k,
            train,
            heldout,
            train_labels,
            heldout_labels,
            params
            | {
                "n_clusters": k,
                "random_state": random_state,
                "n_importance_samples": n_importance_samples,
            },
        )
        for k in ks
    ]
    if workers == 1:
        results = [_fit_and_score(*job) for job in jobs]
    else:
        # spawn, not fork: a forked child inherits the parent's torch thread pool and locks,
        # which can deadlock; each worker imports afresh and keeps to one thread.
        with ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread
        ) as pool:
            results = list(pool.map(_fit_and_score, *zip(*jobs, strict=True)))

    estimators = {row["k"]: est for est, _, row in results}
    log_px = {row["k"]: scores for _, scores, row in results}
    rows = [row for _, _, row in results]
    best = max(ks, key=lambda k: log_px[k].mean())
    for row in rows:
        difference = log_px[best] - log_px[row["k"]]  # (heldout,) >= 0 on average
        row["difference_to_best"] = float(difference.mean())
        row["difference_to_best_se"] = _standard_error(difference)
    recommended = next(
        row["k"] for row in rows if row["difference_to_best"] <= row["difference_to_best_se"]
    )
    return ClusterSelection(rows, recommended, best, RULE, estimators)


def check_candidates(ks: Iterable[int], n_rows: int, heldout_fraction: float) -> list[int]:
    """The candidate Ks sorted without duplicates, checked against ``n_rows`` rows of which
    ``heldout_fraction`` are held out (the split :func:`select_clusters` makes).

    Raises:
        ConfigError: as :func:`select_clusters` does.
    """
    ks = sorted({_as_k(k) for k in ks})
    if not ks:
        raise ConfigError("ks is empty: give the numbers of clusters to compare, e.g. range(1, 11)")
    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(f"heldout_fraction must be in (0, 1), not {heldout_fraction}")
    # train_test_split's rule: the held-out part is ceil(fraction * n) rows.
    n_heldout = math.ceil(heldout_fraction * n_rows)
    n_train = n_rows - n_heldout
    if n_heldout < 2 or n_train < 2:
        raise ConfigError(
            f"heldout_fraction={heldout_fraction} of {n_rows} rows leaves {n_train} to train on "
            f"and {n_heldout} to score; give more rows or another fraction"
        )
    if ks[-1] > n_train:
        raise ConfigError(
            f"K={ks[-1]} is more than the {n_train} training rows; every cluster needs a row"
        )
    return ks


def _fit_and_score(
    k: int,
    train: np.ndarray,
    heldout: np.ndarray,
    train_labels: np.ndarray | None,
    heldout_labels: np.ndarray | None,
    params: dict[str, Any],
) -> tuple[GMVAEClustering, np.ndarray, dict[str, Any]]:
    """Fit one K on ``train (n, D)`` and score ``heldout (m, D)``: the estimator, the held-out
    rows' log p(x) ``(m,)`` float64 and the K's row of the table (without the differences)."""
    started = time.perf_counter()
    est = GMVAEClustering(**params).fit(train)
    log_px = est.score_samples(heldout, method="iwae").astype(np.float64)
    elbo = est.score_samples(heldout, method="elbo").astype(np.float64)
    row = {
        "k": k,
        "heldout_log_likelihood": float(log_px.mean()),
        "heldout_log_likelihood_se": _standard_error(log_px),
        "heldout_elbo": float(elbo.mean()),
        "heldout_elbo_se": _standard_error(elbo),
        "train_elbo": float(est.score_samples(train, method="elbo").mean()),
        "clusters_used": len(np.unique(est.labels_)),
        "converged": est.converged_,
    }
    if train_labels is not None:
        fitted = clustering_scores(train_labels, est.labels_)
        unseen = clustering_scores(heldout_labels, est.predict(heldout))
        row |= {
            "accuracy": fitted["accuracy"],
            "nmi": fitted["nmi"],
            "heldout_accuracy": unseen["accuracy"],
            "heldout_nmi": unseen["nmi"],
        }
    row["seconds"] = time.perf_counter() - started
    return est, log_px, row


def _one_thread() -> None:
    """Each worker on one thread: the workers share the cores among themselves."""
    torch.set_num_threads(1)


def _n_workers(n_jobs: int | None, n_ks: int) -> int:
    """Processes to fit ``n_ks`` Ks with: ``n_jobs`` as joblib reads it, at most one per K."""
    if n_jobs is None or n_jobs == 1:
        return 1
    if (
        not isinstance(n_jobs, numbers.Integral)
        or isinstance(n_jobs, bool)
        or n_jobs == 0
        or n_jobs < -1
    ):
        raise ConfigError(
            f"n_jobs must be a positive number of processes or -1 (every core), not {n_jobs!r}"
        )
    return max(1, min(n_ks, affinity_cores() if n_jobs == -1 else int(n_jobs)))


def _as_k(k: Any) -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"every K in ks must be an integer of at least 1, not {k!r}")
    return int(k)


def _standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of ``values (n,)``, n >= 2."""
    return float(values.std(ddof=1) / math.sqrt(len(values)))


def check_selection_directory(path: str | Path, *, force: bool) -> None:
    """Refuse ``path`` for a selection unless absent, empty, or (with ``force``) an earlier
    selection, which :func:`write_selection` then replaces. Changes nothing.

    Raises:
        RunDirectoryError: naming the problem and the fix.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path} is a file, not a directory; choose another --out")
    if path.exists() and any(p.name != LOCK_FILE for p in path.iterdir()):
        if not force:
            raise RunDirectoryError(
                f"{path} already exists and is not empty; pass --force to replace an earlier "
                "selection there, or choose another --out"
            )
        if not (path / SELECTION_FILE).is_file():
            raise RunDirectoryError(
                f"{path} holds no {SELECTION_FILE} of an earlier selection; --force only "
                "replaces selections, choose another --out"
            )


def write_selection(
    selection: ClusterSelection, out_dir: str | Path, extra: dict[str, Any] | None = None
) -> list[Path]:
    """Write ``selection`` into directory ``out_dir``: ``selection.json`` (the table, the rule,
    the recommendation, and ``extra``, e.g. the data and settings), ``selection.md`` (the table
    in Markdown, the rule in words) and ``figures/selection.png``, each atomically. Returns the
    paths written."""
    from .plots import save_figure, selection_figure  # matplotlib: only when a report is written

    out_dir = Path(out_dir)
    record = selection.to_dict() | dict(extra or {})
    figure = save_figure(
        selection_figure(selection.table, selection.recommended, selection.rule),
        out_dir / SELECTION_FIGURE,
    )
    markdown = selection.to_markdown() + f"\n![choosing K]({SELECTION_FIGURE})\n"
    atomic_write_text(out_dir / SELECTION_REPORT, markdown)
    atomic_write_text(out_dir / SELECTION_FILE, json.dumps(record, indent=1) + "\n")
    return [out_dir / SELECTION_FILE, out_dir / SELECTION_REPORT, figure]
