"""Mixture starts: clusters of the training rows found from the pretrained codes (or the data),
from which the prior p(y) p(z|y) begins. Pure functions of arrays; nothing here needs a trainer.

A start is a function ``start(codes, data, n_clusters, config, uniform_weights) -> Start``:

- ``codes (N, Z)``: the means of q(z|x) of the training rows, float64;
- ``data (N, D)``: the training rows themselves (float32, as trained on): an array, or for data
  read from disk as it is used a :class:`~pyro_gmvae.dataset.ScaledRows`, whose rows
  ``data[idx]`` are read on demand and which ``np.asarray(data)`` copies whole;
- ``config``: the :class:`~pyro_gmvae.config.TrainConfig`, for the start's own options;
- ``uniform_weights``: whether the prior holds its weights at ``1/K`` (a start may fit the same
  family).

It returns a :class:`Start` with the responsibilities ``(N, K)`` of the rows. ``--init NAME``
picks ``STARTS[NAME]``; :func:`register_start` adds one, so a new start is one function.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median_low
from typing import Any

import numpy as np
import torch
from sklearn.cluster import SpectralClustering
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from .config import AUTO_START, MAP_VIEWS, TrainConfig
from .dataset import ScaledRows
from .errors import ConfigError, DataError
from .metrics import cluster_accuracy, match_clusters

#: Principal components of the data that the t-SNE map of the data is made of.
DATA_COMPONENTS = 50

#: What each expert's probability is floored at where :func:`tie_to_classes` multiplies the
#: start's responsibilities with a classifier's: a class that one of them rules out outright
#: (a probability that underflowed to 0) is then decided by the other, not ruled out by both.
EXPERT_FLOOR = 1e-6

#: Random splits of a map's points into halves from which :func:`stability` fits mixtures: 20,
#: about 7 s a map of 8,000 points on one thread. With 10, the mean moved by up to 0.06 between
#: three draws of halves on one `digits` map, and the better map led by 0.03-0.12 on most cases.
STABILITY_SPLITS = 20

#: Points of a map from which :func:`stability` fits its splits in parallel processes, one per
#: core the process may use; smaller maps (the tests', `digits`') stay in the process. Not tuned:
#: on one loaded box a 1,000-point map took 5 s serial on one thread and 4.7 s in two new workers.
STABILITY_PARALLEL_POINTS = 4000

#: Nearest sampled codes whose clusters a row outside the start's sample takes (the mean of
#: their responsibilities): a vote of 15, which one code on the wrong side does not decide.
EXTEND_NEIGHBORS = 15


@dataclass
class Start:
    """What a start found: ``responsibilities (N, K)``, soft or hard assignments of the training
    rows to the clusters (rows sum to 1); for a start that chooses between candidates, which one
    it kept (``source``), each candidate's score (``scores``) and each candidate's soft
    responsibilities ``(N, K)`` (``candidates``, for a choice that labels can make better, see
    :func:`tie_to_classes`)."""

    responsibilities: np.ndarray
    source: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def assignments(self) -> np.ndarray:
        """The most probable cluster of each row, ``(N,)``."""
        return self.responsibilities.argmax(1)


StartFunction = Callable[[np.ndarray, np.ndarray, int, TrainConfig, bool], Start]

#: The starts ``--init`` names.
STARTS: dict[str, StartFunction] = {}


def register_start(name: str) -> Callable[[StartFunction], StartFunction]:
    """Decorator: make ``fn`` the start called ``name`` (``TrainConfig(init=name)``)."""

    def register(fn: StartFunction) -> StartFunction:
        STARTS[name] = fn
        return fn

    return register


# ------------------------------------------------------------------------------ helpers
def mixture_moments(
    codes: np.ndarray, responsibilities: np.ndarray, reg: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights ``(K,)``, means ``(K, Z)`` and diagonal variances ``(K, Z)`` of the mixture whose
    soft assignments of ``codes (N, Z)`` are ``responsibilities (N, K)``; an empty cluster gets
    the overall mean and variance."""
    counts = responsibilities.sum(0)
    total = counts[:, None]
    means = np.where(
        total > 0, responsibilities.T @ codes / np.maximum(total, 1e-12), codes.mean(0)
    )
    second = responsibilities.T @ codes**2 / np.maximum(total, 1e-12)
    variances = np.where(total > 0, second - means**2, codes.var(0)) + reg
    weights = np.maximum(counts, 1.0) / np.maximum(counts, 1.0).sum()
    return weights, means, np.maximum(variances, reg)


class UniformWeightsMixture(GaussianMixture):
    """A Gaussian mixture whose weights stay ``1/K`` through EM: the family of the GMVAE's prior
    with fixed uniform weights, so that its restarts are compared by the likelihood of that family.

    scikit-learn always learns the weights; this resets them after each of its M-steps (a private
    hook, whose use ``tests/test_start.py`` checks).
    """

    def _m_step(self, *args: Any, **kwargs: Any) -> None:
        super()._m_step(*args, **kwargs)
        self.weights_ = np.full(self.n_components, 1.0 / self.n_components)


#: scikit-learn's name for t-SNE's number of gradient steps (``n_iter`` before 1.5).
_TSNE_STEPS = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"


def tsne_map(x: np.ndarray, perplexity: float, seed: int, iterations: int = 1000) -> np.ndarray:
    """A 2-d t-SNE map ``(N, 2)`` of ``x (N, D)`` after ``iterations`` gradient steps, the first
    250 with early exaggeration; PCA initialisation, so it depends on ``seed`` only through ties.
    The perplexity is capped at a third of the rows, as t-SNE needs."""
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    init = "pca" if x.shape[1] >= 2 else "random"  # PCA cannot make 2 components of 1 column
    steps = {_TSNE_STEPS: iterations}
    return TSNE(2, perplexity=perplexity, init=init, random_state=seed, **steps).fit_transform(x)


def umap_map(x: np.ndarray, components: int, neighbors: int, seed: int) -> np.ndarray:
    """A ``components``-d UMAP embedding ``(N, components)`` of ``x (N, D)`` with ``min_dist=0``
    (points of one cluster may pile up, which is what a mixture on the map wants), as N2D
    (McConville et al. 2019) makes it from autoencoder codes. Approximate nearest neighbours
    (pynndescent) and a sparse graph: its cost grows as about N log N. Seeded, so the same
    ``seed`` gives the same map (umap-learn then optimises on one thread)."""
    if len(x) < 3:  # umap-learn's graph of two points is empty; their map is themselves
        return np.asarray(x, dtype=np.float64)
    # numba's default OpenMP threading layer leaves its threads spinning beside torch's own
    # OpenMP pool: torch steps after the start were measured 2-16x slower (one torch thread, the
    # 2-core box loaded).
    # numba's own work queue does not spin. A layer the user chose (the variable) is kept.
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    import umap  # numba compiles on first use: imported only by the start that needs it

    neighbors = max(2, min(neighbors, len(x) - 1))
    components = max(1, min(components, len(x) - 2))
    reducer = umap.UMAP(
        n_components=components,
        n_neighbors=neighbors,
        min_dist=0.0,
        metric="euclidean",
        random_state=seed,
        init="spectral" if len(x) > components + 1 else "random",
    )
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state"
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        return np.asarray(reducer.fit_transform(np.asarray(x, dtype=np.float32)), np.float64)


def map_clusters(
    embedding: np.ndarray, n_clusters: int, restarts: int, seed: int, uniform: bool
) -> np.ndarray:
    """Cluster ``(N,)`` of each point of a map ``(N, 2)``: a full-covariance Gaussian mixture, with
    weights held at ``1/K`` when ``uniform`` (as the prior's are by default), ``restarts``
    initialisations, the best by likelihood.

    Free weights let EM settle on one component for two touching classes and two for one long
    class; with uniform weights that costs likelihood, and that start is no longer picked.
    """
    return fitted_mixture(embedding, n_clusters, "full", restarts, seed, uniform).predict(embedding)


def fitted_mixture(
    x: np.ndarray, n_clusters: int, covariance: str, restarts: int, seed: int, uniform: bool
) -> GaussianMixture:
    """A Gaussian mixture of ``n_clusters`` fitted to ``x (N, D)`` by EM, as every start here
    fits one: ``covariance`` (scikit-learn's ``covariance_type``), weights held at ``1/K`` when
    ``uniform``, ``restarts`` initialisations seeded by ``seed``, the best by likelihood, and a
    small ridge on the covariances so that a cluster of nearly equal rows stays proper.

    In float64 whatever ``x`` is: t-SNE maps come in float32, scaled to hundreds, where the
    covariance of a cluster lying on a line (a table of few distinct rows) loses its positive
    determinant to rounding and EM fails (scikit-learn keeps float32 input in float32).

    On one BLAS and OpenMP thread: EM's arrays have a few columns, where more threads only wait
    on each other, and on a box busy with other jobs they wait long (the stability of a map of
    1,000 points: 118 s on the process's two threads beside two other jobs, 5 s on one)."""
    x = np.asarray(x, dtype=np.float64)
    kind = UniformWeightsMixture if uniform else GaussianMixture
    mixture = kind(
        n_clusters, covariance_type=covariance, n_init=restarts, random_state=seed, reg_covar=1e-4
    )
    with threadpool_limits(1):
        return mixture.fit(x)


def principal_components(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The first ``n`` principal components of ``x (N, D)`` in float64, or ``x`` itself when
    ``D <= n``; fewer when there are fewer rows than ``n`` (PCA has at most ``N`` components)."""
    x = np.asarray(x, dtype=np.float64)
    n = min(n, len(x))
    return x if x.shape[1] <= n else PCA(n, random_state=seed).fit_transform(x)


def side_by_side(*views: np.ndarray) -> np.ndarray:
    """The columns of ``views`` (each ``(N, D_i)``) side by side, each view centred and scaled to
    unit total variance, so that each counts alike in a distance whatever its size and width: a
    neighbour in the result is near in every view. A constant view stays zero."""
    scaled = []
    for view in views:
        view = np.asarray(view, dtype=np.float64)
        centred = view - view.mean(0)
        total = np.sqrt(centred.var(0).sum())
        scaled.append(centred / total if total > 0 else centred)
    return np.hstack(scaled)


def separation(embedding: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Silhouette of the clusters ``labels (N,)`` on a map ``(N, 2)``, in [-1, 1], higher for
    tighter, better separated clusters; from at most 10,000 points, as it costs O(N^2). The
    t-SNE start chose its map by it until 2026-12-05 (:func:`stability` since); the sweeps in
    ``benchmarks/`` that compare the two rules read it."""
    if not 2 <= len(np.unique(labels)) <= len(labels) - 1:  # undefined otherwise
        return -1.0
    size = min(len(labels), 10_000)
    return float(silhouette_score(embedding, labels, sample_size=size, random_state=seed))


def stability(
    embedding: np.ndarray,
    n_clusters: int,
    restarts: int,
    seed: int,
    uniform: bool,
    splits: int = STABILITY_SPLITS,
    n_jobs: int | None = None,
) -> float:
    """How reproducible the ``n_clusters`` clusters of a map ``(N, 2)`` are, in [-1, 1]: over
    ``splits`` random splits of the points into two halves, the mean adjusted Rand index between
    the clusters that a mixture fitted to each half (the start's: full covariances, weights held
    at ``1/K`` when ``uniform``, ``restarts`` initialisations) gives all the points. This is
    clustering stability (Ben-Hur et al. 2002; Lange et al. 2004), which judges a clustering by
    whether the data would give it again, not by its shape.

    A map on which each class is an island of its own is cut into the same K clusters from
    either half. A map that merges two classes into one island must cut some other island to
    make K clusters, and where that cut falls moves with the half; however tight its clusters,
    they are less reproducible. The silhouette, which scores the tightness alone, preferred such
    a map on ``digits`` once the autoencoder was trained longer (benchmarks/RESULTS.md).

    Halves of fewer than ``n_clusters`` points overlap, so that each half can hold K clusters.

    The splits are fitted in ``n_jobs`` processes (None: one per core the process may use,
    :func:`available_cores`, on maps of at least :data:`STABILITY_PARALLEL_POINTS` points;
    serial below), each split with its own seed: the score is the same however many.
    """
    n = len(embedding)
    half = min(n, max(n // 2, n_clusters))
    rng = np.random.default_rng([seed, n])
    orders = [rng.permutation(n) for _ in range(splits)]
    tasks = [
        (embedding, (order[:half], order[n - half :]), n_clusters, restarts, seed + 1 + split)
        for split, order in enumerate(orders)
    ]
    if n_jobs is None:
        n_jobs = available_cores() if n >= STABILITY_PARALLEL_POINTS else 1
    if min(n_jobs, splits) > 1:
        from joblib import Parallel, delayed

        fit = delayed(_halves_agreement)
        agreement = Parallel(n_jobs=min(n_jobs, splits))(fit(*t, uniform) for t in tasks)
    else:
        agreement = [_halves_agreement(*t, uniform) for t in tasks]
    return float(np.mean(agreement))


def _halves_agreement(
    embedding: np.ndarray,
    halves: tuple[np.ndarray, np.ndarray],
    n_clusters: int,
    restarts: int,
    seed: int,
    uniform: bool,
) -> float:
    """The ARI between the clusters that mixtures fitted to each of two halves give all points."""
    clusters = [
        fitted_mixture(embedding[part], n_clusters, "full", restarts, seed, uniform).predict(
            embedding
        )
        for part in halves
    ]
    return adjusted_rand_score(*clusters)


def affinity_cores() -> int:
    """The cores the operating system lets this process run on (its CPU affinity where the
    platform has one, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, and at most the threads torch was
    given (``OMP_NUM_THREADS``, or ``torch.set_num_threads``, as on a box shared by several jobs
    or in :func:`~pyro_gmvae.selection.select_clusters`' one-thread workers)."""
    return max(1, min(affinity_cores(), torch.get_num_threads()))


def one_hot(assignments: np.ndarray, n_clusters: int) -> np.ndarray:
    """Hard responsibilities ``(N, K)`` of cluster indices ``(N,)``."""
    return np.eye(n_clusters)[assignments]


# ------------------------------------------------------------------------------- starts
@register_start("gmm")
def gmm_start(
    codes: np.ndarray, data: np.ndarray, n_clusters: int, config: TrainConfig, uniform: bool
) -> Start:
    """VaDE's start: a diagonal Gaussian mixture fitted to the codes by EM, ``restarts``
    initialisations, the best by likelihood; soft responsibilities."""
    gmm = fitted_mixture(codes, n_clusters, "diag", config.restarts, config.seed, uniform=False)
    return Start(gmm.predict_proba(codes))


@register_start("data-gmm")
def data_gmm_start(
    codes: np.ndarray, data: np.ndarray, n_clusters: int, config: TrainConfig, uniform: bool
) -> Start:
    """Model-based clustering of the data themselves: a Gaussian mixture on the data's columns
    (their first 50 principal components when wider), weights held uniform when the prior's are,
    ``restarts`` initialisations, the best by likelihood; soft responsibilities. ``--init
    auto``'s start for tables (:func:`~pyro_gmvae.config.start_for` says why); the codes do not
    enter, so the GMVAE starts from the clusters a mixture finds in the table.

    The covariances are full or diagonal, whichever mixture has the lower BIC, as model-based
    clustering chooses among covariance structures (mclust); full ones are tried only where a
    cluster of average size has more rows than there are columns, since with fewer a full
    covariance fits noise. ``source`` names the one kept. Full ones follow correlated columns
    (iris); diagonal ones keep a wide table of few rows, whose classes differ in a few of many
    noisy columns, from being cut along that noise.
    """
    x = principal_components(data, DATA_COMPONENTS, config.seed)
    kinds = ("full", "diag") if len(x) / n_clusters > x.shape[1] else ("diag",)
    fitted = {
        kind: fitted_mixture(x, n_clusters, kind, config.restarts, config.seed, uniform)
        for kind in kinds
    }
    kept = min(fitted, key=lambda kind: fitted[kind].bic(x))
    return Start(fitted[kept].predict_proba(x), source=f"data ({kept} covariances)")


@register_start("tsne")
def tsne_start(
    codes: np.ndarray, data: np.ndarray, n_clusters: int, config: TrainConfig, uniform: bool
) -> Start:
    """Clusters of 2-d t-SNE maps of the codes and/or of the data's first 50 principal components
    (``config.tsne_input``): a full-covariance Gaussian mixture on each map (weights held uniform
    when the prior's are, ``restarts`` initialisations, best by likelihood), and of two maps the
    one whose clusters are the more stable (:func:`stability`, the score in ``scores``); or
    (``joint``) one map of both side by side (:func:`side_by_side`), which has no choice to make.

    t-SNE follows the curved, elongated shapes that classes take in a code space, which a mixture
    on the codes cuts across. Stability compares maps, not likelihoods: two maps are two different
    data sets. Which map wins depends on the data: a network pretrained on a few thousand small
    images can code them worse than their pixels.
    """
    sources = {"codes": codes} if config.tsne_input in ("auto", "codes") else {}
    if config.tsne_input in ("auto", "data"):
        sources["data"] = principal_components(data, DATA_COMPONENTS, config.seed)
    if config.tsne_input == "joint":
        sources["joint"] = side_by_side(
            codes, principal_components(data, DATA_COMPONENTS, config.seed)
        )
    found = {}
    for name, source in sources.items():
        embedding = tsne_map(source, config.tsne_perplexity, config.seed, config.tsne_iterations)
        mixture = fitted_mixture(
            embedding, n_clusters, "full", config.restarts, config.seed, uniform
        )
        score = stability(embedding, n_clusters, config.restarts, config.seed, uniform)
        found[name] = (score, mixture.predict_proba(embedding))
    kept = max(found, key=lambda name: found[name][0])
    scores = {name: score for name, (score, _) in found.items()}
    candidates = {name: soft for name, (_, soft) in found.items()}
    return Start(
        one_hot(found[kept][1].argmax(1), n_clusters),
        source=kept,
        scores=scores,
        candidates=candidates,
    )


@register_start("umap")
def umap_start(
    codes: np.ndarray, data: np.ndarray, n_clusters: int, config: TrainConfig, uniform: bool
) -> Start:
    """N2D's start (McConville et al. 2019): a full-covariance Gaussian mixture (weights held
    uniform when the prior's are, ``restarts`` initialisations, best by likelihood) on a
    ``umap_components``-d UMAP embedding (``min_dist=0``) of what ``config.umap_input`` names: the
    codes (N2D's), the data's first 50 principal components, or both side by side (``joint``,
    :func:`side_by_side`); with weights held uniform, a component too small to be a class gives
    way to one more (:func:`balanced_clusters`).

    One map per value of ``umap_neighbors``, the size of the neighbourhood each point's map
    keeps. With weights held uniform the start keeps the map whose clusters are the most even
    (:func:`evenness`, each map's in ``scores``): the prior the model is trained under gives every
    cluster a 1/K share, and of several partitions that each fit their map, the one whose sizes
    are nearest those shares is the one it finds most probable (the multinomial likelihood of the
    sizes under equal weights rises with their entropy). Where a map merges two classes, another
    class is split to make K clusters, and one cluster grows as another shrinks. With learned
    weights, which expect no sizes, the middle value's map alone is made (N2D's 20 by default).

    No one neighbourhood size suits every data set: N2D's 20 neighbours are 1.1% of `digits`'
    rows and 0.25% of mnist8k's, and on `digits` the joint map at 20 put two classes in one
    cluster (282-290 rows beside one of 111-132) on three seeds of six, where another size did not
    and was kept (benchmarks/RESULTS.md).

    UMAP keeps the local neighbourhoods that make a class a connected piece of the code space,
    as t-SNE does, in more than two dimensions, where ten classes need not share a plane; and its
    cost grows as about N log N, where the exact-neighbour t-SNE's made 60,000 rows
    impractical. Side by side, a row's neighbours are near in the codes and in the data: a
    network that codes some class worse than its pixels (small data, short pretraining) and
    pixels whose distances mislead (MNIST's strokes) do not both mislead one neighbourhood, and
    there is no choice between two maps to get wrong (benchmarks/RESULTS.md)."""
    source = codes
    if config.umap_input != "codes":
        pixels = principal_components(data, DATA_COMPONENTS, config.seed)
        source = pixels if config.umap_input == "data" else side_by_side(codes, pixels)
    view = MAP_VIEWS[config.umap_input]
    sizes = config.umap_neighbors if uniform else [median_low(config.umap_neighbors)]
    found = {}
    for neighbors in sizes:
        embedding = umap_map(source, config.umap_components, neighbors, config.seed)
        if uniform:
            labels = balanced_clusters(embedding, n_clusters, config.restarts, config.seed)
        else:
            labels = map_clusters(embedding, n_clusters, config.restarts, config.seed, uniform)
        found[f"UMAP map of {view}, {neighbors} neighbours"] = labels
    scores = {name: evenness(labels, n_clusters) for name, labels in found.items()}
    kept = max(found, key=scores.__getitem__)  # the first listed of equals
    return Start(
        one_hot(found[kept], n_clusters),
        source=kept,
        scores=scores if len(found) > 1 else {},
        candidates={name: one_hot(labels, n_clusters) for name, labels in found.items()}
        if len(found) > 1
        else {},
    )


def evenness(labels: np.ndarray, n_clusters: int) -> float:
    """How even the sizes of the ``n_clusters`` clusters ``labels (N,)`` are, in [0, 1]: the
    entropy of their shares over that of ``n_clusters`` equal shares (1: all the same size; an
    empty cluster adds nothing). Sizes of higher evenness are the more probable under equal
    weights: the log of their multinomial probability is about ``N log K (evenness - 1)`` (by
    Stirling's approximation)."""
    if n_clusters < 2:
        return 1.0
    shares = np.bincount(labels, minlength=n_clusters) / len(labels)
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum() / np.log(n_clusters))


def balanced_clusters(
    embedding: np.ndarray, n_clusters: int, restarts: int, seed: int
) -> np.ndarray:
    """``n_clusters`` clusters ``(N,)`` of a map ``(N, D)`` whose classes are about equally
    large, as a prior with weights held at ``1/K`` says: a full-covariance mixture with weights
    held uniform (:func:`map_clusters`'s); while one of its clusters holds fewer than half a
    ``1/K`` share of the rows, the mixture is fitted again with one component more, and the
    components with the fewest rows are dropped, each of their rows taken by its most probable
    remaining component (at most ``n_clusters`` extra, and no more components than rows).

    A K-component mixture on a UMAP map gives a whole component to any small island, and then
    puts two classes in one component elsewhere: every UMAP map of ``digits`` holds an island of
    27 ones, whose component cost its maps 1.3-9.4 points of accuracy. Half a share is not a
    size fitted to data: a class that small is already far outside what the balanced prior
    expects; the islands caught on ``digits`` hold 15% of a share, and no mnist8k map measured
    had a cluster under half of one (benchmarks/RESULTS.md).
    """
    n = len(embedding)
    floor = n / (2 * n_clusters)
    found = map_clusters(embedding, n_clusters, restarts, seed, True)
    for extra in range(1, min(n_clusters, n - n_clusters) + 1):
        if np.bincount(found, minlength=n_clusters).min() >= floor:
            break
        mixture = fitted_mixture(embedding, n_clusters + extra, "full", restarts, seed, True)
        responsibilities = mixture.predict_proba(embedding)
        counts = np.bincount(responsibilities.argmax(1), minlength=n_clusters + extra)
        kept = np.argsort(counts, kind="stable")[extra:]
        found = responsibilities[:, kept].argmax(1)
    return found


@register_start("spectral")
def spectral_start(
    codes: np.ndarray, data: np.ndarray, n_clusters: int, config: TrainConfig, uniform: bool
) -> Start:
    """Spectral clustering of the codes' k-nearest-neighbour graph (``init_neighbors``)."""
    assignments = SpectralClustering(
        n_clusters,
        affinity="nearest_neighbors",
        n_neighbors=config.init_neighbors,
        assign_labels="cluster_qr",
        random_state=config.seed,
    ).fit_predict(codes)
    return Start(one_hot(assignments, n_clusters))


# ------------------------------------------------------------------- a few labels known
def tie_to_classes(
    start: Start,
    labels: np.ndarray,
    known: np.ndarray,
    classifier: np.ndarray | None = None,
) -> Start:
    """The start with its clusters renamed so that cluster k is class k, and the labelled rows
    at their class: for training with ``labels (N,)`` known where ``known (N,)`` is True.

    The clusters are matched to the classes by the most labelled rows on matched pairs
    (Hungarian, :func:`~pyro_gmvae.metrics.match_clusters`); clusters that no labelled row
    names take the classes left over, in order. Renaming keeps the unsupervised start, which
    finds the classes far better than means of a few labelled codes could place them (5 codes a
    class on ``digits``); the labels then decide only which cluster is which, and hold their own
    rows. A start with ``candidates`` (the t-SNE maps of the codes and of the data) is first
    replaced by the candidate whose matched clusters agree with the most labelled rows: the
    labels judge the maps better than the silhouette does (on ``digits``, seed 2, the codes' map
    that the silhouette kept merges 1 with 8 and 8 with 9). When the labelled rows agree with
    every candidate equally, the start keeps its own choice.

    ``classifier (N, K)``, the class probabilities of the rows from a model trained on the labels
    (the pretrained q(y|x)), is then combined with the renamed clusters as a product of experts,
    p(y) proportional to r(y) q(y|x), each floored at :data:`EXPERT_FLOOR`: the start's soft
    responsibilities decide where they are sure, the classifier where the start's mixture is
    torn between clusters (the edges of touching classes on a map). A start that assigned every
    row to one cluster (the maps' starts) stays hard: each row at its most probable class.
    """
    known = np.asarray(known, dtype=bool)
    labels = np.asarray(labels)
    responsibilities = np.asarray(start.responsibilities, dtype=np.float64)
    hard = bool(np.isin(responsibilities, (0.0, 1.0)).all())
    source = start.source
    if start.candidates and known.shape == labels.shape and known.any():
        agreement = {  # matched accuracy on the labelled rows
            name: cluster_accuracy(labels[known], soft[known].argmax(1))
            for name, soft in start.candidates.items()
        }
        # A tie leaves the choice to the start's own rule: a few labels often cannot tell two
        # maps apart (on `digits` with 50 labels both agreed with 45, and the codes' map that
        # the first-listed tie-break kept clustered the rest 5 points worse than the data's).
        source = max(agreement, key=lambda name: (agreement[name], name == start.source))
        responsibilities = np.asarray(start.candidates[source], dtype=np.float64)
    n, K = responsibilities.shape
    if labels.shape != (n,) or known.shape != (n,):
        raise ValueError(f"labels and known must have shape ({n},), one per training row")
    if not known.any():
        raise ValueError("no labelled row: pass known with at least one True")
    named = labels[known]
    if named.min() < 0 or named.max() >= K:
        raise DataError(
            f"labels of the labelled rows must be classes 0..{K - 1}, one per cluster, not "
            f"{int(named.min())}..{int(named.max())}; pass --clusters {int(named.max()) + 1}"
        )
    matched = match_clusters(named, responsibilities[known].argmax(1), K)  # {cluster: class}
    free = iter(c for c in range(K) if c not in matched.values())
    to_class = [matched[k] if k in matched else next(free) for k in range(K)]
    renamed = np.empty_like(responsibilities)
    renamed[:, to_class] = responsibilities
    if classifier is not None:
        classifier = np.asarray(classifier, dtype=np.float64)
        if classifier.shape != (n, K):
            raise ValueError(f"classifier has shape {classifier.shape}; pass ({n}, {K})")
        log_product = np.log(renamed + EXPERT_FLOOR) + np.log(classifier + EXPERT_FLOOR)
        renamed = np.exp(log_product - log_product.max(1, keepdims=True))
        renamed /= renamed.sum(1, keepdims=True)
    if hard:
        renamed = one_hot(renamed.argmax(1), K)
    renamed[known] = one_hot(named, K)
    return Start(renamed, source=source, scores=start.scores)


# ------------------------------------------------------------------------------- checks
def check_start(name: str, n_rows: int, n_clusters: int, config: TrainConfig) -> None:
    """Refuse, before any training, a start that cannot run on ``n_rows`` training rows.

    Raises:
        ConfigError: an unknown start, or options the start cannot honour on this many rows.
        DataError: fewer rows than the start needs.
    """
    if name not in STARTS and name != AUTO_START:
        raise ConfigError(f"--init must be one of {', '.join([AUTO_START, *STARTS])}, not {name!r}")
    if n_rows < n_clusters:
        raise DataError(
            f"{n_rows} training rows for {n_clusters} clusters; pass --clusters {n_rows} or "
            "fewer, or use more data"
        )
    if config.start_rows and config.start_rows < n_clusters:
        raise ConfigError(
            f"--start-rows {config.start_rows} is fewer rows than the {n_clusters} clusters; "
            f"pass --start-rows {max(n_clusters, 1000)} or more (0: all rows)"
        )
    n_rows = start_sample_size(n_rows, config)  # the rows the start itself clusters
    if name == "spectral":
        # The graph connects each code to init_neighbors others; scikit-learn needs more rows.
        if n_rows <= config.init_neighbors:
            raise ConfigError(
                f"--init-neighbors {config.init_neighbors} needs more than that many training "
                f"rows ({n_rows} here); pass --init-neighbors {max(1, n_rows // 2)} or use "
                "--init gmm"
            )
        if n_clusters >= n_rows:
            raise ConfigError(
                f"--init spectral needs more training rows ({n_rows}) than clusters "
                f"({n_clusters}); use --init gmm or fewer --clusters"
            )


def count_distinct(x: np.ndarray | ScaledRows, at_least: int) -> int:
    """How many distinct rows ``x (N, D)`` has, counting no further than needed: 4096 rows at a
    time, the distinct ones kept (fewer than ``at_least`` while counting goes on), so the whole
    of ``x`` is neither copied nor sorted (a :class:`~pyro_gmvae.dataset.ScaledRows` is read a
    chunk at a time) and the first rows usually suffice."""
    distinct = np.empty((0, *x.shape[1:]), dtype=x.dtype)
    for start in range(0, len(x), 4096):
        distinct = np.unique(np.concatenate([distinct, x[start : start + 4096]]), axis=0)
        if len(distinct) >= at_least:
            break
    return len(distinct)


def start_sample_size(n_rows: int, config: TrainConfig) -> int:
    """How many of ``n_rows`` training rows a start clusters: ``config.start_rows``, or all of
    them when that is 0 or no fewer."""
    return min(n_rows, config.start_rows) if config.start_rows else n_rows


def nearest_sampled(sample_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The :data:`EXTEND_NEIGHBORS` nearest of ``sample_codes (M, Z)`` to each of ``codes (N,
    Z)`` (Euclidean, exact, 8192 rows at a time), as indices ``(N, k)`` into the sample: found
    once, whatever number of clusterings is then extended with them (:func:`extend_to_rows`)."""
    k = min(EXTEND_NEIGHBORS, len(sample_codes))
    index = NearestNeighbors(n_neighbors=k).fit(sample_codes)
    dtype = np.int32 if len(sample_codes) < 2**31 else np.int64
    neighbours = np.empty((len(codes), k), dtype=dtype)
    for first in range(0, len(codes), 8192):
        rows = slice(first, first + 8192)
        neighbours[rows] = index.kneighbors(codes[rows], return_distance=False)
    return neighbours


def extend_to_rows(neighbours: np.ndarray, responsibilities: np.ndarray) -> np.ndarray:
    """Responsibilities ``(N, K)`` of the rows whose nearest sampled codes are ``neighbours (N,
    k)`` (:func:`nearest_sampled`), from those ``(M, K)`` of the sample: each row takes the mean
    responsibilities of its neighbours.

    The out-of-sample step of a start fitted on a sample: a map (t-SNE, UMAP) places only the
    points it was made of, while the codes place every row, and a class is a connected piece of
    the code space, which is what the maps follow."""
    extended = np.empty((len(neighbours), responsibilities.shape[1]))
    for first in range(0, len(neighbours), 8192):
        rows = slice(first, first + 8192)
        extended[rows] = responsibilities[neighbours[rows]].mean(1)
    return extended


def start_on_sample(
    fn: StartFunction,
    codes: np.ndarray,
    data: np.ndarray | ScaledRows,
    n_clusters: int,
    config: TrainConfig,
    uniform_weights: bool,
) -> Start:
    """``fn`` run on at most ``config.start_rows`` training rows (all when 0 or when there are no
    more), drawn at random with ``config.seed``, and extended to the others by
    :func:`extend_to_rows`; the sampled rows keep what ``fn`` gave them.

    A start needs enough rows to find the clusters' shapes, not all of them: the maps' cost grows
    faster than N (scikit-learn's exact-neighbour t-SNE as N^1.23, benchmarks/SCALE.md), a
    t-SNE map at a fixed perplexity splits a class into islands when it holds more points
    (mnist8k and moved copies: 0.93 at 16,000 rows, 0.85-0.86 at 32,000 and 64,000), and only
    a data map is a full copy of the data. With the sample the start costs a pass over the codes
    more for each row over ``start_rows``; the rows themselves are read only for the sample.
    """
    n = len(codes)
    size = start_sample_size(n, config)
    if size == n:
        return fn(codes, data, n_clusters, config, uniform_weights)
    rng = np.random.default_rng([config.seed, n])
    sample = np.sort(rng.choice(n, size, replace=False))
    sample_codes = codes[sample]
    distinct = count_distinct(np.round(sample_codes, 6), n_clusters)
    if distinct < n_clusters:
        raise DataError(
            f"the {size} rows drawn for the start (--start-rows) have only "
            f"{distinct} distinct codes, fewer than the {n_clusters} clusters: the data repeats "
            "a few rows many times. Pass a larger --start-rows (0: all rows) or fewer --clusters"
        )
    found = fn(sample_codes, data[sample], n_clusters, config, uniform_weights)
    others = np.ones(n, dtype=bool)
    others[sample] = False
    neighbours = nearest_sampled(sample_codes, codes[others])  # once, for every clustering

    def extended(responsibilities: np.ndarray) -> np.ndarray:
        full = np.empty((n, responsibilities.shape[1]))
        full[sample] = responsibilities
        full[others] = extend_to_rows(neighbours, responsibilities)
        return full

    candidates = {name: extended(soft) for name, soft in found.candidates.items()}
    return Start(
        extended(np.asarray(found.responsibilities, dtype=np.float64)),
        source=found.source,
        scores=found.scores,
        candidates=candidates,
    )


def find_start(
    start: str | StartFunction,
    codes: np.ndarray,
    data: np.ndarray,
    n_clusters: int,
    config: TrainConfig,
    uniform_weights: bool,
) -> Start:
    """Run the start ``start`` (a name of :data:`STARTS` or a start function) on at most
    ``config.start_rows`` rows (:func:`start_on_sample`) and check what it returns.

    Raises:
        DataError: when the codes (or those of the sample) take fewer distinct values than there
            are clusters (no start can tell the clusters apart; t-SNE would crash on them).
    """
    fn = STARTS[start] if isinstance(start, str) else start
    name = start if isinstance(start, str) else getattr(start, "__name__", repr(start))
    distinct = count_distinct(np.round(codes, 6), n_clusters)
    if distinct < n_clusters:
        raise DataError(
            f"the pretrained codes of the {len(codes)} training rows take only {distinct} "
            f"distinct values, fewer than the {n_clusters} clusters: the data has too few "
            "distinct rows (or pretraining collapsed). Pass fewer --clusters or check the data"
        )
    found = start_on_sample(fn, codes, data, n_clusters, config, uniform_weights)
    shape = (len(codes), n_clusters)
    if found.responsibilities.shape != shape:
        raise ValueError(
            f"start {name!r} returned responsibilities of shape "
            f"{found.responsibilities.shape}, not {shape}"
        )
    return found
