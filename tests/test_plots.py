"""Figures: the files are written, are PNGs of the size asked for, and bad inputs are refused."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pyro
import pytest

from pyro_gmvae import GMVAE, ModelConfig
from pyro_gmvae.cli import main
from pyro_gmvae.data import Dataset, Scaler
from pyro_gmvae.plots import (
    DPI,
    confusion_figure,
    image_mosaic,
    latent_figure,
    reconstructions_figure,
    samples_figure,
    save_figure,
    training_curves_figure,
    training_figures,
)

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
    assert any("pretraining" in t for t in labels) and any("SVI" in t for t in labels)


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


def test_samples_grid_has_one_row_per_cluster(tmp_path):
    small, large = _model(clusters=2), _model(clusters=6)
    h2, w2 = _pixels(samples_figure(small, 4))
    h6, w6 = _pixels(samples_figure(large, 4))
    assert w2 == w6 and h6 > h2  # more clusters, more rows
    fig = samples_figure(large, 4, seed=1)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][0].startswith("cluster 0")
    assert len(fig.axes[0].get_yticklabels()) == 6


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


def test_latent_view_refuses_labels_of_another_length():
    data = _images()
    with pytest.raises(ValueError, match="labels for"):
        latent_figure(_model(), data.x, data.labels[:-1])


def test_confusion_figure_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="same, nonzero length"):
        confusion_figure(np.zeros(5, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="same, nonzero length"):
        confusion_figure(np.zeros((5, 2), int), np.zeros((5, 2), int))


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
    [(["--per-cluster", "0"], "--per-cluster must be at least 1"), (["--out", "x.jpg"], ".png")],
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
