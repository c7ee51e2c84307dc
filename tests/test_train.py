"""Training: the loss falls and separable clusters are found; what a run directory holds."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from helpers import blobs, small_model, small_train

from pyro_gmvae import GMVAE, RunConfig, TrainConfig, clustering_scores, fit
from pyro_gmvae.checkpoints import load_checkpoint
from pyro_gmvae.config import DataConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import Scaler
from pyro_gmvae.errors import CheckpointError, ConfigError, RunDirectoryError
from pyro_gmvae.runs import read_metrics, train_run
from pyro_gmvae.start import Start
from pyro_gmvae.train import (
    SVI,
    Anchor,
    Batch,
    MixtureStart,
    Pretrain,
    Recipe,
    Trainer,
    augment_images,
    default_recipe,
)

SCORE_KEYS = {"accuracy", "many_to_one_accuracy", "nmi", "ari"}
RECORD_KEYS = {"epoch", "phase", "loss", "seconds"}


@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fit_lowers_the_loss_and_recovers_separated_clusters(guide, likelihood):
    x, labels = blobs()
    if likelihood == "gaussian":
        x = (x - x.mean(0)) / x.std(0)
    pyro.set_rng_seed(0)  # the initial weights; fit seeds everything after
    model = GMVAE(small_model(guide=guide, likelihood=likelihood, n_features=x.shape[1]))
    history = fit(
        model,
        x,
        small_train(epochs=10, pretrain_epochs=8, anchor_epochs=2),
        labels=labels,
        progress=False,
    )

    assert [r["epoch"] for r in history] == list(range(1, 21))
    assert [r["phase"] for r in history] == ["pretrain"] * 8 + ["anchor"] * 2 + ["svi"] * 10
    pretrain = [r["loss"] for r in history if r["phase"] == "pretrain"]
    svi = [r["loss"] for r in history if r["phase"] == "svi"]
    assert pretrain[-1] < pretrain[0] - 1.0
    assert svi[-1] < svi[0] - 1.0
    assert all(np.isfinite(svi))
    # Labels are only used for scoring: the fitted clusters match them up to renaming.
    assert clustering_scores(labels, model.predict(x))["accuracy"] > 0.95
    assert history[-1]["accuracy"] > 0.95


def test_the_start_epoch_records_which_map_the_start_came_from():
    x, labels = blobs(n=150)
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(n_features=x.shape[1]))
    config = small_train(epochs=1, pretrain_epochs=2, init="tsne", tsne_perplexity=20.0)
    history = fit(model, x, config, labels=labels, progress=False)
    started = [r for r in history if "start" in r]
    assert [r["epoch"] for r in started] == [3]  # the first epoch after pretraining
    assert started[0]["start"] in ("codes", "data")
    assert set(started[0]["start_scores"]) == {"codes", "data"}
    # A start that compares no maps is named by its name, for the record and the figures.
    history = fit(model, x, small_train(epochs=1, pretrain_epochs=2, init="gmm"), progress=False)
    assert [(r["epoch"], r["start"]) for r in history if "start" in r] == [(3, "gmm")]
    assert not any("start_scores" in r for r in history)


@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
def test_anchor_epochs_hold_each_example_at_its_start_cluster(guide):
    """Given a start that cuts the data differently from the mixture the codes suggest, the
    anchor epochs (the ELBO given y) move the codes until the prior's p(y|z) agrees with it.
    The start is a function of the test's own, and the recipe is changed through its public
    API: an action after the start measures the agreement before the anchor epochs.

    The agreement moves by a few points from one epoch to the next (0.90-0.98 measured), so
    the median of the last five epochs is compared with the agreement right after the start
    (about 0.92: the prior's moments come from the start's clusters)."""
    x, labels = blobs()
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(n_features=x.shape[1], guide=guide))
    # Relabel: blob 0 split in two halves by the first feature, blobs 1 and 2 merged.
    split = np.where(x[:, 0] > np.median(x[labels == 0, 0]), 0, 1)
    start = torch.as_tensor(np.where(labels == 0, split, 2))
    xt = torch.as_tensor(x)

    def relabelled(codes, data, n_clusters, config, uniform) -> Start:
        return Start(np.eye(n_clusters)[start])

    def agreement() -> float:
        with torch.no_grad():  # q(z|x) or q(z|x, y=start), then the prior's most probable y
            loc = model.encoder(xt, start)[0] if guide == "enumerated" else model.encoder(xt)[0]
            found = model.cluster_log_posterior_given_z(loc).argmax(-1) == start
            return float(found.float().mean())

    def before_anchoring(trainer: Trainer) -> None:
        assert torch.equal(trainer.assignments, start)
        measured.append(agreement())

    measured: list[float] = []
    config = small_train(epochs=0, pretrain_epochs=8)
    anchor = Anchor(12, beta=10.0, on_begin=[MixtureStart(init=relabelled), before_anchoring])
    history = fit(
        model,
        x,
        config,
        recipe=default_recipe(config).replace("anchor", anchor),
        progress=False,
        on_epoch=lambda record: record["phase"] == "anchor" and measured.append(agreement()),
    )
    assert [r["phase"] for r in history] == ["pretrain"] * 8 + ["anchor"] * 12
    assert np.median(measured[-5:]) > max(0.93, measured[0])


def test_fit_is_reproducible_with_a_seed():
    x, labels = blobs(n=120)
    predictions, losses = [], []
    for _ in range(2):
        pyro.set_rng_seed(0)  # the initial weights; fit seeds everything after
        model = GMVAE(small_model(n_features=x.shape[1]))
        history = fit(model, x, small_train(epochs=3, pretrain_epochs=2), progress=False)
        predictions.append(model.predict_proba(x))
        losses.append([r["loss"] for r in history])
    assert losses[0] == losses[1]
    np.testing.assert_array_equal(predictions[0], predictions[1])


# ----------------------------------------------------------------------------- run directories
@pytest.fixture
def table_file(tmp_path):
    """Blobs as a labelled .npz table (12 features: not square, so loaded as a table)."""
    x, labels = blobs(n=150, d=12)
    path = tmp_path / "blobs.npz"
    np.savez(path, X=x * 10.0 - 3.0, y=labels)
    return path


def table_run_config(path, **train) -> RunConfig:
    return RunConfig(
        data=DataConfig(data=str(path)),
        model=small_model(likelihood="gaussian"),
        train=small_train(**({"epochs": 3, "pretrain_epochs": 2, "checkpoint_every": 2} | train)),
    )


def test_run_directory_contents(table_file, tmp_path):
    config = table_run_config(table_file)
    expected = copy.deepcopy(config)
    expected.model.n_features = 12
    expected.model.network = "mlp"  # auto, resolved from the data (a table) and saved
    expected.model.guide = "enumerated"  # auto, resolved: no labels are known
    out = tmp_path / "run"
    result = train_run(config, out, progress=False, plots=False)

    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "scaler.json",
    }
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert RunConfig.load(out / "config.json") == expected

    records = read_metrics(out)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    first_after_pretraining = records[config.train.pretrain_epochs]
    assert first_after_pretraining["start"] == config.train.init  # the start is named
    assert first_after_pretraining["start_seconds"] > 0  # and timed
    for r in records:
        keys = RECORD_KEYS | (SCORE_KEYS if r["phase"] == "svi" else set())
        assert set(r) - {"start", "start_seconds"} == keys, r
    assert result["epochs"] == 5
    assert result["loss"] == records[-1]["loss"]
    assert set(result["train"]) == SCORE_KEYS

    # The scaler in the run standardizes the raw data exactly as training did.
    scaler = Scaler.from_dict(json.loads((out / "scaler.json").read_text()))
    dataset = load_data(str(table_file))
    raw = np.load(table_file)["X"]
    np.testing.assert_allclose(scaler.transform(raw), dataset.x, rtol=1e-6)

    # The checkpoint alone rebuilds the model, which predicts what training reported.
    model = GMVAE.load(out)
    assert model.config == expected.model
    scores = clustering_scores(dataset.labels, model.predict(dataset.x))
    assert scores == result["train"]
    state = load_checkpoint(out)
    assert state["epoch"] == 5
    assert RunConfig.from_dict(json.loads(state["config"])) == expected


def test_image_run_writes_no_scaler(tmp_path):
    x, labels = blobs(n=120, d=16)
    path = tmp_path / "images.npz"
    np.savez(path, images=x.reshape(-1, 4, 4), labels=labels)
    config = RunConfig(
        data=DataConfig(data=str(path)),
        model=small_model(),
        train=small_train(epochs=1, pretrain_epochs=1),
    )
    train_run(config, tmp_path / "run", progress=False, plots=False)
    saved = RunConfig.load(tmp_path / "run" / "config.json")
    assert saved.model.image_shape == (4, 4)
    assert saved.model.n_features == 16
    assert not (tmp_path / "run" / "scaler.json").exists()


def test_existing_run_directory_is_never_overwritten_silently(table_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="--resume.*--force"):
        train_run(table_run_config(table_file), out, progress=False, plots=False)
    # --force only starts over a directory that is a run (has config.json).
    with pytest.raises(RunDirectoryError, match="not a pyro_gmvae run"):
        train_run(table_run_config(table_file), out, force=True, progress=False, plots=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_force_starts_a_run_over(table_file, tmp_path):
    out = tmp_path / "run"
    train_run(table_run_config(table_file), out, progress=False, plots=False)
    with pytest.raises(RunDirectoryError):
        train_run(table_run_config(table_file), out, progress=False, plots=False)
    result = train_run(
        table_run_config(table_file, epochs=1), out, force=True, progress=False, plots=False
    )
    assert result["epochs"] == 3
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert RunConfig.load(out / "config.json").train.epochs == 1


def test_resume_needs_a_checkpoint(tmp_path, table_file):
    with pytest.raises(RunDirectoryError, match="no checkpoint.pt"):
        train_run(
            table_run_config(table_file),
            tmp_path / "empty",
            resume=True,
            progress=False,
            plots=False,
        )


def test_table_with_image_likelihood_is_refused(table_file, tmp_path):
    from pyro_gmvae import DataError

    config = table_run_config(table_file)
    config.model.likelihood = "bernoulli"
    with pytest.raises(DataError, match="--likelihood gaussian"):
        train_run(config, tmp_path / "run", progress=False, plots=False)


def test_bad_data_creates_nothing_and_leaves_a_forced_run_whole(table_file, tmp_path):
    from pyro_gmvae import DataError

    config = table_run_config(table_file)
    config.data.data = str(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="no such file"):
        train_run(config, tmp_path / "new", progress=False, plots=False)
    assert not (tmp_path / "new").exists()

    out = tmp_path / "run"
    train_run(table_run_config(table_file), out, progress=False, plots=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(DataError):
        train_run(config, out, force=True, progress=False, plots=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_resume_records_the_new_epoch_count(table_file, tmp_path):
    out = tmp_path / "run"
    train_run(table_run_config(table_file, epochs=1), out, progress=False, plots=False)
    train_run(table_run_config(table_file, epochs=2), out, resume=True, progress=False, plots=False)
    assert RunConfig.load(out / "config.json").train.epochs == 2
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3, 4]


# --------------------------------------------------------------------------------- real digits
@pytest.mark.slow
def test_cli_trains_on_mnist8k_to_well_above_chance(mnist8k_path, tmp_path, capsys):
    from pyro_gmvae.cli import main

    out = tmp_path / "mnist"
    argv = [
        "train",
        "--data",
        str(mnist8k_path),
        "--clusters",
        "10",
        "--out",
        str(out),
        "--hidden",
        "256",
        "64",
        "--latent-dim",
        "10",
        "--pretrain-epochs",
        "5",
        "--epochs",
        "4",
        "--batch-size",
        "128",
        "--lr",
        "2e-3",
        "--anchor-epochs",
        "2",
        "--anchor-min-steps",  # as this was measured; the default is 1,920
        "320",
        "--restarts",
        "2",
        "--beta",
        "1",
        "--augment-rotation",
        "0",
        "--augment-shift",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--no-plots",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    # Chance is about 0.1 for ten balanced digits. This short run (t-SNE start, 2 anchor epochs)
    # reached 0.61 when written; with the old GMM start it reached 0.52.
    assert result["train"]["accuracy"] > 0.5
    assert read_metrics(out)[-1]["accuracy"] == pytest.approx(result["train"]["accuracy"])


def test_a_start_of_the_wrong_shape_is_refused_naming_the_shape_expected():
    x, _ = blobs(n=60)
    trainer = Trainer(GMVAE(small_model(n_features=x.shape[1])), x, small_train(), progress=False)
    with pytest.raises(ValueError, match=r"shape \(60, 2\).*\(60, 3\)"):
        trainer.start_mixture(np.full((60, 2), 0.5))
    assert trainer.assignments is None


def test_the_readme_prints_the_default_recipe_as_it_is():
    """README's "How training runs" shows ``print(default_recipe(TrainConfig()))``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = readme.split("### How training runs", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert shown.strip() == repr(default_recipe(TrainConfig())).strip()


def test_a_recipe_is_changed_through_its_methods_and_refuses_what_cannot_run():
    config = small_train(pretrain_epochs=2, anchor_epochs=1, epochs=3)
    recipe = default_recipe(config)
    assert recipe.names == ["pretrain", "anchor", "svi"] and recipe.total_epochs == 6
    longer = recipe.insert(SVI(4, name="fine", lr=1e-4), after="svi").without("anchor")
    assert longer.names == ["pretrain", "svi", "fine"] and longer.total_epochs == 9
    assert recipe.names == ["pretrain", "anchor", "svi"]  # a new recipe; the old one is as it was
    assert longer.locate(0) == (0, 0) and longer.locate(2) == (1, 0) and longer.locate(8) == (2, 3)
    assert longer["fine"].learning_rate(1e-3, 0) == 1e-4
    assert recipe["svi"].learning_rate(1e-3, 25) == pytest.approx(1e-3 * 0.9**2)
    with pytest.raises(ConfigError, match="unique"):
        recipe.insert(SVI(1))
    with pytest.raises(KeyError, match="no phase named 'nope'"):
        recipe.replace("nope", SVI(1))
    with pytest.raises(ConfigError, match="epochs must be >= 0"):
        SVI(-1)


def test_a_phase_of_at_most_so_many_steps_gets_fewer_epochs_on_more_data():
    """The default schedule is 300/60/20 epochs on 8,000 rows (32 batches of 256), and on 8x the
    rows about the same number of steps, not 8x; on small data the anchor still runs its 1,920
    steps (min_steps), rounded up to whole epochs."""
    config = TrainConfig()
    recipe = default_recipe(config)
    assert recipe.lengths(math.ceil(8000 / 256)) == [300, 60, 20]
    assert recipe.lengths(math.ceil(6400 / 256)) == [300, 77, 20]  # 80% of 8,000: 1,925 steps
    assert recipe.lengths(math.ceil(1797 / 256)) == [300, 240, 20]  # the anchor's 1,920 steps
    assert recipe.lengths(math.ceil(569 / 256)) == [300, 640, 20]
    assert recipe.lengths(math.ceil(150 / 256)) == [300, 1920, 20]  # 150 rows: one batch
    assert recipe.lengths(math.ceil(64000 / 256)) == [38, 8, 3]  # 9500, 2000, 750 steps
    assert recipe.lengths(10**6) == [1, 1, 1]  # at least one pass each
    assert Pretrain(0, max_steps=10).length(1) == 0  # 0 epochs still skips the phase
    assert default_recipe(TrainConfig(pretrain_steps=0)).lengths(10**6)[0] == 300  # 0: no limit
    # With labels and the consistency term pretraining is consistency_pretrain_factor as long,
    # for images only: tables have no term to learn longer from.
    labelled = TrainConfig(labels_known=100, pretrain_epochs=150, pretrain_steps=4800)
    labelled = dataclasses.replace(labelled, consistency_pretrain_factor=2.0)
    assert default_recipe(labelled).lengths(32)[0] == 300  # 9600 steps
    assert default_recipe(labelled).lengths(250)[0] == 38  # 9600 steps on 64,000 rows
    assert default_recipe(labelled, images=False).lengths(32)[0] == 150
    off = dataclasses.replace(labelled, consistency_weight=0.0)
    assert default_recipe(off).lengths(32)[0] == 150
    assert default_recipe(TrainConfig(labels_known=100)).lengths(32)[0] == 300  # factor 1
    short = TrainConfig(labels_known=100, pretrain_epochs=1, consistency_pretrain_factor=0.1)
    assert default_recipe(short).lengths(32)[0] == 1  # never 0: a factor does not skip it
    unlimited = TrainConfig(labels_known=100, pretrain_steps=0, consistency_pretrain_factor=2.0)
    assert default_recipe(unlimited).lengths(10**6)[0] == 600  # 0 steps stays no limit
    with pytest.raises(ConfigError, match="max_steps must be at least 1"):
        SVI(3, max_steps=0)
    assert SVI(3, min_steps=25).length(10) == 3 and SVI(3, min_steps=25).length(4) == 7
    with pytest.raises(ConfigError, match="min_steps 50 is more than max_steps 40"):
        SVI(3, min_steps=50, max_steps=40)
    with pytest.raises(ConfigError, match="--anchor-min-steps 2000 is more than --anchor-steps"):
        TrainConfig(anchor_min_steps=2000).validate()


def test_a_shortened_phase_keeps_the_shape_of_its_learning_rate_schedule():
    phase = SVI(20, lr_decay=0.5, max_steps=40)  # 10 batches an epoch: 4 epochs, not 20
    assert phase.length(10) == 4
    rates = [phase.learning_rate(1.0, e, 4) for e in range(4)]
    assert rates == pytest.approx([1.0, 1.0, 0.5, 0.5])  # halved half way, as over 20 epochs
    assert [phase.learning_rate(1.0, e) for e in (9, 10, 19)] == pytest.approx([1.0, 0.5, 0.5])


def test_the_trainer_runs_as_many_steps_as_the_capped_recipe_says_and_resumes_by_them(tmp_path):
    x, _ = blobs(n=100)
    config = small_train(batch_size=10, checkpoint_every=1)  # 10 batches an epoch
    recipe = Recipe([Pretrain(6, max_steps=30), SVI(5, max_steps=14)])  # 3 and 1 epochs
    steps = []
    model = GMVAE(small_model(n_features=x.shape[1]))
    trainer = Trainer(model, x, config, recipe=recipe, progress=False, run_dir=tmp_path)
    trainer.on_batch = lambda t: steps.append((t.epoch, t.batch))
    history = trainer.run()
    assert len(steps) == 40 and [r["phase"] for r in history] == ["pretrain"] * 3 + ["svi"]
    # A checkpoint records the lengths it ran; the same recipe on data of another size (other
    # lengths) is refused on resume rather than run on a different schedule.
    other = Trainer(
        GMVAE(small_model(n_features=x.shape[1])),
        np.concatenate([x, x]),
        config,
        recipe=recipe,
        progress=False,
        run_dir=tmp_path,
    )
    with pytest.raises(CheckpointError, match=r"\('pretrain', 3\)"):
        other.resume()


def test_an_anchor_phase_without_a_start_says_how_to_give_it_one():
    x, _ = blobs(n=60)
    model = GMVAE(small_model(n_features=x.shape[1]))
    trainer = Trainer(model, x, small_train(), recipe=Recipe([Anchor(1)]), progress=False)
    with pytest.raises(RuntimeError, match="on_begin=\\[MixtureStart\\(\\)\\]"):
        trainer.run()


def test_fit_and_gmvae_train_seed_at_the_same_moment(tmp_path):
    """The same seed gives the same starting weights and the same trained model from fit as from
    train_run, when the model is built after pyro.set_rng_seed(seed)."""
    x, _ = blobs(n=90)
    data = tmp_path / "blobs.npy"
    np.save(data, x)
    train = small_train(epochs=2, pretrain_epochs=2, anchor_epochs=1, seed=7)
    model_config = small_model(n_features=x.shape[1], image_shape=None)
    config = RunConfig(
        data=DataConfig(data=str(data), kind="table"), model=model_config, train=train
    )
    config.model.likelihood = "gaussian"
    run = train_run(copy.deepcopy(config), tmp_path / "run", progress=False, plots=False)
    pyro.set_rng_seed(7)
    model = GMVAE(copy.deepcopy(config.model))
    standardized = load_data(str(data), kind="table").x
    history = fit(model, standardized, train, progress=False)
    trained = GMVAE.load(tmp_path / "run")
    assert history[-1]["loss"] == pytest.approx(run["loss"], rel=1e-6)
    for name, value in trained.state_dict().items():
        assert torch.allclose(model.state_dict()[name], value, atol=1e-6), name


def test_the_progress_bar_counts_steps_across_phases_and_shows_the_start(capsys):
    """The bar stood still at 150/200 epochs for the minutes of the start, then showed an ETA
    of 29 minutes with 3 left (issue 15, #4): it now counts steps of every phase, names the
    start with its elapsed seconds while it runs, and keeps that time out of its rate."""
    import time

    x, _ = blobs(n=120)

    def slow_start(codes, data, n_clusters, config, uniform) -> Start:
        time.sleep(2.5)
        return Start(np.eye(n_clusters)[np.arange(len(codes)) % n_clusters])

    config = small_train(
        epochs=2, pretrain_epochs=2, anchor_epochs=1, batch_size=60, start_rows=100
    )
    recipe = default_recipe(config).replace(
        "anchor", Anchor(1, on_begin=[MixtureStart(init=slow_start)], new_optimizer=True)
    )
    model = GMVAE(small_model(n_features=x.shape[1]))
    trainer = Trainer(model, x, config, recipe=recipe, progress=True)
    trainer.run()
    err = capsys.readouterr().err
    assert "mixture start (slow_start on 100 of 120 rows)" in err  # what it clusters
    # its elapsed time ticks
    assert re.search(r"mixture start \(slow_start on 100 of 120 rows\) [12]s", err), err
    assert "10/10" in err  # (2 + 1 + 2 epochs) x 2 batches, one bar for the whole run
    assert "phase=svi" in err


@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
@pytest.mark.parametrize(
    "phase",
    [SVI(1, beta=2.0), Anchor(1, beta=3.0), Anchor(1, beta=3.0, classify=10.0)],
    ids=["svi", "anchor", "anchor-classify"],
)
def test_a_batch_of_the_full_size_gives_the_same_per_example_loss(guide, phase):
    """Batch(size=N): the data plate is of size N with the rows as its subsample, the loss
    divided by N, as each process of data-parallel training computes it. Pyro scales every site
    by N / B, so the per-example loss is the single-process one to float rounding."""
    x, _ = blobs(n=60)
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(guide=guide, n_features=x.shape[1]))
    trainer = Trainer(model, x, small_train(), progress=False)
    trainer.start_mixture(np.eye(3)[np.arange(60) % 3], cluster_encoder_epochs=0)
    idx = torch.tensor([3, 7, 11, 20, 41])
    batch = trainer.minibatch(idx)
    pyro.set_rng_seed(1)
    alone = phase.loss(trainer, batch)
    pyro.set_rng_seed(1)  # the explicit subsample draws nothing: the same z samples follow
    sized = phase.loss(trainer, Batch(idx, batch.x, size=len(x)))
    assert batch.plate == {} and batch.examples == 5
    torch.testing.assert_close(sized, alone, rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps, epochs", [(12, 2), (9, 2), (1, 1), (0, 5), (1000, 5)])
def test_the_fit_of_q_y_to_the_start_is_capped_in_steps_as_a_phase_is(steps, epochs):
    """cluster_encoder_steps caps the epochs of q(y|x)'s fit to the start as max_steps caps a
    phase: rounded to whole epochs, at least one, 0 no limit; counted here as the cluster
    encoder's training passes (6 batches an epoch)."""
    x, _ = blobs(n=60)
    model = GMVAE(small_model(guide="enumerated", n_features=x.shape[1]))
    config = small_train(batch_size=10, cluster_encoder_steps=steps)
    trainer = Trainer(model, x, config, progress=False)
    passes = []
    model.cluster_encoder.register_forward_hook(
        lambda module, args, out: passes.append(1) if torch.is_grad_enabled() else None
    )
    trainer.start_mixture(np.eye(3)[np.arange(60) % 3], cluster_encoder_epochs=5)
    assert len(passes) == 6 * epochs


@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
def test_the_anchor_classification_term_is_minus_alpha_log_q_of_the_start_cluster(guide):
    """Anchor(classify=alpha) adds -alpha * mean log q(y_start|x) to the ELBO given y: the
    difference from the same batch's loss without the term, with the same z draws, is that
    mean computed here from the model's own q(y|x), and it is not zero."""
    x, _ = blobs(n=60)
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(guide=guide, n_features=x.shape[1]))
    trainer = Trainer(model, x, small_train(), progress=False)
    start = np.arange(60) % 3
    trainer.start_mixture(np.eye(3)[start], cluster_encoder_epochs=0)
    batch = trainer.minibatch(torch.tensor([3, 7, 11, 20, 41]))
    losses = []
    for classify in (0.0, 10.0):
        pyro.set_rng_seed(1)
        losses.append(Anchor(1, classify=classify).loss(trainer, batch))
    log_q = model.cluster_log_proba(batch.seen)[torch.arange(5), torch.as_tensor(start[batch.idx])]
    torch.testing.assert_close(losses[1] - losses[0], -10.0 * log_q.mean(), rtol=1e-5, atol=1e-5)
    assert abs(float(log_q.detach().mean())) > 0.01


def test_the_data_plate_takes_size_and_subsample_together():
    x, _ = blobs(n=10)
    model = GMVAE(small_model(n_features=x.shape[1]))
    with pytest.raises(ValueError, match="both"):
        model.model(torch.as_tensor(x), size=10)
    with pytest.raises(ValueError, match="3 subsample indices for 10 rows"):
        model.model(torch.as_tensor(x), size=20, subsample=torch.arange(3))


def test_augment_images_zooms_only_when_scale_is_given():
    image = torch.zeros(28, 28)
    image[10:18, 10:18] = 1.0  # an 8x8 square at the centre
    x = image.reshape(1, -1).repeat(64, 1)
    torch.manual_seed(0)
    still = augment_images(x, (28, 28), rotation=0.0, shift=0.0)
    torch.testing.assert_close(still, x)  # no move: the images come back as they were
    torch.manual_seed(0)
    zoomed = augment_images(x, (28, 28), rotation=0.0, shift=0.0, scale=0.3)
    ratio = zoomed.sum(1) / x.sum(1)  # the square's area, 64 z^2 for a zoom z
    assert ratio.min() >= 0.7**2 - 0.1 and ratio.max() <= 1.3**2 + 0.1, ratio
    assert ratio.min() < 0.8 and ratio.max() > 1.2, ratio  # zooms both ways, not one size
