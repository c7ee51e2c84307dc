"""Tests for pyro_gmvae.evaluate and ``gmvae evaluate``: the per-example ELBO adds up to
TraceEnum_ELBO's loss, log p(x) is bounded by it and converges to brute-force integration, and the
command prints the documented keys and refuses data of the wrong width."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_gmvae import GMVAE, ModelConfig
from pyro_gmvae.cli import main
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import MISSING_LABEL, Dataset, Scaler
from pyro_gmvae.errors import DataError
from pyro_gmvae.evaluate import (
    elbo_per_example,
    evaluate,
    format_evaluation,
    log_likelihood,
)
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.runs import EVALUATION_FILE

GUIDES = ("marginal", "enumerated")

# What ``gmvae evaluate --json`` prints: the keys plus the documented extras.
JSON_KEYS = {
    "accuracy",
    "nmi",
    "ari",
    "elbo",
    "log_likelihood",
    "n",
    "many_to_one_accuracy",
    "n_classes",
    "n_clusters",
    "num_samples",
    "cluster_sizes",
    "run_dir",
    "data",
}


def tiny_model(guide: str, n_features: int = 6, latent_dim: int = 2, clusters: int = 3) -> GMVAE:
    pyro.set_rng_seed(0)
    config = ModelConfig(
        clusters=clusters,
        latent_dim=latent_dim,
        hidden=(8,),
        guide=guide,
        likelihood="bernoulli",
        n_features=n_features,
    )
    return GMVAE(config)


def binary_data(n: int, d: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).random((n, d)) > 0.5, dtype=torch.float32)


# ----------------------------------------------------------------------------------- ELBO


@pytest.mark.parametrize("guide", GUIDES)
def test_elbo_per_example_adds_up_to_traceenum_elbo(guide):
    model, x = tiny_model(guide), binary_data(40)
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x)
    pyro.set_rng_seed(3)
    elbo = elbo_per_example(model, x)
    assert elbo.shape == (40,)
    assert torch.isfinite(elbo).all()
    assert float(elbo.sum()) == pytest.approx(-loss.item(), rel=1e-5)


@pytest.mark.parametrize("guide", GUIDES)
def test_elbo_particles_average(guide):
    model, x = tiny_model(guide), binary_data(30)
    pyro.set_rng_seed(0)
    draws = torch.stack([elbo_per_example(model, x) for _ in range(4)])
    pyro.set_rng_seed(0)
    averaged = elbo_per_example(model, x, num_particles=4)
    torch.testing.assert_close(averaged, draws.mean(0))


# ----------------------------------------------------------------------------- log p(x)


def test_log_likelihood_with_one_sample_is_the_marginal_guides_elbo():
    # With q(z|x) as proposal and one sample, log w = log p(x, z) - log q(z|x) is the marginal
    # guide's ELBO integrand, here computed by another route (model components rather than
    # enumerated traces): the two must agree in expectation. Many copies of a few examples
    # make the comparison sharp; the tolerance is four standard errors.
    model, x = tiny_model("marginal"), binary_data(5).repeat(2000, 1)
    pyro.set_rng_seed(7)
    elbo = elbo_per_example(model, x)
    log_px = log_likelihood(model, x, num_samples=1)
    stderr = math.sqrt((elbo.var() + log_px.var()) / len(x))
    assert abs(float(elbo.mean() - log_px.mean())) < 4 * stderr


@pytest.mark.parametrize("guide", GUIDES)
def test_log_likelihood_bounds_the_elbo_and_tightens_with_samples(guide):
    model, x = tiny_model(guide), binary_data(400)
    pyro.set_rng_seed(0)
    elbo = float(elbo_per_example(model, x, num_particles=5).mean())
    estimates = []
    for s in (1, 5, 50):
        pyro.set_rng_seed(0)
        estimates.append(float(log_likelihood(model, x, num_samples=s).mean()))
    assert estimates[1] > elbo
    assert estimates[0] < estimates[1] < estimates[2]
    assert estimates[2] <= 0.0  # a probability mass function of binary x


def brute_force_log_px(model: GMVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) by numerical integration over a fine grid of the 1-D z, ``(N,)``."""
    grid = torch.linspace(-25.0, 25.0, 50_001)
    with torch.no_grad():
        weights = torch.softmax(model.cluster_logits, -1)
        means, scales = model.cluster_means[:, 0], model.cluster_scales()[:, 0]
        components = torch.distributions.Normal(means[:, None], scales[:, None])
        log_pz = (weights.log()[:, None] + components.log_prob(grid)).logsumexp(0)  # (G,)
        log_px_z = model.likelihood(model.decoder(grid[:, None])).log_prob(x[:, None, :])
    return (log_pz + log_px_z).logsumexp(-1) + math.log(float(grid[1] - grid[0]))


@pytest.mark.parametrize("guide", GUIDES)
def test_log_likelihood_converges_to_numerical_integration(guide):
    model, x = tiny_model(guide, n_features=5, latent_dim=1), binary_data(10, d=5)
    with torch.no_grad():
        # A proposal wider than the posterior keeps the importance weights' variance finite,
        # so the estimate converges at the Monte Carlo rate.
        model.encoder.raw_scale.weight.zero_()
        model.encoder.raw_scale.bias.fill_(2.0)
        if model.encoder.cluster_offset is not None:  # a true mixture proposal
            model.encoder.cluster_offset.weight.copy_(torch.tensor([[-1.5], [0.0], [1.5]]))
    exact = brute_force_log_px(model, x)
    pyro.set_rng_seed(0)
    estimate = log_likelihood(model, x, num_samples=20_000, batch_size=5)
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.03)


def test_bad_sample_counts_are_refused():
    model, x = tiny_model("marginal"), binary_data(3)
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(model, x, num_samples=0)
    with pytest.raises(ValueError, match="num_particles"):
        elbo_per_example(model, x, num_particles=0)


# ------------------------------------------------------------------------------ evaluate


def as_dataset(x: torch.Tensor, labels: np.ndarray | None) -> Dataset:
    return Dataset(x=x.numpy(), labels=labels, kind="table", image_shape=None, name="tiny")


@pytest.mark.parametrize("guide", GUIDES)
def test_evaluate_scores_the_models_own_predictions(guide):
    model, x = tiny_model(guide), binary_data(60)
    labels = np.random.default_rng(0).integers(0, 2, 60)
    before = torch.get_rng_state()
    result = evaluate(model, as_dataset(x, labels), num_samples=10, seed=4)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    assert result == evaluate(model, as_dataset(x, labels), num_samples=10, seed=4)

    clusters = model.predict(x)
    for key, value in clustering_scores(labels, clusters).items():
        assert result[key] == pytest.approx(value)
    assert result["cluster_sizes"] == np.bincount(clusters, minlength=3).tolist()
    assert result["n"] == 60 and result["n_classes"] == 2 and result["n_clusters"] == 3
    assert result["log_likelihood"] > result["elbo"]
    json.dumps(result)  # serialisable as is


def test_evaluate_without_labels_reports_no_clustering_scores():
    model, x = tiny_model("marginal"), binary_data(20)
    result = evaluate(model, as_dataset(x, None), num_samples=5)
    assert result["accuracy"] is None and result["nmi"] is None and result["ari"] is None
    assert result["n_classes"] is None
    assert sum(result["cluster_sizes"]) == 20
    assert math.isfinite(result["elbo"]) and math.isfinite(result["log_likelihood"])


def test_evaluate_scores_the_rows_that_have_a_label_and_counts_the_others():
    model, x = tiny_model("marginal"), binary_data(40)
    labels = np.random.default_rng(1).integers(0, 2, 40)
    labels[::5] = MISSING_LABEL
    result = evaluate(model, as_dataset(x, labels), num_samples=5, classes=True)
    clusters, present = model.predict(x), labels != MISSING_LABEL
    assert result["rows_without_label"] == 8 and result["n"] == 40
    assert result["class_accuracy"] == pytest.approx((clusters == labels)[present].mean())
    assert result["nmi"] == pytest.approx(
        clustering_scores(labels[present], clusters[present])["nmi"]
    )
    assert "8 without a label, left out of the scores" in format_evaluation(result)

    nothing = evaluate(model, as_dataset(x, np.full(40, MISSING_LABEL)), num_samples=5)
    assert nothing["accuracy"] is None and nothing["n_classes"] is None
    assert nothing["rows_without_label"] == 40
    assert "- (no example has a label)" in format_evaluation(nothing)


def test_evaluate_refuses_data_of_another_width():
    model = tiny_model("marginal")
    with pytest.raises(DataError, match="4 features per example but the model was trained on 6"):
        evaluate(model, as_dataset(binary_data(10, d=4), None))


def test_evaluate_refuses_data_outside_the_likelihoods_support():
    model = tiny_model("marginal")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        evaluate(model, as_dataset(binary_data(10) * 3.0, None))


# ---------------------------------------------------------------------------- gmvae evaluate


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A run of ``gmvae train`` on 300 digits: tiny network, one epoch of each phase."""
    root = tmp_path_factory.mktemp("evaluate")
    digits = load_data("digits")
    np.savez(
        root / "train.npz", images=digits.x[:300].reshape(-1, 8, 8), labels=digits.labels[:300]
    )
    np.savez(
        root / "test.npz", images=digits.x[300:400].reshape(-1, 8, 8), labels=digits.labels[300:400]
    )
    np.savez(root / "wide.npz", images=np.zeros((20, 10, 10)))
    run = root / "run"
    flags = "--hidden 16 --latent-dim 2 --clusters 10 --epochs 1 --pretrain-epochs 1 --restarts 1"
    code = main(
        [
            "train",
            "--out",
            str(run),
            "--data",
            str(root / "train.npz"),
            "--no-progress",
            "--no-plots",
        ]
        + flags.split()
    )
    assert code == 0
    return root


def test_cli_evaluate_json_has_the_documented_keys(digits_run, capsys):
    run = digits_run / "run"
    files = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    code = main(["evaluate", str(run), "--data", str(digits_run / "test.npz"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == JSON_KEYS
    assert result["n"] == 100 and result["n_classes"] == 10 and result["num_samples"] == 100
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["log_likelihood"] >= result["elbo"] - 0.5
    assert sorted(p.name for p in run.iterdir()) == files  # nothing written without --save


def test_cli_evaluate_save_writes_what_it_prints(digits_run, capsys):
    run = digits_run / "run"
    capsys.readouterr()
    args = ["evaluate", str(run), "--data", str(digits_run / "test.npz"), "--num-samples", "5"]
    assert main([*args, "--json", "--save"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((run / EVALUATION_FILE).read_text()) == printed
    (run / EVALUATION_FILE).unlink()
    assert main(args) == 0  # the table for people
    table = capsys.readouterr().out
    assert f"{printed['accuracy']:.4f}" in table and "log p(x)" in table


def test_cli_evaluate_wrong_feature_count_exits_2(digits_run, capsys):
    code = main(["evaluate", str(digits_run / "run"), "--data", str(digits_run / "wide.npz")])
    assert code == 2
    err = capsys.readouterr().err
    assert "100 features per example" in err and "trained on 64" in err


def test_cli_evaluate_missing_run_exits_2(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "nothing"), "--data", "digits"])
    assert code == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_cli_evaluate_standardizes_tables_with_the_runs_scaler(tmp_path, capsys):
    rng = np.random.default_rng(0)
    table = rng.normal(5.0, 2.0, (30, 3))
    (tmp_path / "test.csv").write_text(
        "a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in table) + "\n"
    )
    model = GMVAE(
        ModelConfig(clusters=2, latent_dim=2, hidden=(8,), likelihood="gaussian", n_features=3)
    )
    run = tmp_path / "run"
    model.save(run)
    scaler = Scaler(mean=np.array([4.0, 5.0, 6.0]), std=np.array([1.0, 2.0, 3.0]))
    (run / "scaler.json").write_text(json.dumps(scaler.to_dict()))

    assert main(["evaluate", str(run), "--data", str(tmp_path / "test.csv"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = evaluate(model, load_data(tmp_path / "test.csv", scaler=scaler), seed=0)
    assert printed["elbo"] == pytest.approx(expected["elbo"])
    refitted = evaluate(model, load_data(tmp_path / "test.csv"), seed=0)
    assert printed["elbo"] != pytest.approx(refitted["elbo"])

    (tmp_path / "wide.csv").write_text("a,b\n1,2\n3,4\n")
    assert main(["evaluate", str(run), "--data", str(tmp_path / "wide.csv")]) == 2
    assert "features" in capsys.readouterr().err
