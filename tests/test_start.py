"""The mixture starts (pyro_gmvae.start): pure functions of codes and data, no trainer."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from helpers import blobs, small_model, small_train

from pyro_gmvae import GMVAE, clustering_scores
from pyro_gmvae.dataset import ScaledRows
from pyro_gmvae.errors import ConfigError, DataError
from pyro_gmvae.start import (
    STARTS,
    Start,
    UniformWeightsMixture,
    affinity_cores,
    available_cores,
    balanced_clusters,
    check_start,
    evenness,
    find_start,
    fitted_mixture,
    map_clusters,
    mixture_moments,
    register_start,
    separation,
    side_by_side,
    stability,
    start_on_sample,
    tsne_start,
)
from pyro_gmvae.train import Pretrain, Recipe, Trainer

# The blobs are so well separated that the codes' nearest-neighbour graph falls apart into one
# component per blob (3, each one class), which scikit-learn warns may upset the embedding: here
# the components are the clusters to find, as the test's assertions check.
_SPECTRAL_ON_SEPARATED_BLOBS = pytest.mark.filterwarnings(
    "ignore:Graph is not fully connected:UserWarning"
)


@pytest.mark.parametrize(
    "init",
    [
        "umap",
        "tsne",
        pytest.param("spectral", marks=_SPECTRAL_ON_SEPARATED_BLOBS),
        "gmm",
        "data-gmm",
    ],
)
def test_every_start_finds_separated_clusters_in_pretrained_codes(init):
    x, labels = blobs()
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(n_features=x.shape[1]))
    config = small_train(init=init)
    trainer = Trainer(model, x, config, recipe=Recipe([Pretrain(8)]), progress=False)
    trainer.run()
    start = find_start(init, trainer.codes(), x, 3, config, uniform_weights=False)
    assert start.responsibilities.shape == (len(x), 3)
    np.testing.assert_allclose(start.responsibilities.sum(1), 1.0)
    assert clustering_scores(labels, start.assignments)["accuracy"] > 0.95
    trainer.start_mixture(start)
    assert clustering_scores(labels, model.predict(x))["accuracy"] > 0.95


def test_uniform_mixture_keeps_equal_weights_and_finds_clusters_of_unequal_size():
    """The start's mixture holds its weights at 1/K through EM (a hook into scikit-learn's
    private M-step: this fails if scikit-learn stops calling it) and still finds the clusters."""
    rng = np.random.default_rng(0)
    sizes = [200, 60, 40]
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    points = np.concatenate(
        [c + rng.normal(size=(n, 2)) for c, n in zip(centers, sizes, strict=True)]
    )
    labels = np.repeat(np.arange(3), sizes)
    gmm = UniformWeightsMixture(3, covariance_type="full", random_state=0).fit(points)
    np.testing.assert_array_equal(gmm.weights_, np.full(3, 1 / 3))
    assert clustering_scores(labels, gmm.predict(points))["accuracy"] > 0.98


def test_a_float32_map_whose_clusters_lie_on_lines_is_fitted_without_failing():
    """t-SNE maps come in float32 and in the hundreds; a table of few distinct rows makes
    clusters that lie on lines, whose full covariances lost their positive determinant to float32
    rounding and failed EM (``gmvae train`` on 0/1 strips crashed after pretraining; scikit-learn
    1.9.1 fails on these points in float32)."""
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(3):
        t = rng.normal(size=100) * 100
        lines.append(np.stack([t, rng.normal() * t], 1) + rng.normal(size=2) * 2000)
    points = np.vstack(lines).astype(np.float32)
    gmm = fitted_mixture(points, 3, "full", restarts=10, seed=0, uniform=True)
    assert clustering_scores(np.repeat(np.arange(3), 100), gmm.predict(points))["accuracy"] == 1.0


def test_data_gmm_start_clusters_the_data_with_full_covariances_whatever_the_codes():
    """``data-gmm`` reads the data, not the codes (noise here), and its full covariances follow
    three long, parallel clusters that lie closer across than along: a mixture of round clusters
    (the ``gmm`` start's diagonal one here, on the same columns) cuts them across."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    along = rng.normal(scale=3.0, size=300)
    across = rng.normal(scale=0.3, size=300) + 2.5 * labels
    tilt = np.array([[1.0, 1.0], [-1.0, 1.0]]) / np.sqrt(2)  # not aligned with the axes
    data = (np.stack([along, across], 1) @ tilt).astype(np.float32)
    codes = rng.normal(size=(300, 2))
    config = small_train(init="data-gmm", restarts=5)
    start = find_start("data-gmm", codes, data, 3, config, True)
    assert start.source == "data (full covariances)"  # by BIC: the columns are correlated
    assert clustering_scores(labels, start.assignments)["accuracy"] > 0.98
    on_codes_columns = find_start("gmm", data.astype(np.float64), data, 3, config, True)
    assert clustering_scores(labels, on_codes_columns.assignments)["accuracy"] < 0.7


def test_data_gmm_start_takes_diagonal_covariances_where_bic_or_the_row_count_says_so():
    """Three classes of 50 rows apart in 3 of 10 standardized noisy columns: a full covariance
    per cluster fits the noise and cuts across the classes, the diagonal mixture has the lower
    BIC and finds them. With fewer rows per cluster than columns a full covariance is not even
    tried (13 rows, 20 columns)."""

    def table(rows_per_class, columns, seed):
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(3), rows_per_class)
        data = rng.normal(size=(len(labels), columns)) + 2.0 * np.eye(3, columns)[labels]
        return (data - data.mean(0)) / data.std(0), labels

    data, labels = table(50, 10, 0)
    config = small_train(restarts=10)
    full = fitted_mixture(data, 3, "full", 10, 0, True).predict(data)
    assert clustering_scores(labels, full)["accuracy"] < 0.65
    start = find_start("data-gmm", data[:, :2], data, 3, config, True)
    assert start.source == "data (diag covariances)"
    assert clustering_scores(labels, start.assignments)["accuracy"] > 0.8
    few, _ = table(13, 20, 0)
    assert find_start("data-gmm", few[:, :2], few, 3, config, True).source.startswith("data (diag")


@pytest.mark.parametrize(("n_features", "chosen"), [(5, "data-gmm"), (64, "umap")])
def test_init_auto_takes_the_start_for_the_data_width_in_the_api_as_in_the_cli(n_features, chosen):
    """``init="auto"`` (the default) is resolved where the start runs, from the model's width,
    by the one rule the CLI applies before it saves config.json (``config.start_for``)."""
    from pyro_gmvae.config import start_for
    from pyro_gmvae.train import MixtureStart

    x = np.random.default_rng(0).uniform(size=(40, n_features)).astype(np.float32)
    model = GMVAE(small_model(n_features=n_features))
    config = small_train(init="auto")
    trainer = Trainer(model, x, config, recipe=Recipe([Pretrain(1)]), progress=False)
    assert MixtureStart().start_function(trainer) == (chosen, None) == (start_for(n_features), None)


@pytest.mark.parametrize("structured", ["codes", "data"])
def test_tsne_start_keeps_the_map_whose_clusters_are_separated(structured):
    """With ``tsne_input="auto"`` the start comes from the t-SNE map, of the codes or of the
    data, on which the mixture's clusters are better separated; here one input holds the three
    blobs and the other is structureless noise of the same size."""
    x, labels = blobs(n=150)
    noise = np.random.default_rng(1).uniform(size=x.shape).astype(np.float32)
    data, codes = (noise, x) if structured == "codes" else (x, noise)
    config = small_train(init="tsne", tsne_input="auto", tsne_perplexity=20.0)
    start = tsne_start(codes.astype(np.float64), data, 3, config, False)
    assert start.source == structured
    assert set(start.scores) == {"codes", "data"}
    assert clustering_scores(labels, start.assignments)["accuracy"] > 0.95
    config = small_train(init="tsne", tsne_input="codes", tsne_perplexity=20.0)
    assert list(tsne_start(codes.astype(np.float64), data, 3, config, False).scores) == ["codes"]


def test_tsne_start_keeps_the_stable_map_not_a_tighter_one_that_merges_two_classes(monkeypatch):
    """Four classes. On the codes' map two of them lie in one tight island, so four clusters must
    cut some island in two, and where depends on the rows a mixture is fitted to; on the data's
    map each class is an island, looser. The silhouette prefers the tight map (the rule of the
    start until 2026-12-05, wrong on `digits` after longer pretraining); the start keeps the map
    whose clusters random halves of it give again."""
    import pyro_gmvae.start as start_module

    rng = np.random.default_rng(0)
    n = 100
    labels = np.repeat(np.arange(4), n)
    merged = np.concatenate(
        [rng.normal(c, 0.3, (n, 2)) for c in ([0, 0], [0, 0], [10, 0], [0, 10])]
    )
    apart = np.concatenate([rng.normal(c, 1.5, (n, 2)) for c in ([0, 0], [6, 0], [0, 6], [6, 6])])
    # The codes have 3 columns and the data 5 (fewer than 50: no principal components taken),
    # so each map is known by what it is made of.
    maps = {3: merged, 5: apart}
    monkeypatch.setattr(start_module, "tsne_map", lambda x, *args: maps[x.shape[1]])
    codes, data = rng.normal(size=(4 * n, 3)), rng.normal(size=(4 * n, 5)).astype(np.float32)
    config = small_train(init="tsne", tsne_input="auto")
    start = tsne_start(codes, data, 4, config, True)
    assert start.source == "data"
    assert start.scores["data"] > start.scores["codes"] + 0.1
    assert clustering_scores(labels, start.assignments)["accuracy"] > 0.95
    silhouette = {
        name: separation(m, start.candidates[name].argmax(1), 0)
        for name, m in (("codes", merged), ("data", apart))
    }
    assert silhouette["codes"] > silhouette["data"]  # what the silhouette would have kept
    assert clustering_scores(labels, start.candidates["codes"].argmax(1))["accuracy"] < 0.85


def test_stability_is_one_for_islands_and_lower_where_a_cluster_must_cut_one():
    rng = np.random.default_rng(1)
    islands = np.concatenate([rng.normal(c, 0.5, (80, 2)) for c in ([0, 0], [9, 0], [0, 9])])
    assert stability(islands, 3, restarts=2, seed=0, uniform=True) == pytest.approx(1.0)
    two_islands = np.concatenate([rng.normal(c, 0.5, (120, 2)) for c in ([0, 0], [9, 0])])
    assert stability(two_islands, 3, restarts=2, seed=0, uniform=True) < 0.9
    # Fewer points than two clusters' worth: the halves overlap and it is still defined.
    assert -1.0 <= stability(islands[:5], 4, restarts=1, seed=0, uniform=True) <= 1.0


def test_stability_is_the_same_score_in_parallel_processes():
    """Each split has its own halves and seed, drawn before any is fitted: two worker
    processes give the serial score exactly (a map where the splits disagree, so it is not 1)."""
    rng = np.random.default_rng(2)
    two_islands = np.concatenate([rng.normal(c, 0.5, (150, 2)) for c in ([0, 0], [9, 0])])
    serial = stability(two_islands, 3, restarts=2, seed=0, uniform=True, splits=6, n_jobs=1)
    parallel = stability(two_islands, 3, restarts=2, seed=0, uniform=True, splits=6, n_jobs=2)
    assert parallel == serial < 0.95


def test_every_mixture_fit_runs_on_one_thread(monkeypatch):
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_info, threadpool_limits

    threads, fit = [], GaussianMixture.fit

    def counted(self, x, y=None):
        threads.append(max((i["num_threads"] for i in threadpool_info()), default=1))
        return fit(self, x, y)

    monkeypatch.setattr(GaussianMixture, "fit", counted)
    rng = np.random.default_rng(3)
    islands = np.concatenate([rng.normal(c, 0.5, (40, 2)) for c in ([0, 0], [9, 0], [0, 9])])
    with threadpool_limits(2):  # the process's own, whatever OMP_NUM_THREADS says
        for uniform in (False, True):
            fitted_mixture(islands, 3, "full", 1, 0, uniform)
    assert threads == [1, 1]


def test_the_cores_the_start_uses_are_at_most_torchs_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert available_cores() == 1
    finally:
        torch.set_num_threads(threads)


def test_the_cores_the_start_uses_are_at_most_the_cpu_affinity(monkeypatch):
    """A process pinned to one core (taskset, a container's cpuset) fits on one, however many
    threads torch has (``select_clusters(n_jobs=-1)`` reads the same ``affinity_cores``)."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert affinity_cores() == 1 and available_cores() == 1
    finally:
        torch.set_num_threads(threads)


def test_tsne_iterations_reach_every_map_of_the_start(monkeypatch):
    """--tsne-iterations sets the gradient steps of both maps (scikit-learn counts them in
    ``n_iter_``: the steps run, which stop at the limit on these blobs)."""
    import pyro_gmvae.start as start_module

    ran = []

    class Recorded(start_module.TSNE):
        def fit_transform(self, x, y=None):
            embedding = super().fit_transform(x)
            ran.append(self.n_iter_)
            return embedding

    monkeypatch.setattr(start_module, "TSNE", Recorded)
    x, _ = blobs(n=150)
    noise = np.random.default_rng(1).uniform(size=x.shape).astype(np.float32)
    for steps in (300, 600):
        config = small_train(init="tsne", tsne_perplexity=20.0, tsne_iterations=steps)
        tsne_start(x.astype(np.float64), noise, 3, config, False)
        assert len(ran) == 2 and all(steps - 50 < n <= steps for n in ran), (steps, ran)
        ran.clear()


def test_mixture_moments_of_hard_assignments_are_each_clusters_moments():
    codes = np.array([[0.0, 1.0], [2.0, 3.0], [10.0, 10.0], [12.0, 14.0]])
    responsibilities = np.eye(3)[[0, 0, 1, 1]]  # cluster 2 empty
    weights, means, variances = mixture_moments(codes, responsibilities, reg=0.0)
    np.testing.assert_allclose(means[:2], [[1.0, 2.0], [11.0, 12.0]])
    np.testing.assert_allclose(variances[:2], [[1.0, 1.0], [1.0, 4.0]])
    np.testing.assert_allclose(means[2], codes.mean(0))  # the empty one: overall moments
    np.testing.assert_allclose(variances[2], codes.var(0))
    np.testing.assert_allclose(weights, np.array([2, 2, 1]) / 5)


def test_a_registered_start_is_one_function():
    seen = {}

    @register_start("by_first_feature")
    def by_first_feature(codes, data, n_clusters, config, uniform):
        seen["shapes"] = codes.shape, data.shape
        edges = np.quantile(data[:, 0], np.linspace(0, 1, n_clusters + 1)[1:-1])
        return Start(np.eye(n_clusters)[np.digitize(data[:, 0], edges)])

    try:
        x, _ = blobs(n=90)
        codes = np.random.default_rng(0).normal(size=(90, 2))
        start = find_start("by_first_feature", codes, x, 3, small_train(), False)
        assert seen["shapes"] == ((90, 2), x.shape)
        assert np.bincount(start.assignments).tolist() == [30, 30, 30]
        check_start("by_first_feature", 90, 3, small_train())  # --init accepts it
    finally:
        del STARTS["by_first_feature"]
    with pytest.raises(ConfigError, match="--init must be one of"):
        check_start("by_first_feature", 90, 3, small_train())


def test_codes_with_fewer_distinct_values_than_clusters_are_refused_before_the_start():
    """All rows alike: t-SNE crashed the process (a segfault) on such codes (issue 15, #16)."""
    codes = np.zeros((50, 2))
    codes[:10] = 1.0  # two distinct codes for three clusters
    x, _ = blobs(n=50)
    with pytest.raises(DataError, match="only 2 distinct values, fewer than the 3 clusters"):
        find_start("tsne", codes, x, 3, small_train(init="tsne"), False)


@pytest.mark.parametrize(
    ("init", "rows", "clusters", "options", "match"),
    [
        ("spectral", 10, 3, {}, "--init-neighbors 10 needs more than that many"),
        ("spectral", 500, 3, {"init_neighbors": 100_000}, "--init-neighbors 100000"),
        ("gmm", 5, 6, {}, "5 training rows for 6 clusters"),
        ("nonsense", 50, 3, {}, "--init must be one of"),
    ],
)
def test_starts_that_cannot_run_on_the_rows_are_refused_before_training(
    init, rows, clusters, options, match
):
    with pytest.raises((ConfigError, DataError), match=match):
        check_start(init, rows, clusters, small_train(**options))


@pytest.mark.parametrize("init", ["umap", "tsne", "gmm"])
def test_tiny_data_with_many_features_and_as_many_clusters_as_rows_starts(init):
    """The data's t-SNE map takes 50 principal components, more than 20 rows have (issue 15,
    #17), and the silhouette of a map with as many clusters as points is undefined."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(20, 64)).astype(np.float32)
    codes = rng.normal(size=(20, 2))
    for clusters in (3, 20):
        if init == "umap":  # and two rows, on which umap-learn's graph is empty
            two = find_start(init, codes[:2], x[:2], 2, small_train(init=init), True)
            assert sorted(two.assignments) == [0, 1]
        start = find_start(
            init, codes, x, clusters, small_train(init=init, tsne_input="auto"), True
        )
        assert start.responsibilities.shape == (20, clusters)


def test_the_umap_start_is_the_same_for_the_same_seed_and_keeps_its_options_in_range():
    """UMAP is seeded (one thread), so a run and its repeat start from the same clusters; more
    neighbours or components than rows are capped instead of crashing umap-learn."""
    rng = np.random.default_rng(1)
    codes = np.concatenate([rng.normal(c, 0.3, size=(40, 3)) for c in (-3.0, 0.0, 3.0)])
    config = small_train(init="umap", umap_neighbors=(500,), umap_components=400)
    first = find_start("umap", codes, codes, 3, config, uniform_weights=True)
    again = find_start("umap", codes, codes, 3, config, uniform_weights=True)
    np.testing.assert_array_equal(first.assignments, again.assignments)
    assert clustering_scores(np.repeat([0, 1, 2], 40), first.assignments)["accuracy"] == 1.0


def _blobs_and_an_island() -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 100 points in a plane, two of them close, and 12 points of the third
    class in a tight island far off: a map as UMAP draws ``digits``' ones."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [12.0, 0.0]])
    labels = np.repeat([0, 1, 2], 100)
    points = centres[labels] + rng.normal(0, 0.5, (300, 2))
    island = np.array([12.0, 25.0]) + rng.normal(0, 0.05, (12, 2))
    return np.concatenate([points, island]), np.concatenate([labels, np.full(12, 2)])


def test_balanced_clusters_give_no_component_to_an_island_too_small_to_be_a_class():
    """The plain mixture spends a component on the island and merges the two close classes; the
    balanced rule fits one component more, drops the island's and finds the three classes (the
    island joins whichever remaining component finds it the most probable)."""
    embedding, labels = _blobs_and_an_island()
    plain = map_clusters(embedding, 3, 2, 0, True)
    assert np.bincount(plain).min() == 12  # the island took a component
    assert clustering_scores(labels, plain)["accuracy"] < 0.75
    balanced = balanced_clusters(embedding, 3, 2, 0)
    assert clustering_scores(labels[:300], balanced[:300])["accuracy"] == 1.0
    assert len(np.unique(balanced[300:])) == 1


def test_balanced_clusters_leave_a_mixture_alone_when_every_cluster_is_large_enough():
    """Clusters of unequal size, each at least half a 1/K share, are the plain mixture's."""
    rng = np.random.default_rng(2)
    sizes = [60, 100, 140]
    embedding = np.concatenate(
        [rng.normal(c, 0.5, size=(n, 2)) for c, n in zip((-4.0, 0.0, 4.0), sizes, strict=True)]
    )
    plain = map_clusters(embedding, 3, 2, 0, True)
    np.testing.assert_array_equal(balanced_clusters(embedding, 3, 2, 0), plain)
    assert sorted(np.bincount(plain)) == sizes


def test_the_umap_start_sees_the_data_beside_codes_that_say_nothing():
    """``umap_input``: a map of codes that are noise finds no classes; a map of the data alone,
    or of both side by side, finds the data's."""
    x, labels = blobs(n=240)
    codes = np.random.default_rng(3).normal(size=(240, 4))
    accuracy = {}
    for source, named in (
        ("codes", "the codes"),
        ("data", "the data"),
        ("joint", "codes and data"),
    ):
        config = small_train(init="umap", umap_input=source)
        start = find_start("umap", codes, x, 3, config, uniform_weights=True)
        assert start.source.startswith(f"UMAP map of {named}, ")  # as figures and records say
        accuracy[source] = clustering_scores(labels, start.assignments)["accuracy"]
    assert accuracy["codes"] < 0.6
    assert accuracy["data"] == accuracy["joint"] == 1.0


def test_evenness_is_one_for_equal_clusters_and_falls_as_one_grows_at_another_s_cost():
    """A map that merges two classes must split another to make K clusters: one cluster grows
    as another shrinks, and the sizes are less probable under the prior's equal weights."""
    equal = np.repeat(np.arange(4), 50)
    assert evenness(equal, 4) == pytest.approx(1.0)
    merged = np.repeat(np.arange(4), [80, 50, 50, 20])
    assert evenness(merged, 4) < evenness(np.repeat(np.arange(4), [60, 50, 50, 40]), 4) < 1
    assert evenness(np.zeros(200, dtype=int), 4) == 0.0


def test_the_umap_start_makes_a_map_per_neighbourhood_size_and_keeps_the_most_even():
    """With weights held uniform, one map per value of ``umap_neighbors``, each one's evenness in
    ``scores``, the kept one the most even; with learned weights, the middle value's map alone."""
    x, labels = blobs(n=240)
    config = small_train(init="umap", umap_input="data", umap_neighbors=(5, 15, 40))
    start = find_start("umap", x, x, 3, config, uniform_weights=True)
    names = [f"UMAP map of the data, {n} neighbours" for n in (5, 15, 40)]
    assert list(start.scores) == list(start.candidates) == names
    assert start.source == max(names, key=start.scores.__getitem__)
    assert start.scores[start.source] == pytest.approx(evenness(start.assignments, 3))
    np.testing.assert_array_equal(start.candidates[start.source].argmax(1), start.assignments)
    learned = find_start("umap", x, x, 3, config, uniform_weights=False)
    assert learned.source == "UMAP map of the data, 15 neighbours"
    assert learned.scores == {} and learned.candidates == {}
    assert clustering_scores(labels, learned.assignments)["accuracy"] == 1.0


def _three_blobs_of_codes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return np.array([[-5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])[labels] + rng.normal(
        0, 0.4, (n, 2)
    ), labels


def test_a_start_on_more_rows_than_start_rows_runs_on_a_sample_and_extends_to_the_others():
    """The start sees ``start_rows`` rows (of the codes and of the data, the same rows), those
    keep its responsibilities, and every other row takes the mean of its 15 nearest sampled
    codes' ones: on three separated blobs, the cluster of its blob."""
    codes, labels = _three_blobs_of_codes(600)
    data = np.arange(600, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    seen = {}

    def by_blob(codes, data, n_clusters, config, uniform):
        seen["codes"], seen["rows"] = codes, data[:, 0].astype(int)
        clusters = np.digitize(codes[:, 0], [-2.5, 2.5])
        soft = np.full((len(codes), n_clusters), 0.1)  # soft, to see them kept as they are
        soft[np.arange(len(codes)), clusters] = 0.8
        other = np.full_like(soft, 0.1)
        other[np.arange(len(codes)), 2 - clusters] = 0.8
        return Start(soft, source="codes", candidates={"codes": soft, "data": other})

    start = find_start(by_blob, codes, data, 3, small_train(start_rows=100), False)
    sample = seen["rows"]
    assert len(sample) == len(set(sample)) == 100
    np.testing.assert_array_equal(seen["codes"], codes[sample])  # codes and rows: the same rows
    np.testing.assert_allclose(start.responsibilities.sum(1), 1.0)
    by_row = np.digitize(codes[:, 0], [-2.5, 2.5])
    kept = np.full((100, 3), 0.1)
    kept[np.arange(100), by_row[sample]] = 0.8
    np.testing.assert_allclose(start.responsibilities[sample], kept)
    others = np.setdiff1d(np.arange(600), sample)  # each: the mean of its 15 nearest sampled
    distances = ((codes[others, None, :] - codes[sample][None]) ** 2).sum(-1)
    nearest = np.argsort(distances, axis=1)[:, :15]
    np.testing.assert_allclose(start.responsibilities[others], kept[nearest].mean(1))
    assert clustering_scores(labels, start.assignments)["accuracy"] == 1.0
    for name, soft in start.candidates.items():  # the candidates are extended as well
        assert soft.shape == (600, 3)
        np.testing.assert_allclose(soft.sum(1), 1.0)
        expected = by_row if name == "codes" else 2 - by_row
        np.testing.assert_array_equal(soft.argmax(1), expected)
    assert start.source == "codes"

    same = find_start(by_blob, codes, data, 3, small_train(start_rows=100), False)
    np.testing.assert_array_equal(seen["rows"], sample)  # the seed draws the sample
    find_start(by_blob, codes, data, 3, small_train(start_rows=100, seed=1), False)
    assert set(seen["rows"]) != set(sample)
    np.testing.assert_array_equal(same.responsibilities, start.responsibilities)


@pytest.mark.parametrize("start_rows", [0, 600, 10_000])
def test_a_start_on_no_more_rows_than_start_rows_sees_them_all(start_rows):
    codes, _ = _three_blobs_of_codes(600)
    seen = {}

    def whole(codes, data, n_clusters, config, uniform):
        seen["n"] = len(codes), len(data)
        return Start(np.eye(n_clusters)[np.digitize(codes[:, 0], [-2.5, 2.5])])

    start_on_sample(whole, codes, codes, 3, small_train(start_rows=start_rows), False)
    assert seen["n"] == (600, 600)


def test_the_sample_of_a_start_reads_only_its_rows_of_data_read_from_disk(tmp_path, monkeypatch):
    """Rows streamed from an ``.npy`` (:class:`~pyro_gmvae.dataset.ScaledRows`) reach the start
    as the sample's rows, read on demand, scaled; the file is never copied whole."""
    codes, _ = _three_blobs_of_codes(600)
    rows = np.repeat((np.arange(600) % 200).astype(np.uint8)[:, None], 3, axis=1)
    np.save(tmp_path / "rows.npy", rows)
    data = ScaledRows(np.load(tmp_path / "rows.npy", mmap_mode="r"), scale=255.0)

    def no_copy(*args, **kwargs):
        raise AssertionError("the whole file was copied")

    monkeypatch.setattr(ScaledRows, "__array__", no_copy)
    seen = {}

    def rows_seen(codes, data, n_clusters, config, uniform):
        seen["data"] = data
        return Start(np.eye(n_clusters)[np.digitize(codes[:, 0], [-2.5, 2.5])])

    find_start(rows_seen, codes, data, 3, small_train(start_rows=50), False)
    got = seen["data"]
    assert isinstance(got, np.ndarray) and got.shape == (50, 3) and got.dtype == np.float32
    assert got.max() <= 199 / 255 + 1e-6 and len(np.unique(got[:, 0])) > 1


def test_a_sample_with_fewer_distinct_codes_than_clusters_is_refused_naming_start_rows():
    codes = np.zeros((500, 2))
    codes[:5] = np.arange(10).reshape(5, 2)  # 6 distinct codes, 5 of them in one row each
    x, _ = blobs(n=500)
    with pytest.raises(DataError, match="--start-rows"):
        find_start("gmm", codes, x, 6, small_train(start_rows=20), False)


def test_start_rows_fewer_than_the_clusters_are_refused_before_training():
    with pytest.raises(ConfigError, match="--start-rows 5 is fewer rows than the 10 clusters"):
        check_start("tsne", 500, 10, small_train(start_rows=5))
    with pytest.raises(ConfigError, match="--init-neighbors 10 needs more"):
        check_start("spectral", 5000, 3, small_train(start_rows=10))  # spectral runs on 10


def test_side_by_side_views_count_alike_whatever_their_width_and_scale():
    rng = np.random.default_rng(0)
    narrow, wide = rng.normal(size=(200, 2)) * 100.0, rng.normal(size=(200, 50)) + 3.0
    both = side_by_side(narrow, wide, np.ones((200, 1)))
    assert both.shape == (200, 53)
    np.testing.assert_allclose(both.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose([both[:, :2].var(0).sum(), both[:, 2:52].var(0).sum()], 1.0)
    np.testing.assert_array_equal(both[:, 52], 0.0)  # a constant view stays zero


def test_the_joint_tsne_map_finds_clusters_that_only_both_views_together_tell_apart():
    """Three classes: the codes tell class 0 from 1 and 2, the data tell 2 from 0 and 1. Each
    view's own map shows two groups; the one map of both shows three."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 60)
    codes = np.c_[np.where(labels == 0, -5.0, 5.0), np.zeros(180)] + rng.normal(0, 0.5, (180, 2))
    data = np.c_[np.where(labels == 2, 5.0, -5.0), np.zeros((180, 3))] + rng.normal(
        0, 0.5, (180, 4)
    )
    scores = {}
    for view in ("codes", "data", "joint"):
        config = small_train(init="tsne", tsne_input=view, tsne_perplexity=20.0)
        start = find_start("tsne", codes, data.astype(np.float32), 3, config, True)
        assert start.source == view and set(start.candidates) == {view}
        scores[view] = clustering_scores(labels, start.assignments)["accuracy"]
    assert scores["joint"] == 1.0
    assert scores["codes"] < 0.9 and scores["data"] < 0.9
