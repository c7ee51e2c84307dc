"""Figures: the files are written, are PNGs of the size asked for, bad inputs are refused, and what
a reader must see is there: no text outside the figure, no legend over the data, no title across
a colour bar, clusters in the colours of their matched labels."""

from __future__ import annotations

import re

import matplotlib.image
import matplotlib.text
import numpy as np
import pyro
import pytest

from pyro_gmvae import GMVAE, ModelConfig
from pyro_gmvae.cli import main
from pyro_gmvae.dataset import MISSING_LABEL, Dataset, Scaler
from pyro_gmvae.metrics import match_clusters
from pyro_gmvae.plots import (
    DPI,
    cluster_colours_by_label,
    confusion_figure,
    image_mosaic,
    latent_figure,
    reconstructions_figure,
    samples_figure,
    save_figure,
    statistic_figure,
    training_curves_figure,
    training_figures,
)
from pyro_gmvae.ppc import ALPHA, Statistic, two_sided_p_values

HISTORY = [
    {"epoch": 1, "phase": "pretrain", "loss": 40.0},
    {"epoch": 2, "phase": "pretrain", "loss": 30.0},
    {"epoch": 3, "phase": "svi", "loss": 35.0, "accuracy": 0.5, "nmi": 0.4},
    {"epoch": 4, "phase": "svi", "loss": 33.0, "accuracy": 0.6, "nmi": 0.5},
]


def _model(clusters=3, latent_dim=2, image_shape=(6, 5), likelihood="bernoulli", seed=0):
    pyro.set_rng_seed(seed)
    n_features = image_shape[0] * image_shape[1] if image_shape else 4
    config = ModelConfig(
        clusters=clusters,
        latent_dim=latent_dim,
        hidden=(8,),
        likelihood=likelihood,
        n_features=n_features,
        image_shape=image_shape,
    )
    return GMVAE(config)


def _images(n=40, shape=(6, 5), labels=True, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, shape[0] * shape[1])).astype(np.float32)
    y = rng.integers(0, 4, n) if labels else None
    return Dataset(x=x, labels=y, kind="image", image_shape=shape, name="random images")


def _table(n=40, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return Dataset(
        x=x,
        labels=None,
        kind="table",
        image_shape=None,
        name="random table",
        scaler=Scaler.fit(x),
        feature_names=["a", "b", "c", "d"],
    )


def _inches(box, fig) -> tuple[float, float, float, float]:
    return tuple(v / fig.dpi for v in (box.x0, box.y0, box.x1, box.y1))


def _assert_all_inside(fig) -> None:
    """Everything drawn, and every piece of text in particular, lies inside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches()
    x0, y0, x1, y1 = fig.get_tightbbox(renderer).extents  # inches
    tolerance = 0.02
    assert x0 >= -tolerance and y0 >= -tolerance, (x0, y0)
    assert x1 <= width + tolerance and y1 <= height + tolerance, (x1, y1, width, height)
    undrawn = set()  # labels of ticks outside the axes' view, which matplotlib does not draw
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    for text in fig.findobj(matplotlib.text.Text):
        if not text.get_visible() or not text.get_text().strip() or id(text) in undrawn:
            continue
        if text.axes is not None and not text.axes.get_visible():
            continue
        box = text.get_window_extent(renderer)
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, text.get_text()
        assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1, text.get_text()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _pixels(fig) -> tuple[int, int]:
    w, h = fig.get_size_inches()
    return round(h * DPI), round(w * DPI)


def _assert_png(path, size) -> None:
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == size
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_save_figure_writes_a_png_of_figsize_times_dpi_and_leaves_no_temp_file(tmp_path):
    fig = training_curves_figure(HISTORY)
    path = save_figure(fig, tmp_path / "sub" / "curves.png")
    _assert_png(path, _pixels(fig))
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]


def test_training_curves_need_epochs_with_a_loss():
    with pytest.raises(ValueError, match="history is empty"):
        training_curves_figure([])
    with pytest.raises(ValueError, match="lack 'epoch' or 'loss'"):
        training_curves_figure([{"epoch": 1, "phase": "svi"}])


def test_training_curves_gain_a_score_panel_only_when_records_have_scores():
    with_scores = training_curves_figure(HISTORY)
    without = training_curves_figure(
        [{k: r[k] for k in ("epoch", "phase", "loss")} for r in HISTORY]
    )
    assert len(with_scores.axes) == 2 and len(without.axes) == 1
    labels = [t.get_text() for t in with_scores.axes[0].get_legend().get_texts()]
    assert labels[:2] == ["pretrain", "svi"]  # the records' phase names, in order


def _legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_training_curves_take_any_phases_from_the_records_in_order():
    names = ["warm-up", "fit", "polish", "fit"]  # a custom recipe, one phase run twice
    history = [
        {"epoch": e, "phase": names[(e - 1) // 2], "loss": 10.0 - e, "accuracy": 0.1 * e}
        for e in range(1, 9)
    ]
    fig = training_curves_figure(history)
    ax = fig.axes[0]
    assert _legend_labels(ax)[:3] == ["warm-up", "fit", "polish"]
    curves = [
        line for line in ax.get_lines() if len(line.get_xdata()) > 0 and line.get_linestyle() == "-"
    ]
    assert len(curves) == 4  # one per run of epochs, so no line joins the two runs of "fit"
    colours = {line.get_label(): line.get_color() for line in curves if line.get_label()[0] != "_"}
    assert len(set(colours.values())) == 3  # each phase its own colour of one palette
    fit_colours = {line.get_color() for line in curves if line.get_xdata()[0] in (3, 7)}
    assert len(fit_colours) == 1  # the same phase keeps its colour
    boundaries = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert sorted(line.get_xdata()[0] for line in boundaries) == [2.5, 4.5, 6.5]
    assert "mixture start" not in " ".join(_legend_labels(ax))  # no pretrain, no start stamped


@pytest.mark.parametrize(
    ("start", "label"),
    [
        ("codes", "mixture start (t-SNE map of the codes)"),
        ("data", "mixture start (t-SNE map of the data)"),
        ("joint", "mixture start (t-SNE map of codes and data)"),
        ("umap", "mixture start (umap)"),
        ("UMAP map of codes and data", "mixture start (UMAP map of codes and data)"),
        (None, "mixture start"),
    ],
)
def test_the_mixture_start_says_where_it_came_from(start, label):
    history = [dict(r) for r in HISTORY]
    if start is not None:
        history[2]["start"] = start
    ax = training_curves_figure(history).axes[0]
    assert label in _legend_labels(ax)
    assert not any(t.startswith("mixture start (") for t in _legend_labels(ax) if t != label)
    marker = next(line for line in ax.get_lines() if line.get_label() == label)
    assert marker.get_xdata()[0] == 2.5  # between the last pretraining epoch and the next
    # the start marks that phase boundary itself: no second line hidden under it
    assert not [line for line in ax.get_lines() if line.get_linestyle() == ":"]


def test_training_curve_legends_cover_no_curve_and_accuracy_stays_visible():
    history = [
        {"epoch": e, "phase": "pretrain" if e <= 3 else "anchor" if e <= 5 else "svi",
         "loss": 50.0 / e} | ({"accuracy": 0.9, "many_to_one_accuracy": 0.9, "nmi": 0.8, "ari": 0.7} if e > 3 else {})
        for e in range(1, 12)
    ]  # fmt: skip
    fig = training_curves_figure(history)
    _assert_all_inside(fig)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        for other in fig.axes:
            assert not _overlap(legend, other.get_window_extent(renderer))
    lines = {line.get_label(): line for line in fig.axes[1].get_lines()}
    accuracy, many_to_one = lines["accuracy (one-to-one)"], lines["many-to-one accuracy"]
    # equal scores: accuracy is drawn on top, the other still shows in its own line and markers
    assert accuracy.get_zorder() > many_to_one.get_zorder()
    assert accuracy.get_linestyle() != many_to_one.get_linestyle()
    assert many_to_one.get_markersize() > accuracy.get_markersize()


def test_training_figures_for_images_with_labels(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    paths = training_figures(_model(), _images(), HISTORY, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == [
        "confusion.png",
        "latent.png",
        "reconstructions.png",
        "samples.png",
        "training_curves.png",
    ]
    for p in paths:
        assert p.parent == tmp_path / "figures"
        assert matplotlib.image.imread(p).shape[0] > 100
    assert plt.get_fignums() == before  # no pyplot figures left open


def test_training_figures_skip_what_the_data_cannot_show(tmp_path):
    paths = training_figures(_model(), _images(labels=False), [], tmp_path)
    assert sorted(p.name for p in paths) == ["latent.png", "reconstructions.png", "samples.png"]


def test_training_figures_for_tables(tmp_path):
    model = _model(image_shape=None, likelihood="gaussian")
    paths = training_figures(model, _table(), HISTORY, tmp_path)
    assert {p.name for p in paths} >= {"samples.png", "reconstructions.png", "latent.png"}


@pytest.mark.parametrize("clusters", [2, 5])
def test_table_figures_keep_their_legend_off_the_profiles(clusters):
    model, data = _model(clusters=clusters, image_shape=None, likelihood="gaussian"), _table()
    for fig in (samples_figure(model, 5, dataset=data), reconstructions_figure(model, data.x, 6)):
        _assert_all_inside(fig)
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        assert not any(_overlap(legend, ax.get_window_extent(renderer)) for ax in fig.axes)
    # every column's lowest panel names the features, also above an empty panel
    fig = samples_figure(model, 5, dataset=data)
    named = [ax for ax in fig.axes if ax.axison and ax.xaxis.get_tick_params()["labelbottom"]]
    lowest = {k for k in range(clusters) if k + min(clusters, 4) >= clusters}
    assert len(named) == len(lowest)
    assert all([t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"] for ax in named)


def test_samples_grid_has_one_row_per_cluster(tmp_path):
    small, large = _model(clusters=2), _model(clusters=6)
    h2, w2 = _pixels(samples_figure(small, 4))
    h6, w6 = _pixels(samples_figure(large, 4))
    assert h6 > h2 and abs(w6 - w2) < 0.1 * w2  # more clusters, more rows, not columns
    fig = samples_figure(large, 4, seed=1)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][0].startswith("cluster 0")
    assert len(fig.axes[0].get_yticklabels()) == 6


@pytest.mark.parametrize("per_cluster", [1, 3, 10])
@pytest.mark.parametrize(("clusters", "shape"), [(3, (8, 8)), (30, (8, 8)), (3, (28, 28))])
def test_sample_grid_labels_and_title_are_whole(per_cluster, clusters, shape):
    fig = samples_figure(_model(clusters=clusters, image_shape=shape), per_cluster, seed=0)
    _assert_all_inside(fig)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith("cluster 0") and len(labels) == clusters
    assert f"{per_cluster} per row" in fig.get_suptitle()


def test_samples_are_reproducible_with_a_seed(tmp_path):
    model = _model()
    a = save_figure(samples_figure(model, 3, seed=5), tmp_path / "a.png")
    b = save_figure(samples_figure(model, 3, seed=5), tmp_path / "b.png")
    c = save_figure(samples_figure(model, 3, seed=6), tmp_path / "c.png")
    assert np.array_equal(matplotlib.image.imread(a), matplotlib.image.imread(b))
    assert not np.array_equal(matplotlib.image.imread(a), matplotlib.image.imread(c))


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_counts_must_be_positive_integers(n):
    model = _model()
    with pytest.raises(ValueError, match="positive integer"):
        samples_figure(model, n)
    with pytest.raises(ValueError, match="positive integer"):
        reconstructions_figure(model, _images().x, n)


def test_reconstructions_refuse_data_of_the_wrong_shape():
    model = _model()
    with pytest.raises(ValueError, match=r"shape \(N, 30\)"):
        reconstructions_figure(model, np.zeros((5, 7), np.float32))
    with pytest.raises(ValueError, match=r"shape \(N, 30\)"):
        reconstructions_figure(model, np.zeros((5, 6, 5), np.float32))


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_latent_view_in_two_dimensions_for_any_latent_size(latent_dim):
    data = _images()
    fig = latent_figure(_model(latent_dim=latent_dim), data.x, data.labels)
    assert len(fig.axes) == 2  # by cluster, by label
    xs = fig.axes[0].collections[0].get_offsets()
    assert xs.shape[1] == 2
    assert len(latent_figure(_model(latent_dim=latent_dim), data.x).axes) == 1


def test_latent_view_colours_each_cluster_as_its_matched_label(monkeypatch):
    data = _images(n=120)
    model = _model(clusters=6)  # more clusters than the 4 labels: two are left unmatched
    # Clusters that follow the labels under other names, a few examples astray, and two extra
    # clusters: what an untrained model's predictions are not.
    rng = np.random.default_rng(1)
    clusters = np.array([3, 0, 5, 1])[data.labels]
    clusters[rng.choice(120, 30, replace=False)] = rng.integers(0, 6, 30)
    monkeypatch.setattr(model, "predict", lambda x: clusters[: len(x)])
    fig = latent_figure(model, data.x, data.labels)
    matched = match_clusters(data.labels, clusters, 6)
    by_name = {}
    for ax in fig.axes[:2]:
        for points in ax.collections:
            by_name[points.get_label()] = points.get_facecolor()[0]
    label_colour = {v: by_name[f"label {v}"] for v in np.unique(data.labels)}
    seen = 0
    for k, c in matched.items():
        name = next((n for n in by_name if n.startswith(f"cluster {k} =")), None)
        if name is None:  # a cluster with no points draws no scatter
            continue
        assert name == f"cluster {k} = label {c}"
        assert np.allclose(by_name[name], label_colour[c])
        seen += 1
    assert seen == 4
    # unmatched clusters: a colour no label has, so they cannot be taken for a matched one
    colours, label_colours, _ = cluster_colours_by_label(data.labels, clusters, 6)
    for k in set(range(6)) - set(matched):
        assert not any(np.allclose(colours[k], lc) for lc in label_colours)
    _assert_all_inside(fig)


@pytest.mark.parametrize("clusters", [2, 30])
def test_latent_legends_sit_beside_the_points(clusters):
    data = _images(n=200)
    fig = latent_figure(_model(clusters=clusters), data.x, data.labels)
    _assert_all_inside(fig)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert not any(_overlap(legend, other.get_window_extent(renderer)) for other in fig.axes)


def test_latent_view_refuses_labels_of_another_length():
    data = _images()
    with pytest.raises(ValueError, match="labels for"):
        latent_figure(_model(), data.x, data.labels[:-1])


@pytest.mark.parametrize(("clusters", "n_labels"), [(2, 10), (3, 10), (10, 10), (30, 10), (3, 2)])
def test_confusion_title_is_whole_and_clear_of_the_colour_bar(clusters, n_labels):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, n_labels, 500)
    predicted = (labels + rng.integers(0, 2, 500)) % clusters
    fig = confusion_figure(labels, predicted, clusters)
    _assert_all_inside(fig)
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    matrix, colour_bar = fig.axes
    assert not _overlap(title, colour_bar.get_window_extent(renderer))
    assert not _overlap(title, matrix.get_window_extent(renderer))
    # the accuracy in the title is that of the outlined, matched cells
    accuracy = float(fig.get_suptitle().split()[-1])
    from pyro_gmvae.metrics import cluster_accuracy

    assert accuracy == pytest.approx(cluster_accuracy(labels, predicted), abs=5e-4)
    assert len(matrix.patches) == min(clusters, n_labels)


def test_figures_leave_out_the_rows_without_a_label_and_say_so(monkeypatch, tmp_path):
    data = _images(n=120)
    clusters = np.array([2, 0, 1, 3])[data.labels]  # the labels under other names
    labels = data.labels.copy()
    labels[::4] = MISSING_LABEL  # 30 rows without a label
    model = _model(clusters=4)
    monkeypatch.setattr(model, "predict", lambda x: clusters[: len(x)])

    fig = confusion_figure(labels, clusters, 4)
    title = fig.get_suptitle()
    assert "matched accuracy 1.000" in title and "(30 rows without a label left out)" in title
    counts = [int(t.get_text()) for t in fig.axes[0].texts]
    assert sum(counts) == 90
    _assert_all_inside(fig)

    fig = latent_figure(model, data.x, labels)
    by_label = _legend_labels(fig.axes[1])
    assert by_label[0] == "no label (30)" and len(by_label) == 5
    assert [n for n in _legend_labels(fig.axes[0]) if n.startswith("cluster 2")] == [
        "cluster 2 = label 0"
    ]
    _assert_all_inside(fig)

    unlabelled = Dataset(
        x=data.x, labels=np.full(120, MISSING_LABEL), kind="image", image_shape=(6, 5), name="u"
    )
    paths = training_figures(model, unlabelled, [], tmp_path)
    assert sorted(p.name for p in paths) == ["latent.png", "reconstructions.png", "samples.png"]


def test_confusion_figure_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="same, nonzero length"):
        confusion_figure(np.zeros(5, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="same, nonzero length"):
        confusion_figure(np.zeros((5, 2), int), np.zeros((5, 2), int))


def _stat(name, observed, replicated, **kwargs) -> Statistic:
    observed, replicated = np.atleast_1d(observed).astype(float), np.asarray(replicated, float)
    p = two_sided_p_values(observed, replicated)
    return Statistic(name, name.replace("_", " "), "posterior", observed, replicated, p, **kwargs)


def test_cluster_proportion_figure_says_what_it_draws():
    rng = np.random.default_rng(0)
    replicated = rng.dirichlet(np.ones(3) * 50, size=100)
    within = _stat("cluster_proportions", [1 / 3] * 3, replicated, component="cluster",
                   value_label="fraction of the examples", details={"pi": np.full(3, 1 / 3)})  # fmt: skip
    fig = statistic_figure(within)
    _assert_all_inside(fig)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "fraction of the examples"
    assert ax.get_title() == f"0 of 3 clusters with p < {ALPHA}"
    drawn = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
    assert not re.search(r"\bred\b", drawn)  # no word of a red that is not drawn
    assert f"observed, p < {ALPHA}" not in _legend_labels(ax)  # nothing red to explain
    off = _stat("cluster_proportions", [0.9, 0.05, 0.05], replicated, component="cluster")
    labels = _legend_labels(statistic_figure(off).axes[0])
    assert f"observed, p < {ALPHA}" in labels and "observed" not in labels  # all three off


def test_per_example_figure_sorts_examples_and_shows_their_p_values():
    rng = np.random.default_rng(0)
    replicated = rng.normal(0.3, 0.05, size=(50, 400))
    observed = replicated[0] + np.where(np.arange(400) < 40, 0.2, 0.0)  # 40 examples off
    stat = _stat("intensity", observed, replicated, component="example")
    fig = statistic_figure(stat)
    _assert_all_inside(fig)
    band, histogram = fig.axes
    red = [c for c in band.collections if c.get_label() == f"observed, p < {ALPHA}"][0]
    assert len(red.get_offsets()) == int((stat.p_values < ALPHA).sum()) >= 40
    median = band.get_lines()[0].get_ydata()
    assert np.all(np.diff(median) >= 0)  # examples sorted by their replicated median
    assert sum(p.get_height() for p in histogram.patches) == 400  # every example's p-value


def test_scalar_figures_name_their_axes_and_the_rows_behind_them():
    rng = np.random.default_rng(0)
    stat = _stat("nearest_training_distance", 1.0, rng.normal(2, 0.1, (30, 1)),
                 value_label="median distance", detail_label="distance of one example",
                 details={"real": rng.random(20), "generated": rng.random(60)},
                 detail_names={"real": "training examples (each to its nearest other one)",
                               "generated": "generated examples"})  # fmt: skip
    fig = statistic_figure(stat)
    _assert_all_inside(fig)
    assert [ax.get_xlabel() for ax in fig.axes] == ["median distance", "distance of one example"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "training examples (each to its nearest other one)" in legend
    assert not any("unseen" in t for t in legend)


def test_image_mosaic_tiles_with_gaps():
    tiles = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    mosaic = image_mosaic(tiles)
    assert mosaic.shape == (2 * 5 - 1, 3 * 6 - 1)
    assert np.array_equal(mosaic[5:9, 6:11], tiles[1, 1])
    assert np.isnan(mosaic[4]).all() and np.isnan(mosaic[:, 5]).all()
    with pytest.raises(ValueError, match="rows, columns, H, W"):
        image_mosaic(np.zeros((3, 4, 5)))


def test_gmvae_sample_writes_the_grid(tmp_path, capsys):
    model = _model(clusters=4)
    model.save(tmp_path / "run")
    out = tmp_path / "samples.png"
    assert main(["sample", str(tmp_path / "run"), "--per-cluster", "3", "--out", str(out)]) == 0
    _assert_png(out, _pixels(samples_figure(model, 3)))
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--per-cluster", "0"], "--per-cluster must be in 1..100"),
        (["--per-cluster", "100000"], "--per-cluster must be in 1..100"),  # was killed at 23 GB
        (["--out", "x.jpg"], ".png"),
    ],
)
def test_gmvae_sample_rejects_bad_options_with_exit_2(tmp_path, capsys, args, message):
    _model().save(tmp_path / "run")
    argv = ["sample", str(tmp_path / "run"), "--out", str(tmp_path / "s.png"), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_gmvae_sample_without_a_run_exits_2(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nothing"), "--out", str(tmp_path / "s.png")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_selection_figure_marks_the_recommended_k():
    from pyro_gmvae.plots import selection_figure

    table = [
        {
            "k": k,
            "heldout_log_likelihood": -2.0 + 0.3 * min(k, 3),
            "heldout_log_likelihood_se": 0.1,
            "heldout_elbo": -2.2 + 0.3 * min(k, 3),
            "heldout_elbo_se": 0.1,
            "clusters_used": min(k, 4),
        }
        for k in (1, 2, 3, 4, 5)
    ]
    fig = selection_figure(table, 3, "the smallest K within one standard error")
    left, right = fig.axes
    labels = left.get_legend_handles_labels()[1]
    assert "recommended K = 3" in labels and "held-out ELBO" in labels
    assert list(right.lines[1].get_ydata()) == [1, 2, 3, 4, 4]  # clusters used
    assert "one standard error" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="empty"):
        selection_figure([], 3)
