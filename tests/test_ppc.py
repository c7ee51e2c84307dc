"""Posterior predictive checks: replicates have the right shapes and conditioning, a model fitted to
data it can represent passes, and wrong models (untrained decoder, shifted data, memorised
examples) are flagged."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch

from pyro_gmvae import GMVAE, ModelConfig, TrainConfig, fit
from pyro_gmvae.cli import main
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import Dataset, Scaler
from pyro_gmvae.errors import DataError
from pyro_gmvae.ppc import (
    PPC_FILE,
    REPORT_FILE,
    posterior_predictive_checks,
    replicate,
    two_sided_p_values,
)
from pyro_gmvae.runs import write_ppc_report

SHAPE = (4, 4)


def _config(**kwargs) -> ModelConfig:
    values = dict(clusters=3, latent_dim=2, hidden=(16,), n_features=16, image_shape=SHAPE)
    return ModelConfig(**(values | kwargs))


@pytest.fixture(scope="module")
def teacher_data() -> Dataset:
    """800 binary 4x4 images drawn from a GMVAE with three well-separated clusters: data that a
    GMVAE of the same size can represent exactly."""
    pyro.set_rng_seed(0)
    teacher = GMVAE(_config())
    with torch.no_grad():
        teacher.cluster_means.copy_(torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]]))
        teacher.cluster_raw_scales.fill_(-0.5)
        for p in teacher.decoder.parameters():
            p.mul_(3.0)  # decisive pixels: clusters that look different
    x, y = teacher.sample(800, mean=False)
    return Dataset(
        x=x.astype(np.float32), labels=y, kind="image", image_shape=SHAPE, name="teacher"
    )


@pytest.fixture(scope="module")
def split(teacher_data) -> tuple[Dataset, Dataset]:
    return teacher_data.split(0.25, seed=0)


@pytest.fixture(scope="module")
def fitted(split) -> GMVAE:
    """A model fitted to the training part in a few seconds."""
    train, _ = split
    pyro.set_rng_seed(1)
    model = GMVAE(_config())
    config = TrainConfig(
        epochs=30,
        pretrain_epochs=10,
        batch_size=64,
        lr=1e-2,
        # EM, not the default spectral initialisation, which put nearly all of this data in one
        # cluster (accuracy 0.34 against 0.97)
        init="gmm",
        restarts=2,
        anchor_min_steps=320,  # as this was measured; the default is 1,920
        augment_rotation=0,
        augment_shift=0,
        seed=1,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a network this small only pays for the threads' overhead
    try:
        fit(model, train.x, config, labels=train.labels, progress=False)
    finally:
        torch.set_num_threads(threads)
    return model


@pytest.fixture(scope="module")
def report(fitted, split):
    train, heldout = split
    return posterior_predictive_checks(
        fitted, train, heldout=heldout, num_samples=50, seed=0, loglik_samples=8
    )


def _untrained_decoder(model: GMVAE) -> GMVAE:
    bad = copy.deepcopy(model)
    pyro.set_rng_seed(3)
    for layer in bad.decoder.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    return bad


# ------------------------------------------------------------------------------------ p-values
def test_two_sided_p_values():
    replicated = np.arange(100, dtype=float)[:, None].repeat(4, 1)  # 0..99 in each column
    observed = np.array([49.5, -1.0, 200.0, 10.0])
    p = two_sided_p_values(observed, replicated)
    assert p[0] == 1.0  # the middle
    assert p[1] == 0.0 and p[2] == 0.0  # beyond every replicate, on either side
    assert p[3] == pytest.approx(2 * 11 / 100)  # 11 replicates <= 10
    # a statistic reproduced exactly (a pixel that is always blank) is not extreme
    assert two_sided_p_values(np.zeros(1), np.zeros((50, 1)))[0] == 1.0
    with pytest.raises(ValueError, match=r"\(R, F\)"):
        two_sided_p_values(np.zeros(3), np.zeros((10, 4)))


# --------------------------------------------------------------------------------- replication
@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
@pytest.mark.parametrize("prior", [False, True])
def test_replicate_shapes(guide, prior):
    pyro.set_rng_seed(0)
    model = GMVAE(_config(guide=guide))
    x = torch.bernoulli(torch.full((7, 16), 0.3))
    rep = replicate(model, x, 5, prior=prior)
    assert rep["x"].shape == (5, 7, 16)
    assert rep["z"].shape == (5, 7, 2)
    assert rep["y"].shape == (5, 7) and rep["y"].dtype == torch.int64
    assert set(rep["x"].unique().tolist()) <= {0.0, 1.0}  # draws from p(x|z), not the data
    assert not torch.equal(rep["x"][0], x)
    assert 0 <= int(rep["y"].min()) and int(rep["y"].max()) < 3


def _separated(model: GMVAE) -> GMVAE:
    """Clusters so far apart that y is a function of z."""
    with torch.no_grad():
        model.cluster_means.copy_(torch.tensor([[-50.0, 0.0], [50.0, 0.0], [0.0, 50.0]]))
        model.cluster_raw_scales.fill_(-3.0)
    return model


def test_marginal_guide_replicates_draw_y_from_p_y_given_z():
    """Predictive alone would draw the model's y from p(y), ignoring z."""
    pyro.set_rng_seed(0)
    model = _separated(GMVAE(_config(guide="marginal")))
    with torch.no_grad():  # q(z|x) wide enough to reach every cluster
        model.encoder.raw_scale.bias.fill_(60.0)
    rep = replicate(model, torch.zeros(200, 16), 4)
    z = rep["z"].reshape(-1, 2)
    nearest = model.cluster_log_posterior_given_z(z).argmax(-1)
    assert len(nearest.unique()) == 3
    assert torch.equal(rep["y"].reshape(-1), nearest)


def test_prior_replicates_draw_z_from_the_drawn_cluster():
    pyro.set_rng_seed(0)
    model = _separated(GMVAE(_config()))
    rep = replicate(model, torch.zeros(300, 16), 3, prior=True)
    nearest = model.cluster_log_posterior_given_z(rep["z"].reshape(-1, 2)).argmax(-1)
    assert torch.equal(rep["y"].reshape(-1), nearest)
    assert len(rep["y"].unique()) == 3


def test_enumerated_guide_replicates_take_y_from_q_y_given_x():
    pyro.set_rng_seed(0)
    model = GMVAE(_config(guide="enumerated"))
    with torch.no_grad():
        model.cluster_encoder.net[-1].bias.copy_(torch.tensor([-30.0, 30.0, -30.0]))
    rep = replicate(model, torch.zeros(20, 16), 4)
    assert (rep["y"] == 1).all()


def test_posterior_replicates_resemble_their_own_example(fitted, split):
    train, _ = split
    x = torch.as_tensor(train.x[:200])
    post = replicate(fitted, x, 10)["x"]
    prior = replicate(fitted, x, 10, prior=True)["x"]
    own = (post != x).float().mean()
    unrelated = (prior != x).float().mean()
    assert own < 0.6 * unrelated


# ------------------------------------------------------------------------- what the checks show
def test_fitted_model_reproduces_what_it_can(report, fitted):
    for name, predictive in [
        ("intensity_mean", "posterior"),
        ("intensity_mean", "prior"),
        ("intensity_sd", "prior"),
        ("loglik", "permutation"),
    ]:
        p = report[name, predictive].p_value
        assert 0.05 < p, (name, predictive, p)
    for name in ("feature_mean", "feature_variance", "cluster_proportions"):
        assert not report[name, "prior"].flagged, name
    assert report["feature_mean", "posterior"].extreme_fraction() <= 0.25
    assert not report["nearest_training_distance"].flagged


def test_untrained_decoder_is_flagged(fitted, split):
    train, heldout = split
    bad = posterior_predictive_checks(
        _untrained_decoder(fitted), train, heldout=heldout, num_samples=30, loglik_samples=4
    )
    for key in [
        ("feature_mean", "posterior"),
        ("feature_mean", "prior"),
        ("feature_variance", "prior"),
        ("nearest_training_distance", "prior"),
    ]:
        assert bad[key].flagged, key
    # samples unlike the data, farther from it than real data: off the data, not memorised
    distance = bad["nearest_training_distance"]
    assert distance.direction() == "below" and distance.verdict == "OFF THE DATA"
    assert "no sign of memorisation" in distance.meaning()
    assert bad["feature_mean", "posterior"].extreme_fraction() > 0.5
    # train and held-out data are equally badly explained: no sign of overfitting
    assert not bad["loglik"].flagged


def test_data_shifted_after_fitting_is_flagged(fitted, split):
    train, heldout = split
    flipped = Dataset(
        x=1.0 - heldout.x, labels=None, kind="image", image_shape=SHAPE, name="flipped"
    )
    shifted = posterior_predictive_checks(fitted, train, heldout=flipped, num_samples=30)
    loglik = shifted["loglik"]
    assert loglik.flagged and loglik.direction() == "below"  # new data far less likely
    on_flipped = posterior_predictive_checks(fitted, flipped, num_samples=30)
    assert on_flipped["feature_mean", "posterior"].flagged
    assert on_flipped["feature_mean", "prior"].extreme_fraction() > 0.5


def test_memorised_training_examples_are_flagged(monkeypatch):
    """A model whose samples are copies of training examples. (Grey-level digits, not the teacher's
    binary images, many of which recur exactly in the held-out part.)"""
    train, heldout = load_data("digits").split(0.25, seed=0)
    pyro.set_rng_seed(0)
    memoriser = GMVAE(_config(n_features=64, image_shape=(8, 8)))
    rng = np.random.default_rng(0)

    def copies(n, cluster=None, *, mean=True, generator=None):
        return train.x[rng.integers(0, len(train), n)], np.zeros(n, np.int64)

    monkeypatch.setattr(memoriser, "sample", copies)
    checks = posterior_predictive_checks(memoriser, train, heldout=heldout, num_samples=10)
    distance = checks["nearest_training_distance"]
    assert distance.flagged and distance.direction() == "above"  # real data farther than samples
    assert distance.verdict == "MEMORISATION"
    assert "closer to training images than held-out images do" in distance.meaning()
    assert np.all(distance.details["generated"] == 0)
    assert np.all(distance.details["real"] > 0)


# ----------------------------------------------------------------------------- API and report
def test_checks_leave_the_random_state_and_the_model_as_they_were(fitted, split):
    train, _ = split
    state = torch.get_rng_state()
    fitted.train()
    a = posterior_predictive_checks(fitted, train.subset(np.arange(100)), num_samples=5, seed=3)
    b = posterior_predictive_checks(fitted, train.subset(np.arange(100)), num_samples=5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert fitted.training
    assert [s.p_values.tolist() for s in a.statistics] == [
        s.p_values.tolist() for s in b.statistics
    ]


def test_without_heldout_data_the_loglik_check_is_skipped_and_said_so(fitted, split):
    train, _ = split
    checks = posterior_predictive_checks(fitted, train, num_samples=5)
    assert "loglik" not in [s.name for s in checks.statistics]
    assert any("held-out" in n for n in checks.notes)
    assert "no held-out data" in checks.to_table()
    assert "--heldout-fraction" in checks.to_table()  # a flag is never split over two lines
    # the memorisation check falls back on each training example's nearest other one, and says so
    distance = checks["nearest_training_distance"]
    assert "training examples (each to its nearest other one)" in distance.title
    assert distance.detail_names["real"] == "training examples (each to its nearest other one)"
    assert "unseen" not in distance.title + " ".join(distance.detail_names.values())
    assert "none held out" in checks.to_markdown()


def test_max_examples_checks_a_random_subset_and_says_so(fitted, split):
    train, heldout = split
    checks = posterior_predictive_checks(
        fitted, train, heldout=heldout, num_samples=5, max_examples=100
    )
    assert checks.n == 100 and checks.n_heldout == 100
    assert checks["intensity", "posterior"].n_components == 100
    assert any("random 100 of the 600 training" in n for n in checks.notes)


def test_bad_inputs_raise(fitted, split):
    train, _ = split
    with pytest.raises(ValueError, match="num_samples must be at least 2"):
        posterior_predictive_checks(fitted, train, num_samples=1)
    with pytest.raises(ValueError, match="max_examples must be at least 1"):
        posterior_predictive_checks(fitted, train, max_examples=0)
    wrong = Dataset(x=np.zeros((10, 9), np.float32), labels=None, kind="image",
                    image_shape=(3, 3), name="small")  # fmt: skip
    with pytest.raises(DataError, match="9 features"):
        posterior_predictive_checks(fitted, wrong)
    outside = Dataset(x=np.full((10, 16), 2.0, np.float32), labels=None, kind="image",
                      image_shape=SHAPE, name="grey")  # fmt: skip
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        posterior_predictive_checks(fitted, train, heldout=outside)


def test_report_table_markdown_and_json(report):
    table = report.to_table()
    for s in report.statistics:
        assert f"  {s.short_title}  " in table
    row = next(line for line in table.splitlines() if line.startswith("  mean intensity: average"))
    assert row.endswith("ok")  # the posterior's, the first of its name
    d = report.to_dict()
    assert [s["verdict"] for s in d["statistics"]] == [s.verdict for s in report.statistics]
    assert json.loads(json.dumps(d)) == d
    stat = d["statistics"][0]
    assert stat["p_value"] == report.statistics[0].p_value
    assert {"observed", "replicated_mean", "replicated_q025", "p_values", "flagged"} <= set(stat)

    markdown = report.to_markdown({"loglik/permutation": "figures/ll.png"})
    assert (
        "| statistic | replicates |" in markdown
        and "![loglik/permutation](figures/ll.png)" in markdown
    )
    assert markdown.count("![") == 1  # only the figures given


def _grey_digits_checks(likelihood: str = "bernoulli", binarise: bool = False):
    """Checks of an untrained model on 8x8 digits: its replicates are coin flips."""
    data = load_data("digits").subset(np.arange(300))
    if binarise:
        data = Dataset(x=(data.x > 0.5).astype(np.float32), labels=None, kind="image",
                       image_shape=(8, 8), name="binary digits")  # fmt: skip
    pyro.set_rng_seed(0)
    model = GMVAE(_config(n_features=64, image_shape=(8, 8), likelihood=likelihood))
    return posterior_predictive_checks(model, data, num_samples=10, max_examples=200)


@pytest.fixture(scope="module")
def grey_checks():
    return _grey_digits_checks()


def test_each_misfit_says_what_it_means_and_what_to_try(grey_checks):
    misfits = grey_checks.misfits()
    assert [s for s, _ in misfits] == grey_checks.flagged() and len(misfits) >= 3
    table, markdown = grey_checks.to_table(), grey_checks.to_markdown()
    for stat, meaning in misfits:
        assert meaning and "{" not in meaning  # a sentence, its size filled in
        sentence = f"- {stat.short_title} ({stat.predictive}): {meaning}."
        assert " ".join(sentence.split()) in " ".join(table.split())  # wrapped, whole
        assert f"**{stat.title}** ({stat.predictive}): {meaning}." in markdown
    assert "## What the misfits mean" in markdown
    # grey digits under a Bernoulli likelihood: replicates vary more than the data, and the
    # sentence names the likelihood that draws grey levels
    variance = grey_checks["feature_variance", "posterior"]
    assert variance.direction() == "below"
    assert "--likelihood continuous_bernoulli" in variance.meaning()
    # fixed uniform weights: the cluster proportions' misfit points at learning them
    proportions = grey_checks["cluster_proportions"]
    if proportions.flagged:
        assert "--learn-weights" in proportions.meaning()
    assert all(s.meaning() is None for s in grey_checks.statistics if not s.flagged)


def test_binary_data_are_not_told_to_change_to_a_grey_level_likelihood():
    checks = _grey_digits_checks(binarise=True)
    assert checks.misfits()
    assert not any("continuous_bernoulli" in meaning for _, meaning in checks.misfits())


def test_the_terminal_table_fits_100_columns(report, grey_checks, fitted, split):
    train, _ = split
    without_heldout = posterior_predictive_checks(fitted, train, num_samples=5, max_examples=50)
    for checks in (report, grey_checks, without_heldout):
        table = checks.to_table()
        assert max(len(line) for line in table.splitlines()) <= 100, table
        assert "verdict" in table.splitlines()[0]


def test_write_ppc_report_writes_the_report_json_and_one_figure_per_statistic(report, tmp_path):
    paths = write_ppc_report(report, tmp_path / "out")
    assert paths[:2] == [tmp_path / "out" / REPORT_FILE, tmp_path / "out" / PPC_FILE]
    assert len(paths) == 2 + len(report.statistics)
    assert all(p.exists() for p in paths)
    assert json.loads(paths[1].read_text()) == report.to_dict()
    leftovers = [p.name for p in (tmp_path / "out").rglob(".*.tmp")]
    assert not leftovers  # every file written atomically, no temporary file left


def test_ppc_imports_without_the_figures():
    """Checks come before figures: ppc must not import plots (plots may import ppc)."""
    code = "import sys, pyro_gmvae.ppc; print('pyro_gmvae.plots' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_tables_get_per_feature_checks():
    pyro.set_rng_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    scaler = Scaler.fit(x)
    data = Dataset(x=scaler.transform(x), labels=None, kind="table", image_shape=None,
                   name="table", scaler=scaler)  # fmt: skip
    model = GMVAE(ModelConfig(clusters=2, latent_dim=2, hidden=(8,), likelihood="gaussian",
                              n_features=5))  # fmt: skip
    checks = posterior_predictive_checks(model, data, num_samples=10)
    assert checks["feature_mean"].component == "feature"
    assert checks["feature_mean"].n_components == 5
    assert "mean value per example" in checks.statistics[0].title
    table = checks.to_table()
    assert "per-feature mean" in table and "pixel" not in table
    assert max(len(line) for line in table.splitlines()) <= 100, table


# ---------------------------------------------------------------------------------------- CLI
def test_gmvae_ppc_end_to_end(fitted, teacher_data, tmp_path, capsys):
    run = tmp_path / "run"
    fitted.save(run)
    np.save(tmp_path / "x.npy", teacher_data.x)
    out = tmp_path / "ppc"
    argv = ["ppc", str(run), "--data", str(tmp_path / "x.npy"), "--out", str(out)]
    argv += ["--num-samples", "10", "--heldout-fraction", "0.25", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out log p(x)" in printed and "p-value" in printed
    saved = json.loads((out / PPC_FILE).read_text())
    assert saved["n_heldout"] == 200 and saved["n"] == 600 and saved["num_samples"] == 10
    # write_ppc_report: one figure per statistic, each linked from report.md
    markdown = (out / REPORT_FILE).read_text()
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) == len(saved["statistics"])
    for path in figures:
        assert path.stat().st_size > 1000
        assert f"](figures/{path.name})" in markdown


def test_gmvae_ppc_rejects_bad_options(fitted, tmp_path, capsys):
    fitted.save(tmp_path / "run")
    base = ["ppc", str(tmp_path / "run"), "--data", "digits", "--out", str(tmp_path / "o")]
    assert main([*base, "--num-samples", "1"]) == 2
    assert "--num-samples must be at least 2" in capsys.readouterr().err
    assert main(base) == 2  # 8x8 digits for a model of 4x4 images
    assert "features" in capsys.readouterr().err
