"""Semi-supervised GMVAE: y observed on labelled rows, enumerated on the others.

The labelled rows' ELBO equals the hand computation with y fixed, a mixed batch's the labelled
part plus the unlabelled part, the auxiliary term adds exactly ``-alpha * log q(y|x)``, and the
shapes under enumeration are those of two sibling plates.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyro
import pytest
import torch
from helpers import blobs, small_model, small_train
from pyro import poutine
from pyro.infer import JitTraceEnum_ELBO, TraceEnum_ELBO
from test_model import D, K, N, Z, tiny_data, tiny_model

from pyro_gmvae import (
    GMVAE,
    Anchor,
    ConfigError,
    DataError,
    MixtureStart,
    RunConfig,
    Start,
    Trainer,
    default_recipe,
    fit,
)
from pyro_gmvae.cli import main
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import MISSING_LABEL, labelled_rows
from pyro_gmvae.metrics import cluster_accuracy
from pyro_gmvae.reference import hand_loss
from pyro_gmvae.runs import load_run_data, open_run, split_heldout
from pyro_gmvae.start import EXPERT_FLOOR, tie_to_classes
from pyro_gmvae.train import Pretrain, strongly_moved

#: Which of the N = 5 rows are labelled, and the classes of all rows (ignored where unknown).
KNOWN = torch.tensor([True, False, True, True, False])
Y_OBS = torch.tensor([2, -1, 0, 2, -1])


def pyro_loss(model, x, seed: int = 3, **kwargs) -> torch.Tensor:
    """``TraceEnum_ELBO``'s negative ELBO (a sum over rows) after seeding with ``seed``."""
    pyro.set_rng_seed(seed)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    return elbo.differentiable_loss(model.model, model.guide, x, **kwargs)


def oracle(model, x, seed: int = 3, **kwargs) -> torch.Tensor:
    """``hand_loss`` summed over rows, after seeding with ``seed`` (so it draws the same z)."""
    pyro.set_rng_seed(seed)
    return len(x) * hand_loss(model, x, **kwargs)


@pytest.fixture(params=["enumerated", "marginal"])
def guide(request) -> str:
    return request.param


#: A batch of labelled rows alone enumerates nothing, which TraceEnum_ELBO remarks on.
all_labelled = pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")


@all_labelled
def test_labelled_rows_elbo_equals_hand_computation_with_y_fixed(guide):
    model = tiny_model(guide)
    x = tiny_data("bernoulli")
    y = torch.tensor([2, 0, 1, 2, 1])
    loss = pyro_loss(model, x, y_obs=y, known=torch.ones(N, dtype=torch.bool))
    expected = oracle(model, x, y=y)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-10)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    for g, e in zip(grads, expected_grads, strict=True):
        if g is None or e is None:  # e.g. the cluster encoder, unused on labelled rows
            assert g is None or not g.any()
            assert e is None or not e.any()
        else:
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


@all_labelled
def test_labelled_elbo_depends_on_the_given_classes(guide):
    """The test above can fail: another y gives another value."""
    model = tiny_model(guide)
    x = tiny_data("bernoulli")
    y = torch.tensor([2, 0, 1, 2, 1])
    known = torch.ones(N, dtype=torch.bool)
    loss = pyro_loss(model, x, y_obs=y, known=known)
    other = pyro_loss(model, x, y_obs=(y + 1) % K, known=known)
    assert abs(float((loss - other).detach())) > 1e-3


def test_mixed_batch_is_labelled_part_plus_unlabelled_part(guide):
    model = tiny_model(guide)
    x = tiny_data("bernoulli")
    loss = pyro_loss(model, x, y_obs=Y_OBS, known=KNOWN)
    # One seed for both parts, drawn in the guide's order: the unlabelled plate, then the other.
    pyro.set_rng_seed(3)
    unlabelled = len(x[~KNOWN]) * hand_loss(model, x[~KNOWN])
    labelled = len(x[KNOWN]) * hand_loss(model, x[KNOWN], y=Y_OBS[KNOWN])
    torch.testing.assert_close(loss, unlabelled + labelled, rtol=1e-12, atol=1e-10)


def test_no_labelled_row_is_the_unsupervised_program(guide):
    model = tiny_model(guide)
    x = tiny_data("bernoulli")
    none_known = torch.zeros(N, dtype=torch.bool)
    unsupervised = pyro_loss(model, x)
    torch.testing.assert_close(pyro_loss(model, x, y_obs=Y_OBS, known=none_known), unsupervised)
    torch.testing.assert_close(unsupervised, oracle(model, x), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("alpha", [0.5, 7.0])
def test_auxiliary_term_adds_minus_alpha_log_q_y_on_labelled_rows(guide, alpha):
    model = tiny_model(guide)
    x = tiny_data("bernoulli")
    without = pyro_loss(model, x, y_obs=Y_OBS, known=KNOWN)
    with_aux = pyro_loss(model, x, y_obs=Y_OBS, known=KNOWN, aux_weight=alpha)
    # log q(y|x): the cluster encoder (enumerated guide) or p(y|z) at the mean of q(z|x).
    log_q = model.cluster_log_proba(x[KNOWN])  # (L, K)
    expected = -alpha * log_q.gather(1, Y_OBS[KNOWN].unsqueeze(1)).sum()
    torch.testing.assert_close(with_aux - without, expected, rtol=1e-10, atol=1e-10)
    if guide == "enumerated":
        by_hand = torch.log_softmax(model.cluster_encoder(x[KNOWN]), -1)[range(3), [2, 0, 2]]
        torch.testing.assert_close(with_aux - without, -alpha * by_hand.sum())


def test_auxiliary_term_reads_the_view(guide):
    """The classifier sees what the guide's networks see: the moved copy, when there is one."""
    model = tiny_model(guide)
    x = tiny_data("bernoulli")
    view = x.flip(-1)
    base = pyro_loss(model, x, x_view=view, y_obs=Y_OBS, known=KNOWN)
    aux = pyro_loss(model, x, x_view=view, y_obs=Y_OBS, known=KNOWN, aux_weight=1.0)
    log_q = model.cluster_log_proba(view[KNOWN]).gather(1, Y_OBS[KNOWN].unsqueeze(1))
    torch.testing.assert_close(aux - base, -log_q.sum(), rtol=1e-10, atol=1e-10)


def test_shapes_under_enumeration_with_labelled_rows(guide):
    model = tiny_model(guide)
    x = tiny_data("bernoulli")
    kwargs = {"y_obs": Y_OBS, "known": KNOWN, "aux_weight": 1.0}
    guide_trace = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(
        x, **kwargs
    )
    model_trace = poutine.trace(
        poutine.enum(poutine.replay(model.model, trace=guide_trace), first_available_dim=-2)
    ).get_trace(x, **kwargs)
    model_trace.compute_log_prob()
    U, L = int((~KNOWN).sum()), int(KNOWN.sum())

    # Unlabelled rows: y enumerated as (K, 1), exactly as without labels.
    assert model_trace.nodes["y"]["value"].shape == (K, 1)
    assert model_trace.nodes["z"]["log_prob"].shape == (K, U)
    assert model_trace.nodes["x"]["log_prob"].shape == ((K, U) if guide == "enumerated" else (U,))
    # Labelled rows: y observed, one z and one decoder pass per row, no enumeration dim.
    y_l = model_trace.nodes["y_labelled"]
    assert y_l["is_observed"] and torch.equal(y_l["value"], Y_OBS[KNOWN])
    for site in ("y_labelled", "z_labelled", "x_labelled", "y_aux"):
        assert model_trace.nodes[site]["log_prob"].shape == (L,), site
    assert guide_trace.nodes["z_labelled"]["value"].shape == (L, Z)
    assert "y_labelled" not in guide_trace.nodes
    assert model_trace.nodes["x_labelled"]["fn"].event_shape == (D,)
    plates = {f.name for f in model_trace.nodes["z_labelled"]["cond_indep_stack"]}
    assert plates == {"labelled"}


def test_y_obs_without_known_is_refused(guide):
    model = tiny_model(guide)
    with pytest.raises(ValueError, match="y_obs and known"):
        model.model(tiny_data("bernoulli"), known=KNOWN)


# ------------------------------------------------------------------------------------ training
def permuted_blobs() -> tuple[np.ndarray, np.ndarray]:
    """Three blobs whose labels are a permutation away from the order any start finds them in,
    so a result that holds clusters to classes cannot come from the start by chance."""
    x, labels = blobs()
    return x, np.array([2, 0, 1])[labels]


def labelled_blobs(guide: str, n_known: int):
    """``permuted_blobs``, a small model with ``guide`` seeded alike, and ``n_known`` labelled rows."""
    x, labels = permuted_blobs()
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(n_features=x.shape[1], guide=guide))
    return x, labels, model, labelled_rows(labels, n_known, seed=0)


def test_labelled_rows_are_drawn_with_the_seed_balanced_per_class():
    labels = np.repeat(np.arange(4), [50, 30, 3, 20])
    mask = labelled_rows(labels, 16, seed=1)
    assert mask.sum() == 16
    # 16 // 4 = 4 a class; the class of 3 rows gives its 3 and another class the one left over.
    counts = np.bincount(labels[mask], minlength=4)
    assert counts[2] == 3 and sorted(counts) == [3, 4, 4, 5]
    assert np.array_equal(mask, labelled_rows(labels, 16, seed=1))
    assert not np.array_equal(mask, labelled_rows(labels, 16, seed=2))
    with pytest.raises(DataError, match="cannot label"):
        labelled_rows(labels, 0)


def test_tie_to_classes_renames_clusters_and_holds_labelled_rows():
    found = np.array([0, 0, 1, 1, 2, 2])  # the start's clusters
    labels = np.array([1, 1, 2, 0, 0, 0])  # cluster 0 is class 1, 2 is 0, 1 is mostly 2
    known = np.array([True, False, True, True, True, False])
    tied = tie_to_classes(Start(np.eye(3)[found]), labels, known)
    # Renamed (0 -> 1, 1 -> 2, 2 -> 0), and the labelled row 3 of cluster 1 held at class 0.
    assert tied.assignments.tolist() == [1, 1, 2, 0, 0, 0]
    with pytest.raises(DataError, match="classes 0..2"):
        tie_to_classes(Start(np.eye(3)[found]), labels + 1, known)


def test_tie_to_classes_keeps_the_candidate_map_the_labelled_rows_agree_with():
    labels = np.array([0, 0, 1, 1, 2, 2])
    known = np.array([True, True, True, False, True, True])
    merged = np.array([0, 0, 0, 0, 1, 2])  # what the silhouette kept: classes 0, 1 merged
    apart = np.array([2, 2, 0, 0, 1, 1])  # another map: the classes, renamed
    start = Start(np.eye(3)[merged], source="codes", scores={"codes": 0.9, "data": 0.8})
    start.candidates = {"codes": np.eye(3)[merged], "data": np.eye(3)[apart]}
    tied = tie_to_classes(start, labels, known)
    assert tied.source == "data" and tied.scores == start.scores
    assert tied.assignments.tolist() == labels.tolist()
    # Without candidates the start itself is renamed, merged clusters and all: the unlabelled
    # row 3 stays with class 0.
    alone = tie_to_classes(Start(np.eye(3)[merged]), labels, known)
    assert alone.assignments.tolist() == [0, 0, 1, 0, 2, 2]


def test_tie_to_classes_leaves_a_tie_between_maps_to_the_start():
    labels = np.array([0, 0, 1, 1, 2, 2])
    known = np.array([True, False, True, False, True, False])
    # Both maps put every labelled row with its class; they part on the unlabelled rows.
    codes = np.array([0, 1, 1, 1, 2, 2])
    data = np.array([0, 0, 1, 1, 2, 2])
    for kept, other in (("data", "codes"), ("codes", "data")):
        clusters = {"codes": codes, "data": data}
        start = Start(np.eye(3)[clusters[kept]], source=kept, scores={"codes": 0.5, "data": 0.5})
        start.candidates = {name: np.eye(3)[c] for name, c in clusters.items()}
        tied = tie_to_classes(start, labels, known)
        assert tied.source == kept, f"a tie on the labelled rows moved the start to {other}'s map"
        assert tied.assignments.tolist() == clusters[kept].tolist()


def test_tie_to_classes_lets_a_classifier_decide_where_the_start_is_torn():
    """The renamed responsibilities times the classifier's probabilities, each floored at
    EXPERT_FLOOR: rows the start is sure of keep its class whatever the classifier says, a row
    it splits nearly evenly takes the classifier's; a hard start stays hard, a soft one soft."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    known = np.array([True, False, True, False, True, False])
    soft = np.array(  # clusters 1, 0, 2 are classes 0, 1, 2
        [[0.0, 1, 0], [0.0, 1, 0], [1.0, 0, 0], [0.4, 0.6, 0], [0.0, 0, 1], [0.0, 0, 1]]
    )
    classifier = np.array(  # wrong on row 1 (the start is sure), right on row 3 (it is torn)
        [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]
        + [[0.1, 0.1, 0.8]] * 2
    )
    start = Start(np.eye(3)[[1, 1, 0, 1, 2, 2]], source="codes", scores={"codes": 0.5})
    start.candidates = {"codes": soft}
    tied = tie_to_classes(start, labels, known, classifier)
    assert tied.assignments.tolist() == [0, 0, 1, 1, 2, 2]  # row 3 from the classifier
    assert tied.responsibilities.tolist() == np.eye(3)[[0, 0, 1, 1, 2, 2]].tolist()  # hard
    # Without the classifier the torn row goes to the class of its likelier cluster.
    assert tie_to_classes(start, labels, known).assignments.tolist() == [0, 0, 1, 0, 2, 2]
    # A soft start stays soft: row 3 proportional to (0.4 + f)(0.8 + f) at class 1 against
    # (0.6 + f)(0.1 + f) at class 0 and f(0.1 + f) at class 2, f the floor.
    f = EXPERT_FLOOR
    soft_tied = tie_to_classes(Start(soft), labels, known, classifier).responsibilities
    row = np.array([(0.6 + f) * (0.1 + f), (0.4 + f) * (0.8 + f), f * (0.1 + f)])
    np.testing.assert_allclose(soft_tied[3], row / row.sum())
    with pytest.raises(ValueError, match="classifier has shape"):
        tie_to_classes(start, labels, known, classifier[:5])


@pytest.mark.parametrize("aux_weight", [0.0, 2.0])
def test_fit_with_labels_known_ties_clusters_to_classes(guide, aux_weight):
    x, labels, model, known = labelled_blobs(guide, 6)
    config = small_train(anchor_epochs=3, aux_weight=aux_weight)
    history = fit(model, x, config, labels=labels, known=known, progress=False)
    # predict returns classes: plain accuracy, no matching, on rows training never labelled.
    assert (model.predict(x[~known]) == labels[~known]).mean() > 0.95
    last = history[-1]
    assert last["class_accuracy"] == pytest.approx(
        (model.predict(x[~known]) == labels[~known]).mean()
    )
    assert "class_accuracy" not in history[0]  # pretraining scores nothing


def test_labels_known_draws_the_rows_in_the_trainer_as_the_cli_does():
    x, labels = permuted_blobs()
    model = GMVAE(small_model(n_features=x.shape[1]))
    trainer = Trainer(model, x, small_train(labels_known=9, seed=4), labels=labels, progress=False)
    assert np.array_equal(trainer.known.cpu().numpy(), labelled_rows(labels, 9, seed=4))
    with pytest.raises(DataError, match="needs the labels"):
        Trainer(model, x, small_train(labels_known=9), progress=False)
    with pytest.raises(DataError, match="classes 0..2"):
        Trainer(model, x, small_train(labels_known=9), labels=labels + 3, progress=False)


@pytest.mark.parametrize("alpha", [0.0, 30.0])
def test_pretraining_adds_the_labelled_rows_classification_term(guide, alpha):
    x, labels, model, known = labelled_blobs(guide, 6)
    config = small_train(aux_weight=alpha)
    trainer = Trainer(
        model, x, config, recipe=[Pretrain(20)], labels=labels, known=known, progress=False
    )
    batch = trainer.minibatch(torch.arange(len(x)))
    loss = Pretrain(1).loss(trainer, batch)
    rows = torch.as_tensor(x, dtype=torch.float32)
    loc, _ = model.encoder(rows)
    autoencoder = -model.likelihood(model.decoder(loc)).log_prob(rows).mean()
    log_q = model.cluster_log_proba(rows)[torch.as_tensor(known), labels[known]]  # (6,)
    torch.testing.assert_close(loss, autoencoder - alpha * log_q.sum() / len(x))
    # The term trains q(y|x): a phase of it puts the labelled rows' mass at their class.
    before = log_q.detach()
    trainer.run()
    after = model.cluster_log_proba(rows)[torch.as_tensor(known), labels[known]].detach()
    assert (after.mean() > before.mean() + 0.5) == (alpha > 0), (before, after)


def test_pretraining_adds_the_consistency_term_on_confident_unlabelled_images(guide):
    x, labels = permuted_blobs()  # 16 features in [0, 1]: 4x4 images
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(n_features=16, image_shape=(4, 4), network="mlp", guide=guide))
    known = labelled_rows(labels, 6, seed=0)
    moves = dict(augment_rotation=10.0, augment_shift=0.1)
    config = small_train(aux_weight=0.0, consistency_weight=5.0, **moves)
    trainer = Trainer(
        model, x, config, recipe=[Pretrain(1)], labels=labels, known=known, progress=False
    )
    batch = trainer.minibatch(torch.arange(len(x)))
    assert batch.view is not None  # the encoders see moved copies
    unlabelled = torch.as_tensor(~known)
    with torch.no_grad():
        confident, guess = model.cluster_log_proba(batch.view[unlabelled]).exp().max(-1)
    # Only the rows above the phase's confidence count: here the more confident half.
    phase = Pretrain(1, confidence=float(confident.median()))
    torch.manual_seed(1)
    loss = phase.loss(trainer, batch)
    torch.manual_seed(1)
    moved = strongly_moved(batch.x[unlabelled], (4, 4))
    loc, _ = model.encoder(batch.view)
    autoencoder = -model.likelihood(model.decoder(loc)).log_prob(batch.x).mean()
    at_guess = model.cluster_log_proba(moved).gather(-1, guess.unsqueeze(-1)).squeeze(-1)
    counted = confident > phase.confidence
    assert 0 < counted.sum() < len(counted)
    term = -(at_guess * counted).sum() / len(x)
    torch.testing.assert_close(loss, autoencoder + 5.0 * term)

    # No labels, a weight of 0, or rows that are not images: the autoencoder's loss alone.
    _, _, table_model, _ = labelled_blobs(guide, 6)
    zero = small_train(aux_weight=0.0, consistency_weight=0.0, **moves)
    setups = [(model, config, {}), (model, zero, dict(labels=labels, known=known))]
    setups.append((table_model, config, dict(labels=labels, known=known)))
    for model, config, labelled in setups:
        trainer = Trainer(model, x, config, recipe=[Pretrain(1)], progress=False, **labelled)
        batch = trainer.minibatch(torch.arange(len(x)))
        loc, _ = model.encoder(batch.seen)
        autoencoder = -model.likelihood(model.decoder(loc)).log_prob(batch.x).mean()
        torch.testing.assert_close(phase.loss(trainer, batch), autoencoder)


def test_strongly_moved_images_keep_their_shape_and_range_and_half_lose_a_square():
    torch.manual_seed(0)
    x = torch.ones(400, 64)  # white 8x8 images: a blanked square shows as zeros
    moved = strongly_moved(x, (8, 8))
    assert moved.shape == x.shape and 0 <= moved.min() and moved.max() <= 1
    # A 3x3 square (0.35 of 8, rounded) of zeros inside the image where no move reaches the
    # border: the centre 4x4 of an all-white image stays white under the moves alone.
    centre = moved.view(400, 8, 8)[:, 2:6, 2:6]
    blanked = (centre == 0).flatten(1).any(-1).float().mean()
    assert 0.25 < blanked < 0.6, blanked


def test_the_start_takes_q_y_given_x_as_a_classifier_where_the_consistency_term_taught_it(
    monkeypatch,
):
    """MixtureStart passes tie_to_classes the model's predict_proba of the training rows for
    images with the consistency term on; for tables, with the term off, or with
    ``classifier=False``, none."""
    x, labels = permuted_blobs()  # 16 features in [0, 1]: 4x4 images
    known = labelled_rows(labels, 6, seed=0)
    given = []

    def recording(start, labels, known, classifier=None):
        given.append(classifier)
        return tie_to_classes(start, labels, known, classifier)

    monkeypatch.setattr("pyro_gmvae.train.tie_to_classes", recording)
    image = dict(n_features=16, image_shape=(4, 4), network="mlp")
    cases = [  # (model options, consistency weight, MixtureStart(classifier=...), expected)
        (image, 5.0, True, True),
        (dict(n_features=16), 5.0, True, False),
        (image, 0.0, True, False),
        (image, 5.0, False, False),
    ]
    for options, weight, use, expected in cases:
        pyro.set_rng_seed(0)
        model = GMVAE(small_model(**options))
        config = small_train(consistency_weight=weight)
        trainer = Trainer(
            model, x, config, recipe=[Pretrain(1)], labels=labels, known=known, progress=False
        )
        trainer.run()
        pretrained = model.predict_proba(x)  # the start then moves the prior
        MixtureStart(init="gmm", classifier=use)(trainer)
        if expected:
            np.testing.assert_allclose(given[-1], pretrained, rtol=1e-6)
        else:
            assert given[-1] is None


def test_the_anchor_holds_labelled_rows_at_their_class():
    x, labels = permuted_blobs()
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(n_features=x.shape[1]))
    known = labelled_rows(labels, 30, seed=0)
    held = []
    config = small_train(anchor_epochs=1, epochs=0)
    record = lambda trainer: held.append(trainer.assignments.cpu().numpy())  # noqa: E731
    anchor = Anchor(1, on_begin=[MixtureStart(), record], new_optimizer=True)
    recipe = default_recipe(config).replace("anchor", anchor)
    fit(model, x, config, labels=labels, known=known, recipe=recipe, progress=False)
    assert np.array_equal(held[0][known], labels[known])


def test_gmvae_train_labels_known_reports_plain_accuracy_on_unlabelled_and_heldout_rows(
    tmp_path, capsys
):
    x, labels = permuted_blobs()
    data = tmp_path / "blobs.npz"
    np.savez(data, X=x, y=labels)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--clusters", "3"]
    args += ["--latent-dim", "2", "--hidden", "32", "--batch-size", "64", "--lr", "0.003"]
    args += ["--pretrain-epochs", "10", "--anchor-epochs", "3", "--epochs", "10", "--init", "gmm"]
    args += ["--anchor-min-steps", "320"]  # as this was measured; the default is 1,920
    args += ["--restarts", "2", "--heldout-fraction", "0.2", "--labels-known", "6"]
    args += ["--likelihood", "gaussian", "--device", "cpu", "--no-progress", "--no-plots"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["labels_known"] == 6
    # --guide auto with labels known: the marginal guide, said and saved (config.guide_for)
    assert "features, with labels: " in captured.err and "--guide marginal" in captured.err
    assert json.loads((out / "config.json").read_text())["model"]["guide"] == "marginal"
    assert result["train"]["class_accuracy"] > 0.95
    assert result["heldout"]["class_accuracy"] > 0.95

    # gmvae evaluate reads from config.json that clusters are classes.
    assert main(["evaluate", str(out), "--data", str(data), "--json", "--num-samples", "2"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["class_accuracy"] == pytest.approx(result["heldout"]["class_accuracy"])


def test_a_jit_elbo_is_refused_when_labels_are_known():
    x, labels = permuted_blobs()
    model = GMVAE(small_model(n_features=x.shape[1]))
    with pytest.raises(ConfigError, match="JIT"):
        Trainer(
            model,
            x,
            small_train(labels_known=9),
            labels=labels,
            elbo=JitTraceEnum_ELBO(max_plate_nesting=1),
            progress=False,
        )


# ----------------------------------------------------------------------------- missing labels
def test_labelled_rows_are_drawn_among_the_rows_that_have_a_label():
    labels = np.repeat(np.arange(3), 20)
    labels[::3] = MISSING_LABEL  # 20 rows without a label, 40 with one
    present = labels != MISSING_LABEL
    mask = labelled_rows(labels, 12, seed=0)
    assert mask.sum() == 12 and not (mask & ~present).any()
    assert sorted(np.bincount(labels[mask], minlength=3)) == [4, 4, 4]
    assert np.array_equal(labelled_rows(labels, "all"), present)
    with pytest.raises(DataError, match="only 40 of the 60 training rows have a label; pass "):
        labelled_rows(labels, 41)
    with pytest.raises(DataError, match="none of the 4 training rows has a label"):
        labelled_rows(np.full(4, MISSING_LABEL), "all")


def test_labels_known_all_marks_every_row_with_a_label_and_scores_only_those():
    x, labels = permuted_blobs()
    labels = labels.copy()
    labels[::4] = MISSING_LABEL
    model = GMVAE(small_model(n_features=x.shape[1]))
    trainer = Trainer(model, x, small_train(labels_known="all"), labels=labels, progress=False)
    assert np.array_equal(trainer.known.cpu().numpy(), labels != MISSING_LABEL)
    with pytest.raises(DataError, match=r"known marks 75 row\(s\) whose label is missing \(-1, "):
        Trainer(model, x, small_train(), labels=labels, known=np.ones(300, bool), progress=False)


def _blobs_csv(path, missing_every: int = 5):
    """The permuted blobs as a CSV whose label column ``y`` is empty or ``nan`` on every
    ``missing_every``-th row; returns the path and the labels, MISSING_LABEL where missing."""
    x, labels = permuted_blobs()
    labels = labels.copy()
    labels[::missing_every] = MISSING_LABEL
    lines = [",".join([*(f"f{j}" for j in range(x.shape[1])), "y"])]
    for i, (row, label) in enumerate(zip(x, labels, strict=True)):
        cell = ("" if i % 2 else "nan") if label == MISSING_LABEL else str(label)
        lines.append(",".join([*(f"{v:.6g}" for v in row), cell]))
    path.write_text("\n".join(lines) + "\n")
    return path, labels


def _tiny_train(data, out, *extra: str) -> list[str]:
    """gmvae train on the blobs' CSV, as short as the mechanics need."""
    args = ["train", "--data", str(data), "--label-column", "y", "--out", str(out)]
    args += ["--clusters", "3", "--latent-dim", "2", "--hidden", "16", "--batch-size", "64"]
    args += ["--pretrain-epochs", "2", "--anchor-epochs", "1", "--epochs", "2", "--init", "gmm"]
    args += ["--anchor-min-steps", "320"]  # as this was measured; the default is 1,920
    args += ["--restarts", "1", "--heldout-fraction", "0.2", "--likelihood", "gaussian"]
    return [*args, "--device", "cpu", "--no-progress", "--no-plots", *extra]


def test_gmvae_train_labels_known_all_trains_on_the_labels_that_exist(tmp_path, capsys):
    data, labels = _blobs_csv(tmp_path / "blobs.csv")
    out = tmp_path / "run"
    assert main(_tiny_train(data, out, "--labels-known", "all")) == 0
    result = json.loads(capsys.readouterr().out)
    # Held-out rows without a label are held out all the same: the split is the run's own.
    dataset = load_data(data, label_column="y", allow_missing_labels=True)
    train, heldout = split_heldout(dataset, 0.2, seed=0)
    assert np.array_equal(dataset.labels, labels)
    assert 0 < (~train.labelled).sum() and 0 < (~heldout.labelled).sum()
    assert result["labels_known"] == train.labelled.sum()  # every training row with a label
    assert result["train"]["rows_without_label"] == (~train.labelled).sum()
    assert "class_accuracy" not in result["train"]  # no row with a label was left unseen
    assert result["heldout"]["rows_without_label"] == (~heldout.labelled).sum()
    assert 0 <= result["heldout"]["class_accuracy"] <= 1
    assert RunConfig.load(out / "config.json").train.labels_known == "all"

    # gmvae evaluate scores the rows that have a label, and says how many have none.
    assert main(["evaluate", str(out), "--data", str(data), "--json", "--num-samples", "2"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    run = open_run(out)
    predicted = run.model.predict(load_run_data(run, str(data))[0].x)
    present = labels != MISSING_LABEL
    assert evaluated["rows_without_label"] == (~present).sum() == 60
    assert evaluated["n"] == 300 and evaluated["n_classes"] == 3
    assert evaluated["class_accuracy"] == pytest.approx((predicted == labels)[present].mean())
    assert evaluated["accuracy"] == pytest.approx(
        cluster_accuracy(labels[present], predicted[present])
    )
    assert main(["evaluate", str(out), "--data", str(data), "--num-samples", "2"]) == 0
    assert "60 without a label, left out of the scores" in capsys.readouterr().out

    # Resumed from config.json, "all" and the same labels known.
    resume = ["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]
    assert main([*resume, "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["labels_known"] == result["labels_known"]
    # Labels filled in since would train on other rows: refused, the run left as it was.
    before = (out / "checkpoint.pt").read_bytes()
    filled = [line.rpartition(",")[0] + ",1" if line.endswith((",", ",nan")) else line
              for line in data.read_text().splitlines()]  # fmt: skip
    data.write_text("\n".join(filled) + "\n")
    assert main([*resume, "--epochs", "4", "--no-plots"]) == 2
    assert "was trained with other labels" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_missing_labels_are_refused_without_labels_known_and_beyond_those_present(tmp_path, capsys):
    data, _ = _blobs_csv(tmp_path / "blobs.csv")
    out = tmp_path / "run"
    assert main(_tiny_train(data, out)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "60 missing label(s) (empty, NaN or -1), the first at line 2" in err
    assert "--labels-known all" in err
    # 240 training rows, not all of them with a label.
    assert main(_tiny_train(data, out, "--labels-known", "240")) == 2
    err = capsys.readouterr().err
    assert re.search(r"only \d+ of the 240 training rows have a label; pass --labels-known", err)
    assert "or --labels-known all" in err
    assert not out.exists()  # refused before anything was written
